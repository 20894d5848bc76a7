"""Make real signing keys, JWK Sets and CDS Hooks JWTs for tests (no mocks).

CDS Hooks 2.0 "Trusting CDS Clients" (S2 L984-1004): header ``alg``/``kid``/``typ: JWT`` (``jku``
optional); claims ``iss``, ``aud``, ``exp``, ``iat``, ``jti`` (``tenant`` optional). Usage::

    ehr = TestIssuer("https://ehr.example.org", "ES384")
    settings = Settings(trusted_issuers=(ehr.trusted(),))
    token = ehr.sign("https://cds.example.org/cds-services/x", now=1_700_000_000)
    bad = ehr.sign(aud, jti=DROP, headers={"typ": DROP})   # DROP removes a claim or header

``JwksServer`` serves a JWK Set from a real loopback HTTP server for issuers configured by URL.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cds_service.config import TrustedIssuer
from tests.leakcheck import REGISTRY

DROP: Any = object()
"""Pass as a claim or header value to leave that member out of the token."""

CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
RSA_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
LIFETIME_SECONDS = 300


class TestIssuer:
    """A CDS client (EHR) with one fresh key pair that signs CDS Hooks JWTs."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, iss: str, alg: str = "ES384", *, kid: str | None = None) -> None:
        if alg not in CURVES and alg not in RSA_ALGS:
            raise ValueError(f"unsupported test algorithm {alg}")
        self.iss = iss
        self.alg = alg
        self.kid = kid or f"{alg.lower()}-{uuid.uuid4()}"
        if alg in CURVES:
            self.private_key: Any = ec.generate_private_key(CURVES[alg]())
        else:
            self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_key = self.private_key.public_key()

    @property
    def public_jwk(self) -> dict[str, Any]:
        """The public key as a JWK with ``kid``, ``alg`` and ``use: sig``."""
        algorithm = ECAlgorithm if self.alg in CURVES else RSAAlgorithm
        jwk = dict(algorithm.to_jwk(self.public_key, as_dict=True))
        jwk.update(kid=self.kid, alg=self.alg, use="sig")
        return jwk

    @property
    def jwks(self) -> dict[str, Any]:
        """A JWK Set holding the public key."""
        return {"keys": [self.public_jwk]}

    @property
    def public_pem(self) -> bytes:
        """The public key as PEM (SubjectPublicKeyInfo), e.g. for the HS256 key-confusion attack."""
        return self.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def trusted(self, *, jwks_url: str | None = None, tenant: str | None = None) -> TrustedIssuer:
        """The TrustedIssuer entry for this issuer: the inline JWK Set, or ``jwks_url`` when given."""
        return TrustedIssuer(self.iss, jwks_url, None if jwks_url else self.jwks, tenant)

    def claims(self, aud: str | list[str], *, now: float | None = None, **overrides: Any) -> dict[str, Any]:
        """The claims of a valid token for ``aud`` issued at ``now``, with ``overrides`` applied."""
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "iss": self.iss,
            "aud": aud,
            "iat": issued,
            "exp": issued + LIFETIME_SECONDS,
            "jti": str(uuid.uuid4()),
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not DROP}

    def sign(
        self,
        aud: str | list[str],
        *,
        now: float | None = None,
        headers: dict[str, Any] | None = None,
        key: Any = None,
        **claims: Any,
    ) -> str:
        """Sign a CDS Hooks JWT for ``aud``; ``claims``/``headers`` override the defaults, DROP removes.

        ``key`` signs with another private key (e.g. another issuer's) under this issuer's header.
        """
        header: dict[str, Any] = {"kid": self.kid}
        header.update(headers or {})
        if header.get("typ") is DROP:
            header["typ"] = None  # PyJWT leaves out a falsy typ
        header = {name: value for name, value in header.items() if value is not DROP}
        token = jwt.encode(
            self.claims(aud, now=now, **claims),
            self.private_key if key is None else key,
            algorithm=self.alg,
            headers=header,
        )
        REGISTRY.add(token, f"JWT signed by {self.iss}")  # tests.leakcheck: no log may carry it
        return token


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def compact(header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes] | None = None) -> str:
    """Build a compact JWS by hand (for tokens PyJWT refuses to make: ``alg: none``, HS256 with a PEM)."""
    signing_input = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(payload, separators=(",", ":")).encode())
    )
    signature = sign(signing_input.encode("ascii")) if sign else b""
    token = signing_input + "." + b64url(signature)
    REGISTRY.add(token, "hand-built JWT")
    return token


class JwksServer:
    """A real HTTP server on 127.0.0.1 that serves ``self.jwks`` at ``/jwks.json`` and counts the hits.

    Use as a context manager; ``jwks`` and ``status`` may be changed while it runs (key rotation,
    outages).
    """

    def __init__(self, jwks: dict[str, Any] | None = None) -> None:
        self.jwks: dict[str, Any] = jwks if jwks is not None else {"keys": []}
        self.status = 200
        self.hits = 0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._lock:
                    owner.hits += 1
                    status, body = owner.status, json.dumps(owner.jwks).encode()
                if self.path != "/jwks.json":
                    status, body = 404, b"{}"
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = HTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The JWK Set URL (loopback http, which the trusted-issuer config allows)."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/jwks.json"

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
