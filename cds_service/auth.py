"""Verify the CDS Hooks client JWT on every call (``BRACHY_CDS_AUTH=required``).

CDS Hooks 2.0 "Trusting CDS Clients" (S2 L973-1026) and the CDS Hooks security best practices
(reference/cds-hooks.md J2-J7, contract 5.6): the header carries ``alg`` (asymmetric only; ES384 and
RS384 recommended), ``kid`` and ``typ: JWT``; the claims carry ``iss``, ``aud`` (the URL called),
``exp``, ``iat``, ``jti`` and optionally ``tenant``. Only the configured issuers' keys verify a token,
a ``jku`` is never fetched, and each ``jti`` is accepted once within its lifetime.

Every failure raises ``Unauthorized(reason)``; the reason is a fixed phrase for a PHI-free log line
and never contains the token or a claim value.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import requests

from cds_service.config import Settings, TrustedIssuer
from cds_service.errors import Unauthorized
from cds_service.store import Store

ALGORITHMS: Mapping[str, tuple[str, str | None]] = {
    # alg -> (JWK kty, JWK crv); never "none" and never HS* (S2 L1014-1026).
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS384": ("RSA", None),
}
PUBLIC_JWK_MEMBERS = frozenset({"kty", "crv", "x", "y", "n", "e", "kid", "alg", "use"})
TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
MAX_TOKEN_CHARS = 16 * 1024
MAX_JTI_CHARS = 255
MAX_JWKS_BYTES = 512 * 1024
JWKS_TIMEOUT = (3.05, 5.0)
JWKS_MAX_AGE_SECONDS = 3600.0
JWKS_REFRESH_SECONDS = 60.0
# Claim checks are done here against the injected clock, so PyJWT only verifies the signature.
SIGNATURE_ONLY = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "enforce_minimum_key_length": True,
}

log = logging.getLogger("brachy_cds.auth")

JwkSet = dict[str, list[dict[str, Any]]]
"""Public JWKs of one issuer, by ``kid`` (a list, so an EC and an RSA key may share a kid)."""


class JwksUnavailable(Exception):
    """The issuer's JWK Set could not be fetched or parsed; the message holds no secret."""


class _IssuerKeys:
    """One trusted issuer with its keys: fixed when inline, cached and refreshed when by URL."""

    def __init__(self, issuer: TrustedIssuer) -> None:
        self.issuer = issuer
        self.lock = threading.Lock()
        self.keys: JwkSet | None = parse_jwks(issuer.jwks) if issuer.jwks is not None else None
        self.fetched_at = -math.inf
        self.attempted_at = -math.inf


