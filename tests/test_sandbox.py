"""The CDS Hooks sandbox as a client (reference/cds-hooks.md section 7; contract 5.5, 5.6).

What the sandbox does on the wire, and a test for each:
- it calls ``patient-view`` with only ``patientId`` and a fixed ``userId``, never ``encounterId``;
- it sends ``fhirServer`` without ``fhirAuthorization`` (open FHIR servers only);
- it fills only templates whose tokens it has, sends only the first page of a search and leaves out
  keys that failed (an unfilled search template goes out with the token text in it and comes back
  as an empty Bundle: our patient-view templates use patient-scoped tokens only, so that cannot happen);
- it signs ES384 JWTs with its published key: ``kid`` 44823f3d-..., ``jku`` = its JWK Set URL,
  ``aud`` = the exact URL called (discovery, service, feedback), ``exp`` = ``iat`` + 300, fresh ``jti``;
- every call carries ``Authorization``, so each gets a CORS preflight, which must be answered 2xx
  without a JWT; a trailing slash on the discovery URL gives ``/cds-services/`` and ``//{id}``.
The sandbox's private key is public but is not needed here: a ``TestIssuer`` with the sandbox's
issuer, kid and jku plays it, configured exactly like ``examples/trusted-issuers.sandbox.json``.
The shipped file itself is checked against a token the real sandbox signed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from cds_service.auth import JwtVerifier
from cds_service.config import load_settings
from cds_service.discovery import SERVICES
from cds_service.errors import Unauthorized
from cds_service.kit.invoke import render_template
from cds_service.kit.samples import catalogue, load_samples, site_table_path
from cds_service.store import Store
from tests.fhir_server import DelayProxy, FhirTestServer
from tests.keys import TestIssuer
from tests.sample_cards import promised_cards

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "trusted-issuers.sandbox.json"
SANDBOX_ISS = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"
SANDBOX_USER = "Practitioner/COREPRACTITIONER1"
ORIGIN = "https://sandbox.cds-hooks.org"
BASE = "http://localhost:8080"
"""Where the sandbox user pointed the sandbox: ``http://localhost:8080/cds-services``."""
REVIEW = "brachytherapy-planning-review"
CANONICAL = catalogue()[0]

# A JWT the real sandbox signed with its published key (header: ES384, kid 44823f3d-..., jku
# .../.well-known/jwks.json; aud http://127.0.0.1:8000/cds-services; iat 1594230600, exp +300), as
# captured in a public example of verifying sandbox tokens. It proves the key in the shipped example file.
REAL_SANDBOX_TOKEN = (
    "eyJhbGciOiJFUzM4NCIsInR5cCI6IkpXVCIsImtpZCI6IjQ0ODIzZjNkLTBiMDEtNGE2Yy1hODBlLWI5ZDNlOGE3MjI2ZiIsImprdSI6Imh0d"
    "HBzOi8vc2FuZGJveC5jZHMtaG9va3Mub3JnLy53ZWxsLWtub3duL2p3a3MuanNvbiJ9.eyJpc3MiOiJodHRwczovL3NhbmRib3guY2RzLWhvb2"
    "tzLm9yZyIsImF1ZCI6Imh0dHA6Ly8xMjcuMC4wLjE6ODAwMC9jZHMtc2VydmljZXMiLCJleHAiOjE1OTQyMzA5MDAsImlhdCI6MTU5NDIzMDY"
    "wMCwianRpIjoiZWZiMzc3M2QtM2EyOC00M2UyLTlmYmMtYjkzNmE5YWUzODhiIn0.Cbey3n5NkDRoCLHZ2WMFc1z_RY8Rlq5oGxdAYfbrBPMiJ"
    "XLCwjbYoU0av2CQj-Olhbnpe7Vs8vzJ5oHP5gc2-0ooc5J49t4Uz9iYKpiM9KLUrqaJe0umc_klM2-ynHAI"
)


