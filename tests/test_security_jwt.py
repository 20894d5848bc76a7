"""The CDS Hooks JWT matrix through the whole Flask app, with real keys (issue 4, contract 5.6).

Valid ES384 (inline JWK Set) and RS384 (JWK Set fetched from its ``jwks_url`` on a real loopback
server) tokens pass on the discovery, service and feedback URLs; every attack gets a bare 401 on
each of those URLs. The access log's ``authFailure`` (a fixed phrase, never token material) shows
that the check meant to stop the attack is the one that did: no attack passes by failing for an
unrelated reason. CDS Hooks 2.0 S2 L973-1026; best practices J7 (reference/cds-hooks.md 1.10).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from cds_service import create_app
from tests.conftest import CheckedClient
from tests.keys import DROP, JwksServer, TestIssuer, compact

PUBLIC = "https://cds.example.org"
DISCOVERY = "/cds-services"
SERVICE = "/cds-services/brachytherapy-planning-charge"
FEEDBACK = f"{SERVICE}/feedback"
OTHER_URL = {  # an endpoint of the same deployment that is not the one called
    DISCOVERY: f"{PUBLIC}{SERVICE}",
    SERVICE: f"{PUBLIC}/cds-services/brachytherapy-planning-review",
    FEEDBACK: f"{PUBLIC}/cds-services/brachytherapy-planning-review/feedback",
}
ORIGIN = "https://ehr-ui.example.org"
SCENARIO = Path(__file__).parent / "fixtures" / "scenarios" / "r4-pos22-tandem-ovoids-implied-77317-26" / "request.json"
FEEDBACK_BODY = {
    "feedback": [
        {
            "card": "4e0a3a1e-3283-4575-ab82-028d55fe2719",
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": "e56e1945-20b3-4393-8503-a1a20fd73152"}],
            "outcomeTimestamp": "2026-10-20T10:05:31Z",
        }
    ]
}
URLS = [DISCOVERY, SERVICE, FEEDBACK]


@pytest.fixture(scope="module")
def es384() -> TestIssuer:
    """An EHR trusted with an inline JWK Set (the CDS Hooks sandbox's way)."""
    return TestIssuer("https://ehr.example.org/cds", "ES384")


@pytest.fixture(scope="module")
def rs384() -> TestIssuer:
    """An EHR trusted by ``jwks_url`` (Epic's default algorithm, J8)."""
    return TestIssuer("https://epic.example.net/interconnect", "RS384")


@pytest.fixture(scope="module")
def jwks_server(rs384: TestIssuer) -> Iterator[JwksServer]:
    with JwksServer(rs384.jwks) as server:
        yield server


@pytest.fixture(scope="module")
def app(
    tmp_path_factory: pytest.TempPathFactory, es384: TestIssuer, rs384: TestIssuer, jwks_server: JwksServer
) -> Iterator[Flask]:
    """An auth-required app behind ``PUBLIC`` trusting ``es384`` (inline) and ``rs384`` (by URL).

    One app for the module (building one loads every rule file): a refused token never records
    its jti, and every valid token has a fresh one, so the tests cannot disturb each other.
    """
    folder = tmp_path_factory.mktemp("jwt-matrix")
    issuers = folder / "trusted-issuers.json"
    issuers.write_text(
        json.dumps([{"iss": es384.iss, "jwks": es384.jwks}, {"iss": rs384.iss, "jwks_url": jwks_server.url}])
    )
    built = create_app(
        {
            "BRACHY_CDS_AUTH": "required",
            "BRACHY_CDS_TRUSTED_ISSUERS": str(issuers),
            "BRACHY_CDS_PUBLIC_URL": PUBLIC,
            "BRACHY_CDS_DATABASE_URL": f"sqlite:///{folder / 'brachy.sqlite3'}",
        }
    )
    built.test_client_class = CheckedClient
    yield built
    built.extensions["brachy_cds"].close()


def send(app: Flask, path: str, authorization: str | None) -> Any:
    """Call ``path`` as an EHR would (GET discovery, POST a valid hook call or feedback), from a browser origin."""
    headers = {"Origin": ORIGIN}
    if authorization is not None:
        headers["Authorization"] = authorization
    client = app.test_client()
    if path == DISCOVERY:
        return client.get(path, headers=headers)
    body = json.loads(SCENARIO.read_text()) if path == SERVICE else FEEDBACK_BODY
    return client.post(path, json=body, headers=headers)


def auth_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The ``authFailure`` reasons the access log recorded, in order."""
    return [
        record.fields["authFailure"]
        for record in caplog.records
        if record.name == "brachy_cds.access" and "authFailure" in getattr(record, "fields", {})
    ]


def assert_bare_401(response: Any, token: str | None) -> None:
    """401 with nothing but "unauthorized": no OperationOutcome, no reason, no token echoed (contract 5.6)."""
    assert response.status_code == 401
    assert response.get_data() == b"unauthorized"
    assert response.mimetype == "text/plain"
    assert response.headers["WWW-Authenticate"] == "Bearer"
    # The browser can read the 401 (CORS headers on errors too, unlike HAPI's starter: cds-hooks.md section 4).
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    if token:
        assert token not in str(response.headers) and token.encode() not in response.get_data()


# --- valid tokens --------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
@pytest.mark.parametrize("path", URLS)
def test_valid_token_passes(app, es384, rs384, caplog, alg, path):
    issuer = es384 if alg == "ES384" else rs384
    response = send(app, path, f"Bearer {issuer.sign(PUBLIC + path)}")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert auth_failures(caplog) == []
    access = [r.fields for r in caplog.records if r.name == "brachy_cds.access"]
    assert access[-1]["iss"] == issuer.iss and access[-1]["status"] == 200


def test_rs384_with_a_jku_equal_to_the_trusted_jwks_url_passes(app, rs384, jwks_server):
    token = rs384.sign(PUBLIC + SERVICE, headers={"jku": jwks_server.url})
    assert send(app, SERVICE, f"Bearer {token}").status_code == 200


def test_aud_as_an_array_naming_the_url_called_passes(app, es384):
    token = es384.sign([OTHER_URL[FEEDBACK], PUBLIC + FEEDBACK])
    assert send(app, FEEDBACK, f"Bearer {token}").status_code == 200


# --- attacks ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    """How to forge the Authorization header for a URL, and the verifier's reason for refusing it."""

    name: str
    reason: str
    forge: Callable[[TestIssuer, TestIssuer, str, str], str | None]
    """(es384, rs384, aud of the URL called, path) -> Authorization header (None: no header)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _tampered(es384: TestIssuer, aud: str) -> str:
    """A genuine token for another URL whose payload is swapped for one naming this URL."""
    header, _, signature = es384.sign(OTHER_URL.get(aud.removeprefix(PUBLIC), PUBLIC)).split(".")
    payload = _b64(json.dumps(es384.claims(aud)).encode())
    return f"Bearer {header}.{payload}.{signature}"


def _hmac_with_public_key(es384: TestIssuer, aud: str, alg: str) -> str:
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    header = {"alg": alg, "typ": "JWT", "kid": es384.kid}
    claims = es384.claims(aud)
    return "Bearer " + compact(header, claims, lambda data: hmac.new(es384.public_pem, data, digest).digest())


def _relabelled(rs384: TestIssuer, aud: str) -> str:
    """An RS384 token whose header claims ES384 (the key is RSA)."""
    _, payload, signature = rs384.sign(aud).split(".")
    header = _b64(json.dumps({"alg": "ES384", "typ": "JWT", "kid": rs384.kid}).encode())
    return f"Bearer {header}.{payload}.{signature}"


def _future(es384: TestIssuer, aud: str, **claims: Any) -> str:
    return "Bearer " + es384.sign(aud, now=time.time() + 600, **claims)


STRANGER = TestIssuer("https://attacker.example.com", "ES384")
ATTACKS = [
    Attack("no Authorization header", "missing authorization", lambda es, rs, aud, path: None),
    Attack("Basic credentials", "not a bearer token", lambda es, rs, aud, path: "Basic ZWhyOnNlY3JldA=="),
    Attack("not a JWT", "malformed token", lambda es, rs, aud, path: "Bearer not-a-jwt"),
    Attack(
        "alg none",
        "alg not allowed",
        lambda es, rs, aud, path: "Bearer " + compact({"alg": "none", "typ": "JWT", "kid": es.kid}, es.claims(aud)),
    ),
    Attack(
        "HS256 with the public key as secret",
        "alg not allowed",
        lambda es, rs, aud, path: _hmac_with_public_key(es, aud, "HS256"),
    ),
    Attack(
        "HS512 with the public key as secret",
        "alg not allowed",
        lambda es, rs, aud, path: _hmac_with_public_key(es, aud, "HS512"),
    ),
    Attack("RS384 token relabelled ES384", "key does not match alg", lambda es, rs, aud, path: _relabelled(rs, aud)),
    Attack(
        "wrong aud (another host)",
        "bad audience",
        lambda es, rs, aud, path: "Bearer " + es.sign("https://other-cds.example.net" + path),
    ),
    Attack(
        "aud of another endpoint of this service",
        "bad audience",
        lambda es, rs, aud, path: "Bearer " + rs.sign(OTHER_URL[path]),
    ),
    Attack("no aud", "bad audience", lambda es, rs, aud, path: "Bearer " + es.sign(DROP)),
    Attack(
        "expired",
        "expired",
        lambda es, rs, aud, path: "Bearer " + es.sign(aud, now=time.time() - 3600),
    ),
    Attack("iat in the future", "iat in the future", lambda es, rs, aud, path: _future(es, aud)),
    Attack(
        "nbf in the future",
        "not yet valid",
        lambda es, rs, aud, path: "Bearer " + es.sign(aud, nbf=int(time.time()) + 600),
    ),
    Attack("no exp", "missing exp", lambda es, rs, aud, path: "Bearer " + rs.sign(aud, exp=DROP)),
    Attack("no jti", "missing jti", lambda es, rs, aud, path: "Bearer " + es.sign(aud, jti=DROP)),
    Attack(
        "unknown kid",
        "unknown kid",
        lambda es, rs, aud, path: "Bearer " + es.sign(aud, headers={"kid": "rotated-away"}),
    ),
    Attack("no kid", "missing kid", lambda es, rs, aud, path: "Bearer " + es.sign(aud, headers={"kid": DROP})),
    Attack("untrusted iss", "untrusted iss", lambda es, rs, aud, path: "Bearer " + STRANGER.sign(aud)),
    Attack(
        "trusted iss signed with another key",
        "bad signature",
        lambda es, rs, aud, path: "Bearer " + es.sign(aud, key=STRANGER.private_key),
    ),
    Attack(
        "unlisted jku",
        "jku not allowed",
        lambda es, rs, aud, path: "Bearer " + rs.sign(aud, headers={"jku": "https://attacker.example.com/jwks.json"}),
    ),
    Attack("tampered payload", "bad signature", lambda es, rs, aud, path: _tampered(es, aud)),
    Attack("typ not JWT", "typ is not JWT", lambda es, rs, aud, path: "Bearer " + es.sign(aud, headers={"typ": "JWS"})),
    Attack("no typ", "typ is not JWT", lambda es, rs, aud, path: "Bearer " + rs.sign(aud, headers={"typ": DROP})),
    Attack(
        "critical header extension",
        "malformed token",
        lambda es, rs, aud, path: "Bearer " + es.sign(aud, headers={"crit": ["exp"], "exp": 1}),
    ),
]


@pytest.mark.parametrize("path", URLS)
@pytest.mark.parametrize("attack", ATTACKS, ids=lambda attack: attack.name)
def test_attack_gets_a_bare_401(app, es384, rs384, caplog, attack, path):
    authorization = attack.forge(es384, rs384, PUBLIC + path, path)
    response = send(app, path, authorization)
    assert_bare_401(response, authorization.split()[-1] if authorization else None)
    assert auth_failures(caplog) == [attack.reason]


@pytest.mark.parametrize("path", URLS)
def test_replayed_jti_gets_a_bare_401(app, es384, caplog, path):
    authorization = f"Bearer {es384.sign(PUBLIC + path)}"
    assert send(app, path, authorization).status_code == 200
    assert_bare_401(send(app, path, authorization), authorization.split()[-1])
    # Same jti in a freshly signed token: still a replay.
    jti = json.loads(base64.urlsafe_b64decode(authorization.split(".")[1] + "=="))["jti"]
    assert_bare_401(send(app, path, f"Bearer {es384.sign(PUBLIC + path, jti=jti)}"), None)
    assert auth_failures(caplog) == ["replayed jti", "replayed jti"]


def test_replay_is_refused_by_another_worker_sharing_the_database(make_app, tmp_path, es384, caplog):
    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps([{"iss": es384.iss, "jwks": es384.jwks}]))
    config = {
        "BRACHY_CDS_AUTH": "required", "BRACHY_CDS_TRUSTED_ISSUERS": str(issuers), "BRACHY_CDS_PUBLIC_URL": PUBLIC
    }
    first, second = make_app(config), make_app(config)  # two apps, one database: two gunicorn workers
    authorization = f"Bearer {es384.sign(PUBLIC + DISCOVERY)}"
    assert send(first, DISCOVERY, authorization).status_code == 200
    assert_bare_401(send(second, DISCOVERY, authorization), None)
    assert auth_failures(caplog) == ["replayed jti"]


def test_a_token_for_the_discovery_url_does_not_open_the_service(app, es384, caplog):
    authorization = f"Bearer {es384.sign(PUBLIC + DISCOVERY)}"
    assert_bare_401(send(app, SERVICE, authorization), None)
    assert_bare_401(send(app, FEEDBACK, authorization), None)
    assert send(app, DISCOVERY, authorization).status_code == 200  # the refusals did not burn its jti
    assert auth_failures(caplog) == ["bad audience", "bad audience"]


def test_a_tenant_bound_issuer_refuses_another_tenant(make_app, tmp_path, es384, caplog):
    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps([{"iss": es384.iss, "jwks": es384.jwks, "tenant": "hospital-a"}]))
    app = make_app(
        {"BRACHY_CDS_AUTH": "required", "BRACHY_CDS_TRUSTED_ISSUERS": str(issuers), "BRACHY_CDS_PUBLIC_URL": PUBLIC}
    )
    assert_bare_401(send(app, DISCOVERY, f"Bearer {es384.sign(PUBLIC + DISCOVERY, tenant='hospital-b')}"), None)
    assert send(app, DISCOVERY, f"Bearer {es384.sign(PUBLIC + DISCOVERY, tenant='hospital-a')}").status_code == 200
    assert auth_failures(caplog) == ["wrong tenant"]


def test_unknown_service_is_401_before_404(app, caplog):
    response = send(app, "/cds-services/no-such-service", None)
    assert_bare_401(response, None)


def test_the_matrix_has_at_least_14_attacks():
    required = {
        "no Authorization header", "alg none", "HS256 with the public key as secret", "wrong aud (another host)",
        "aud of another endpoint of this service", "expired", "iat in the future", "no jti", "unknown kid",
        "untrusted iss", "unlisted jku", "tampered payload", "typ not JWT",
    }  # plus "replayed jti" (its own test above)
    names = {attack.name for attack in ATTACKS}
    assert required <= names and len(names) + 1 >= 14


# --- auth off, only as the contract allows ------------------------------------------------------


@pytest.mark.parametrize("mode", ["off", "off-insecure"])
def test_auth_off_modes_answer_without_a_jwt(make_app, mode):
    app = make_app({"BRACHY_CDS_AUTH": mode})
    for path in URLS:
        assert send(app, path, None).status_code == 200


def test_auth_required_without_trusted_issuers_warns_at_start_and_refuses(make_app, es384, caplog):
    app = make_app({"BRACHY_CDS_AUTH": "required"})
    warnings = [r.getMessage() for r in caplog.records if r.name == "brachy_cds.config" and r.levelname == "WARNING"]
    assert any("BRACHY_CDS_TRUSTED_ISSUERS is not set" in message for message in warnings)
    assert_bare_401(send(app, DISCOVERY, f"Bearer {es384.sign('http://localhost' + DISCOVERY)}"), None)
    assert auth_failures(caplog) == ["untrusted iss"]