class JwtVerifier:
    """Check CDS Hooks JWTs against the trusted issuers of ``settings``; remember each jti in ``store``.

    ``clock`` (seconds since the epoch) and ``session`` (a ``requests.Session`` for JWK Set URLs) are
    injected so tests can drive expiry and key refresh against a real loopback server.

    PyJWT is imported here with ``BRACHY_CDS_AUTH=required``, else on the first ``verify``, not at the
    top of the module: with ``cryptography`` it costs ~0.1 s of a worker's cold start, which a service
    with authentication off would spend for nothing.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        session: requests.Session | None = None,
        jwks_refresh_seconds: float = JWKS_REFRESH_SECONDS,
        jwks_max_age_seconds: float = JWKS_MAX_AGE_SECONDS,
    ) -> None:
        self._skew = float(settings.clock_skew_seconds)
        self._store = store
        self._clock = clock
        self._session = session
        self._owns_session = session is None
        self._refresh_seconds = jwks_refresh_seconds
        self._max_age_seconds = jwks_max_age_seconds
        self._issuers: dict[str, list[_IssuerKeys]] = {}
        for issuer in settings.trusted_issuers:
            self._issuers.setdefault(issuer.iss, []).append(_IssuerKeys(issuer))
        if settings.auth == "required":
            import jwt  # noqa: F401  (at start-up, so the first call does not pay for the import)

    def close(self) -> None:
        """Close the HTTP session when this verifier created it."""
        if self._owns_session and self._session is not None:
            self._session.close()
            self._session = None

    def verify(self, authorization_header: str | None, audience: str) -> dict[str, Any]:
        """Return the verified claims of the Bearer JWT sent to ``audience`` (the URL called).

        Order: shape and header (J2, J5), trusted ``iss`` and its ``jku`` (J6), key by ``kid`` and
        signature, then ``exp``/``iat``/``nbf`` with clock skew, ``aud`` (J4), ``jti`` and ``tenant``
        (J7). The jti is recorded last, so a token refused for another reason does not burn it.
        """
        token = _bearer_token(authorization_header)
        import jwt  # not at the top of the module: see the class docstring
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except (jwt.PyJWTError, RecursionError):
            raise Unauthorized("malformed token") from None

        typ = header.get("typ")
        if not isinstance(typ, str) or typ.upper() != "JWT":
            raise Unauthorized("typ is not JWT")
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise Unauthorized("alg not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("missing kid")
        if "crit" in header:
            raise Unauthorized("crit header not supported")

        entry = self._issuer(unverified)
        _check_jku(header.get("jku"), entry.issuer)
        jwk_data = self._key(entry, kid, alg)
        try:
            key = jwt.PyJWK(jwk_data, algorithm=alg)
            claims = jwt.decode(token, key=key, algorithms=[alg], options=SIGNATURE_ONLY)
        except jwt.InvalidSignatureError:
            raise Unauthorized("bad signature") from None
        except jwt.PyJWTError:
            raise Unauthorized("unusable key or token") from None

        exp = self._check_times(claims)
        _check_audience(claims.get("aud"), audience)
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
            raise Unauthorized("missing jti")
        if entry.issuer.tenant is not None and claims.get("tenant") != entry.issuer.tenant:
            raise Unauthorized("wrong tenant")
        if not self._store.remember_jti(entry.issuer.iss, jti, exp + self._skew):
            raise Unauthorized("replayed jti")
        return claims

    def _issuer(self, unverified: Mapping[str, Any]) -> _IssuerKeys:
        """Pick the trusted issuer named by the unverified ``iss`` (and ``tenant`` when several share it)."""
        iss = unverified.get("iss")
        entries = self._issuers.get(iss) if isinstance(iss, str) else None
        if not entries:
            raise Unauthorized("untrusted iss")
        tenant = unverified.get("tenant")
        for entry in entries:
            if entry.issuer.tenant is not None and entry.issuer.tenant == tenant:
                return entry
        for entry in entries:
            if entry.issuer.tenant is None:
                return entry
        raise Unauthorized("wrong tenant")

    def _key(self, entry: _IssuerKeys, kid: str, alg: str) -> dict[str, Any]:
        """Return the issuer's public JWK with ``kid`` whose type fits ``alg``."""
        keys = entry.keys if entry.issuer.jwks is not None else self._remote_keys(entry, kid)
        candidates = (keys or {}).get(kid)
        if not candidates:
            raise Unauthorized("unknown kid")
        kty, crv = ALGORITHMS[alg]
        for jwk_data in candidates:
            if jwk_data.get("kty") == kty and jwk_data.get("crv") == crv and jwk_data.get("alg", alg) == alg:
                return jwk_data
        raise Unauthorized("key does not match alg")

    def _remote_keys(self, entry: _IssuerKeys, kid: str) -> JwkSet:
        """Return the cached JWK Set of ``jwks_url``, fetching it when missing, old or lacking ``kid``.

        A fetch (successful or not) happens at most once per ``jwks_refresh_seconds`` per issuer, so
        tokens with made-up kids cannot make the service hammer the EHR; on a failed refresh the keys
        already known stay in use.
        """
        now = self._clock()
        with entry.lock:
            wanted = entry.keys is None or kid not in entry.keys or now - entry.fetched_at >= self._max_age_seconds
            if wanted and now - entry.attempted_at >= self._refresh_seconds:
                entry.attempted_at = now
                try:
                    entry.keys = parse_jwks(self._fetch(entry.issuer.jwks_url or ""))
                    entry.fetched_at = now
                except JwksUnavailable as exc:
                    log.warning("JWK Set of trusted issuer %s unavailable: %s", entry.issuer.iss, exc)
            if entry.keys is None:
                raise Unauthorized("jwks unavailable")
            return entry.keys

    def _fetch(self, url: str) -> Any:
        """GET a JWK Set with a short timeout, no redirects and a size cap."""
        if self._session is None:
            self._session = requests.Session()
            self._session.trust_env = False  # no environment proxies, no .netrc credentials sent along
        try:
            with self._session.get(
                url,
                timeout=JWKS_TIMEOUT,
                allow_redirects=False,
                stream=True,
                headers={"Accept": "application/json, application/jwk-set+json"},
            ) as response:
                if response.status_code != 200:
                    raise JwksUnavailable(f"HTTP {response.status_code}")
                body = bytearray()
                for chunk in response.iter_content(64 * 1024):
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise JwksUnavailable("response too large")
        except requests.RequestException as exc:
            raise JwksUnavailable(exc.__class__.__name__) from None
        try:
            return json.loads(bytes(body))
        except (ValueError, RecursionError):
            raise JwksUnavailable("not JSON") from None

    def _check_times(self, claims: Mapping[str, Any]) -> float:
        """Check ``exp``, ``iat`` (required) and ``nbf`` (when present) with clock skew; return ``exp``."""
        now = self._clock()
        exp = _number(claims.get("exp"))
        iat = _number(claims.get("iat"))
        if exp is None:
            raise Unauthorized("missing exp")
        if iat is None:
            raise Unauthorized("missing iat")
        if now >= exp + self._skew:
            raise Unauthorized("expired")
        if iat > now + self._skew:
            raise Unauthorized("iat in the future")
        if "nbf" in claims:
            nbf = _number(claims["nbf"])
            if nbf is None:
                raise Unauthorized("bad nbf")
            if nbf > now + self._skew:
                raise Unauthorized("not yet valid")
        return exp


