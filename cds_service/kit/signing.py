"""Sign CDS Hooks JWTs as an EHR does, with a local private key (``brachy-cds invoke --jwt-key``).

CDS Hooks 2.0 "Trusting CDS Clients": header ``alg`` (ES384 or RS384 recommended), ``kid``, ``typ: JWT``;
claims ``iss``, ``aud`` (the exact URL called), ``exp``, ``iat``, ``jti`` (fresh for every call).
The ``kid`` is the key's RFC 7638 JWK thumbprint, so the public JWK Set a service trusts can be made
from the same key without agreeing on names (``public_jwks``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cds_service.kit.http import KitError

LIFETIME_SECONDS = 300
EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638: base64url(SHA-256(the required members, sorted, no whitespace))."""
    members = THUMBPRINT_MEMBERS.get(jwk.get("kty", ""))
    if members is None:
        raise ValueError(f"no thumbprint for key type {jwk.get('kty')!r}")
    canonical = json.dumps({name: jwk[name] for name in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class JwtSigner:
    """Signs one CDS Hooks JWT per call with a private EC (P-256/384/521) or RSA (2048+ bits) key."""

    def __init__(
        self,
        private_key: Any,
        iss: str,
        *,
        clock: Callable[[], float] = time.time,
        new_jti: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        if isinstance(private_key, ec.EllipticCurvePrivateKey):
            alg = EC_ALGORITHMS.get(private_key.curve.name)
            if alg is None:
                raise KitError(f"--jwt-key: EC curve {private_key.curve.name} is not usable for ES256/ES384/ES512")
            self.public_jwk = dict(ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True))
        elif isinstance(private_key, rsa.RSAPrivateKey):
            if private_key.key_size < 2048:
                raise KitError("--jwt-key: an RSA key needs at least 2048 bits")
            alg = "RS384"
            self.public_jwk = dict(RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True))
        else:
            raise KitError("--jwt-key: the key must be an EC or RSA private key")
        self.private_key = private_key
        self.iss = iss
        self.alg = alg
        self.kid = jwk_thumbprint(self.public_jwk)
        self.public_jwk.update(kid=self.kid, alg=alg, use="sig")
        self._clock = clock
        self._new_jti = new_jti

    @classmethod
    def from_pem(cls, path: Path, iss: str) -> JwtSigner:
        """Load an unencrypted PEM private key (PKCS#8, SEC1 or PKCS#1)."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KitError(f"--jwt-key: cannot read {path} ({exc.strerror or exc.__class__.__name__})") from None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise KitError(f"--jwt-key: {path} is encrypted; give an unencrypted PEM private key") from None
        except ValueError:
            raise KitError(f"--jwt-key: {path} is not a PEM private key") from None
        return cls(key, iss)

    @property
    def public_jwks(self) -> dict[str, Any]:
        """The JWK Set a brachy-cds trusted-issuer entry needs for this key (``"jwks"``)."""
        return {"keys": [dict(self.public_jwk)]}

    def sign(self, audience: str) -> str:
        """A fresh JWT for a call to ``audience`` (the exact URL called)."""
        now = int(self._clock())
        claims = {"iss": self.iss, "aud": audience, "exp": now + LIFETIME_SECONDS, "iat": now, "jti": self._new_jti()}
        return jwt.encode(claims, self.private_key, algorithm=self.alg, headers={"kid": self.kid, "typ": "JWT"})