class NoNetwork(requests.Session):
    """A session that fails the test if anything tries to fetch a JWK Set (the sandbox's jku is never fetched)."""

    def request(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        raise AssertionError(f"unexpected fetch: {args} {kwargs}")


def test_the_example_file_is_the_sandbox_entry_and_verifies_a_real_sandbox_token(tmp_path: Path):
    entries = json.loads(EXAMPLE.read_text())
    assert [(e["iss"], e["jwks_url"]) for e in entries] == [(SANDBOX_ISS, SANDBOX_JKU)]
    (key,) = entries[0]["jwks"]["keys"]
    assert (key["kid"], key["kty"], key["crv"], key["alg"]) == (SANDBOX_KID, "EC", "P-384", "ES384")
    assert not {"d", "p", "q"} & set(key), "the example must hold the public key only"

    settings = load_settings({"BRACHY_CDS_TRUSTED_ISSUERS": str(EXAMPLE)})
    with Store(f"sqlite:///{tmp_path / 'jti.sqlite3'}") as store:
        verifier = JwtVerifier(settings, store, clock=lambda: 1594230700, session=NoNetwork())
        claims = verifier.verify(f"Bearer {REAL_SANDBOX_TOKEN}", "http://127.0.0.1:8000/cds-services")
        verifier.close()
    assert claims["iss"] == SANDBOX_ISS and claims["jti"] == "efb3773d-3a28-43e2-9fbc-b936a9ae388b"


def test_the_real_sandbox_token_is_refused_for_another_url_or_when_expired(tmp_path: Path):
    settings = load_settings({"BRACHY_CDS_TRUSTED_ISSUERS": str(EXAMPLE)})
    with Store(f"sqlite:///{tmp_path / 'jti.sqlite3'}") as store:
        for now, audience in ((1594230700, "http://127.0.0.1:8000/cds-services/other"), (1594239999, None)):
            verifier = JwtVerifier(settings, store, clock=lambda now=now: now, session=NoNetwork())
            with pytest.raises(Unauthorized):
                verifier.verify(f"Bearer {REAL_SANDBOX_TOKEN}", audience or "http://127.0.0.1:8000/cds-services")
            verifier.close()


def test_patient_view_templates_use_patient_scoped_tokens_only():
    sandbox_context = {"patientId": CANONICAL.patient, "userId": SANDBOX_USER}
    reviews = [service for service in SERVICES if service.hook == "patient-view"]
    assert reviews
    for service in reviews:
        for template in service.prefetch:
            assert set(template.tokens()) <= {"context.patientId", "userPractitionerId"}, template.key
            assert render_template(template.query, sandbox_context) is not None, template.key


# The whole sandbox flow against a real open FHIR server.


@pytest.fixture(scope="module")
def open_server_with_samples(open_fhir_server: FhirTestServer) -> FhirTestServer:
    load_samples(open_fhir_server.base_url)
    return open_fhir_server


@pytest.fixture
def recorder(open_server_with_samples: FhirTestServer) -> Iterator[DelayProxy]:
    """Records what the service asks the open FHIR server (it sees the proxy as the FHIR server)."""
    proxy = DelayProxy(open_server_with_samples.base_url)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def sandbox() -> TestIssuer:
    """Plays the sandbox: its issuer and kid, a fresh ES384 key."""
    return TestIssuer(SANDBOX_ISS, "ES384", kid=SANDBOX_KID)


@pytest.fixture
def sandbox_app(make_app: Callable[..., Flask], sandbox: TestIssuer, recorder: DelayProxy, tmp_path: Path) -> Flask:
    """JWTs required, the sandbox trusted with the example file's entry shape (inline keys + jwks_url)."""
    entry = json.loads(EXAMPLE.read_text())[0]
    entry["jwks"] = sandbox.jwks
    issuers = tmp_path / "trusted-issuers.json"
    issuers.write_text(json.dumps([entry]))
    return make_app(
        {
            "BRACHY_CDS_AUTH": "required",
            "BRACHY_CDS_TRUSTED_ISSUERS": str(issuers),
            "BRACHY_CDS_ALLOWED_FHIR_SERVERS": recorder.base_url,
            "BRACHY_CDS_LOOKBACK_DAYS": "3650",
            "BRACHY_CDS_SITES": str(site_table_path()),
        }
    )


def sandbox_headers(sandbox: TestIssuer, url: str, **header: Any) -> dict[str, str]:
    token = sandbox.sign(url, headers={"jku": SANDBOX_JKU, "typ": "JWT", **header})
    return {"Authorization": f"Bearer {token}", "Origin": ORIGIN}


def first_page(fhir_server: str, query: str) -> dict[str, Any]:
    """What the sandbox sends for a search template: the first page only (here forced to one entry a page)."""
    with requests.Session() as http:
        http.trust_env = False
        separator = "&" if "?" in query else "?"
        url = f"{fhir_server}/{query}{separator}_count=1"
        return http.get(url, headers={"Accept": "application/json+fhir"}, timeout=10).json()


def sandbox_request(fhir_server: str) -> dict[str, Any]:
    """The sandbox's patient-view call: no encounterId, no fhirAuthorization, first pages, a failed key left out."""
    review = next(service for service in SERVICES if service.id == REVIEW)
    context = {"patientId": CANONICAL.patient, "userId": SANDBOX_USER}
    prefetch = {t.key: first_page(fhir_server, render_template(t.query, context) or "") for t in review.prefetch}
    del prefetch["charges"]  # a key that failed is left out
    return {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "fhirServer": fhir_server,
        "context": context,
        "prefetch": prefetch,
    }


def test_a_sandbox_session_discovery_hook_call_and_feedback(
    sandbox_app: Flask, sandbox: TestIssuer, recorder: DelayProxy, open_server_with_samples: FhirTestServer
):
    client: FlaskClient = sandbox_app.test_client()
    discovery_url = f"{BASE}/cds-services"
    discovered = client.get("/cds-services", base_url=BASE, headers=sandbox_headers(sandbox, discovery_url))
    assert discovered.status_code == 200
    assert discovered.headers["Access-Control-Allow-Origin"] in ("*", ORIGIN)
    assert REVIEW in [service["id"] for service in discovered.get_json()["services"]]

    service_url = f"{BASE}/cds-services/{REVIEW}"
    request = sandbox_request(recorder.base_url)
    assert "next" in [link["relation"] for link in request["prefetch"]["procedures"]["link"]]
    before = len(recorder.requests)
    response = client.post(
        f"/cds-services/{REVIEW}", base_url=BASE, json=request, headers=sandbox_headers(sandbox, service_url)
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    cards = promised_cards(CANONICAL, response.get_json())

    # No fhirAuthorization: the service calls the open server without credentials, pages the
    # first-page prefetch and fetches the key that was left out.
    service_calls = recorder.requests[before:]
    assert service_calls, "the service should have called the FHIR server back"
    assert all("authorization" not in r.headers for r in service_calls)
    paths = [r.resource_path for r in service_calls]
    assert any(p.startswith("ChargeItem?patient=") for p in paths)
    assert any("Procedure" in p and ("_offset" in p or "page" in p or "_getpages" in p) for p in paths), paths

    feedback_url = f"{service_url}/feedback"
    suggestion = cards[0]["suggestions"][0]["uuid"]
    feedback = {
        "feedback": [
            {
                "card": cards[0]["uuid"],
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": suggestion}],
                "outcomeTimestamp": "2026-11-27T12:00:00Z",
            }
        ]
    }
    stored = client.post(
        f"/cds-services/{REVIEW}/feedback", base_url=BASE, json=feedback, headers=sandbox_headers(sandbox, feedback_url)
    )
    assert stored.status_code == 200, stored.get_data(as_text=True)


def test_a_discovery_url_with_a_trailing_slash_works_end_to_end(
    sandbox_app: Flask, sandbox: TestIssuer, recorder: DelayProxy, open_server_with_samples: FhirTestServer
):
    client = sandbox_app.test_client()
    assert client.get("/cds-services/", base_url=BASE,
                      headers=sandbox_headers(sandbox, f"{BASE}/cds-services/")).status_code == 200
    url = f"{BASE}/cds-services//{REVIEW}"  # the sandbox concatenates discovery URL + "/" + id
    request = sandbox_request(recorder.base_url)
    headers = sandbox_headers(sandbox, url)
    response = client.post(f"/cds-services//{REVIEW}", base_url=BASE, json=request, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    promised_cards(CANONICAL, response.get_json())


@pytest.mark.parametrize(
    "path",
    [
        "/cds-services",
        "/cds-services/",
        f"/cds-services/{REVIEW}",
        f"/cds-services//{REVIEW}",
        f"/cds-services/{REVIEW}/feedback",
        f"/cds-services//{REVIEW}/feedback",
    ],
)
def test_cors_preflight_is_answered_without_a_jwt(sandbox_app: Flask, path: str):
    preflight = sandbox_app.test_client().options(
        path,
        base_url=BASE,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET" if path.rstrip("/") == "/cds-services" else "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert 200 <= preflight.status_code < 300, (path, preflight.status_code, preflight.headers.get("Location"))
    assert preflight.headers["Access-Control-Allow-Origin"] in ("*", ORIGIN)
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed


@pytest.mark.parametrize(
    ("header", "claims"),
    [
        ({"jku": "https://evil.example.org/jwks.json"}, {}),
        ({"kid": "another-kid"}, {}),
        ({}, {"aud": f"{BASE}/cds-services/brachytherapy-planning-charge"}),
    ],
    ids=["foreign-jku", "unknown-kid", "aud-of-another-url"],
)
def test_tokens_that_are_not_the_sandbox_s_are_refused(
    sandbox_app: Flask, sandbox: TestIssuer, header: dict[str, str], claims: dict[str, str]
):
    url = f"{BASE}/cds-services"
    token = sandbox.sign(claims.get("aud", url), headers={"jku": SANDBOX_JKU, **header})
    headers = {"Authorization": f"Bearer {token}"}
    response = sandbox_app.test_client().get("/cds-services", base_url=BASE, headers=headers)
    assert response.status_code == 401