def parse_jwks(data: Any) -> JwkSet:
    """Index the public signing keys of a JWK Set by ``kid``; raise JwksUnavailable if it is not one.

    Keys without a ``kid`` cannot be selected (S2 L984-992: ``kid`` is required) and are skipped, as
    are encryption keys, symmetric keys and private members.
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("keys"), list):
        raise JwksUnavailable("not a JWK Set")
    keys: JwkSet = {}
    for jwk_data in data["keys"]:
        if not isinstance(jwk_data, Mapping):
            continue
        kid = jwk_data.get("kid")
        if not isinstance(kid, str) or not kid or jwk_data.get("use", "sig") != "sig":
            continue
        if jwk_data.get("kty") not in ("EC", "RSA"):
            continue
        keys.setdefault(kid, []).append({k: v for k, v in jwk_data.items() if k in PUBLIC_JWK_MEMBERS})
    return keys


def _bearer_token(authorization_header: str | None) -> str:
    """Take the token out of ``Authorization: Bearer <token>`` (scheme case-insensitive, RFC 6750)."""
    if not authorization_header:
        raise Unauthorized("missing authorization")
    parts = authorization_header.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise Unauthorized("not a bearer token")
    token = parts[1]
    if len(token) > MAX_TOKEN_CHARS or not TOKEN_SHAPE.match(token):
        raise Unauthorized("malformed token")
    return token


def _check_jku(jku: Any, issuer: TrustedIssuer) -> None:
    """Refuse a ``jku`` that is not the issuer's ``jwks_url`` (S2 L1006-1012: allowlist jku; contract 5.6).

    A ``jku`` is never fetched. An issuer configured with inline keys may still name its ``jwks_url``
    (the CDS Hooks sandbox: keys inline because its host is unreachable, ``jku`` always sent:
    reference/cds-hooks.md section 7); without a ``jwks_url`` any ``jku`` makes the token invalid.
    """
    if jku is None:
        return
    if not isinstance(jku, str) or issuer.jwks_url is None or jku != issuer.jwks_url:
        raise Unauthorized("jku not allowed")


def _check_audience(aud: Any, audience: str) -> None:
    """Require ``aud`` (a string or an array) to name the URL called (S2 L1008; contract 5.6)."""
    if isinstance(aud, str):
        values = [aud]
    elif isinstance(aud, list) and aud and all(isinstance(value, str) for value in aud):
        values = aud
    else:
        raise Unauthorized("bad audience")
    wanted = _strip_slash(audience)
    if not any(_strip_slash(value) == wanted for value in values):
        raise Unauthorized("bad audience")


def _strip_slash(url: str) -> str:
    return url[:-1] if url.endswith("/") else url


def _number(value: Any) -> float | None:
    """Return a NumericDate as a float, or None when absent or not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None
