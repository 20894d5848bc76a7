"""The HTTP surface through the app's test client: discovery, hook calls, feedback, CORS, JWTs, errors.

Contract section 2 (status codes, OperationOutcome bodies, no 5xx for any client input), 5.5 (OPTIONS
preflight without a JWT, trailing slash) and 5.6 (JWT ``aud`` is the URL called). The client is a
``CheckedClient``: every hook response is checked for CDS Hooks conformance and no response may be a 5xx.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tests.keys import TestIssuer

SCENARIOS = Path(__file__).parent / "fixtures" / "scenarios"
DISCHARGE = "/cds-services/brachytherapy-planning-charge"
REVIEW = "/cds-services/brachytherapy-planning-review"
ROUTES = ["/cds-services", "/cds-services/", DISCHARGE, f"{DISCHARGE}/", f"{DISCHARGE}/feedback", REVIEW,
          f"{REVIEW}/feedback", "/healthz"]
PREFLIGHT = {
    "Origin": "https://sandbox.cds-hooks.org",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}
FEEDBACK = {
    "feedback": [
        {"card": "card-1", "outcome": "accepted", "acceptedSuggestions": [{"id": "suggestion-1"}],
         "outcomeTimestamp": "2026-10-15T09:00:00Z"},
        {"card": "card-2", "outcome": "overridden", "outcomeTimestamp": "2026-10-15T09:01:00Z",
         "overrideReason": {"reason": {"system": "https://brachy-cds.org/fhir/CodeSystem/override-reason",
                                       "code": "billed-elsewhere", "display": "Planning billed by another entity"},
                            "userComment": "Billed by the hospital"}},
    ]
}


def scenario_request(name: str = "r4-pos22-tandem-ovoids-implied-77317-26") -> dict:
    return json.loads((SCENARIOS / name / "request.json").read_text(encoding="utf-8"))


def outcome_text(response) -> str:
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    [issue] = body["issue"]
    assert issue["severity"] == "error"
    return issue["details"]["text"]


# Discovery


@pytest.mark.parametrize("path", ["/cds-services", "/cds-services/"])
def test_discovery_lists_the_two_services(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    services = response.get_json()["services"]
    assert [(s["id"], s["hook"]) for s in services] == [
        ("brachytherapy-planning-charge", "encounter-discharge"),
        ("brachytherapy-planning-review", "patient-view"),
    ]
    for service in services:
        assert service["title"] and service["description"] and service["prefetch"]


def test_healthz(client):
    response = client.get("/healthz")
    assert (response.status_code, response.get_json()) == (200, {"status": "ok"})


# Hook calls


def test_hook_call_answers_cards(client):
    response = client.post(DISCHARGE, json=scenario_request())
    assert response.status_code == 200
    [card] = [c for c in response.get_json()["cards"] if c["source"]["topic"]["code"] == "charge-suggestion"]
    assert card["summary"] == "Bill 77317-26: intermediate brachytherapy isodose plan, 3 channels on 2026-10-14"


def test_hook_call_with_a_trailing_slash(make_app):
    without = make_app().test_client().post(DISCHARGE, json=scenario_request())
    with_slash = make_app().test_client().post(f"{DISCHARGE}/", json=scenario_request())
    assert with_slash.status_code == 200
    assert with_slash.get_json() == without.get_json()


def test_patient_view_call(client):
    response = client.post(REVIEW, json=scenario_request("pv-with-encounter-id"))
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/cds-services/no-such-service", "/cds-services/no-such-service/feedback"])
def test_unknown_service_is_404(client, path):
    response = client.post(path, json=scenario_request())
    assert response.status_code == 404
    assert outcome_text(response) == "No CDS service with this id; GET /cds-services lists the services"


def test_unknown_path_is_404(client):
    response = client.get("/cds-services/a/b/c")
    assert response.status_code == 404
    assert outcome_text(response) == "No such endpoint; GET /cds-services lists the services"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", DISCHARGE), ("GET", f"{DISCHARGE}/feedback"), ("PUT", DISCHARGE), ("DELETE", REVIEW),
     ("POST", "/cds-services"), ("POST", "/healthz")],
)
def test_wrong_method_is_405(client, method, path):
    response = client.open(path, method=method)
    assert response.status_code == 405
    assert outcome_text(response) == f"Method {method} is not allowed on this endpoint"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "The request body is empty; a JSON object is required"),
        (b"hook=encounter-discharge", "The request body is not valid JSON"),
        (b'{"hook": "encounter-discharge",', "The request body is not valid JSON"),
        (b"\xff\xfe\x00", "The request body is not valid JSON"),
        (b"[]", "The request body must be a JSON object"),
        (b'[{"hook": "encounter-discharge"}]', "The request body must be a JSON object"),
        (b'"encounter-discharge"', "The request body must be a JSON object"),
        (b"null", "The request body must be a JSON object"),
        (b"[" * 50_000 + b"]" * 50_000, "The request body nests "),
    ],
)
def test_malformed_body_is_400(client, data, message):
    response = client.post(DISCHARGE, data=data, content_type="application/json")
    assert response.status_code == 400
    assert outcome_text(response).startswith(message)


def test_wrong_hook_is_400(client):
    body = scenario_request()
    body["hook"] = "patient-view"
    response = client.post(DISCHARGE, json=body)
    assert response.status_code == 400
    assert outcome_text(response) == (
        "Service 'brachytherapy-planning-charge' answers hook 'encounter-discharge', not 'patient-view'"
    )


def test_missing_encounter_id_for_encounter_discharge_is_400(client):
    body = scenario_request()
    del body["context"]["encounterId"]
    response = client.post(DISCHARGE, json=body)
    assert response.status_code == 400
    assert outcome_text(response) == "'context.encounterId' is required"


@pytest.mark.parametrize("fhir_server", ["http://[::1", "https://ehr.example.org:port/fhir", "https://"])
def test_malformed_fhir_server_is_400_not_500(client, fhir_server):
    body = scenario_request()
    body["fhirServer"] = fhir_server
    response = client.post(DISCHARGE, json=body)
    assert response.status_code == 400
    assert outcome_text(response) == "'fhirServer' must be an absolute http(s) URL"


def test_access_token_is_not_echoed_in_an_error(client):
    body = scenario_request()
    body["fhirAuthorization"] = {"access_token": "tok-SECRET-123", "token_type": "MAC", "expires_in": 300,
                                 "scope": "patient/*.read", "subject": "brachy-cds"}
    body["fhirServer"] = "https://ehr.example.org/fhir"
    response = client.post(DISCHARGE, json=body)
    assert response.status_code == 400
    assert "tok-SECRET-123" not in response.get_data(as_text=True)
    assert outcome_text(response) == "'fhirAuthorization.token_type' must be 'Bearer'"


@pytest.mark.parametrize("path", [DISCHARGE, f"{DISCHARGE}/feedback"])
def test_body_over_the_limit_is_413(make_app, path):
    client = make_app({"BRACHY_CDS_MAX_BODY_BYTES": "2048"}).test_client()
    body = scenario_request()
    assert len(json.dumps(body)) > 2048
    response = client.post(path, json=body)
    assert response.status_code == 413
    assert outcome_text(response) == "The request body is over the limit of 2048 bytes"


def test_body_at_the_limit_is_read(make_app):
    client = make_app({"BRACHY_CDS_MAX_BODY_BYTES": "2048"}).test_client()
    data = b"[" + b" " * 2046 + b"]"
    response = client.post(DISCHARGE, data=data, content_type="application/json")
    assert response.status_code == 400
    assert outcome_text(response) == "The request body must be a JSON object"


# Feedback


def test_feedback_is_stored(make_app):
    app = make_app()
    response = app.test_client().post(f"{DISCHARGE}/feedback", json=FEEDBACK)
    assert (response.status_code, response.get_json()) == (200, {"stored": 2})
    assert app.extensions["brachy_cds"].store.feedback_summary() == {
        "since": None,
        "services": {
            "brachytherapy-planning-charge": {
                "received": 2,
                "count": 2,
                "accepted": 1,
                "overridden": 1,
                "acceptance_rate": 0.5,
                "override_reasons": [
                    {"system": "https://brachy-cds.org/fhir/CodeSystem/override-reason", "code": "billed-elsewhere",
                     "display": "Planning billed by another entity", "count": 1}
                ],
                "overridden_without_reason": 0,
            }
        },
    }


def test_feedback_is_kept_per_service(make_app):
    app = make_app()
    client = app.test_client()
    one = {"feedback": FEEDBACK["feedback"][:1]}
    assert client.post(f"{REVIEW}/feedback", json=one).status_code == 200
    assert client.post(f"{REVIEW}/feedback", json=one).status_code == 200  # a duplicate is expected (FB3)
    summary = app.extensions["brachy_cds"].store.feedback_summary()["services"]
    assert list(summary) == ["brachytherapy-planning-review"]
    review = summary["brachytherapy-planning-review"]
    assert (review["received"], review["count"]) == (2, 1)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "'feedback' is required and must be a non-empty array"),
        ({"feedback": []}, "'feedback' is required and must be a non-empty array"),
        ([], "The feedback body must be a JSON object"),
        ({"feedback": [{"card": "c", "outcome": "ignored", "outcomeTimestamp": "2026-10-15T09:00:00Z"}]},
         "feedback[0].outcome is required and must be 'accepted' or 'overridden'"),
        ({"feedback": [{"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-10-15T09:00:00Z"}]},
         "feedback[0].acceptedSuggestions is required for an accepted card and must be a non-empty array"),
        ({"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "yesterday"}]},
         "feedback[0].outcomeTimestamp is required and must be an RFC 3339 date-time with a time zone"),
    ],
)
def test_malformed_feedback_is_400_and_stores_nothing(make_app, body, message):
    app = make_app()
    response = app.test_client().post(f"{DISCHARGE}/feedback", json=body)
    assert response.status_code == 400
    assert outcome_text(response) == message
    assert app.extensions["brachy_cds"].store.feedback_summary()["services"] == {}


def test_feedback_body_that_is_not_json_is_400(client):
    response = client.post(f"{DISCHARGE}/feedback", data=b"accepted", content_type="application/json")
    assert response.status_code == 400
    assert outcome_text(response) == "The request body is not valid JSON"


# CORS preflight (contract 5.5)


def assert_preflight_allowed(response) -> None:
    assert 200 <= response.status_code < 300
    assert response.headers["Access-Control-Allow-Origin"] in ("*", "https://sandbox.cds-hooks.org")
    allowed_headers = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed_headers
    allowed_methods = {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert {"GET", "POST", "OPTIONS"} <= allowed_methods


@pytest.mark.parametrize("path", ROUTES)
def test_preflight_without_a_jwt_auth_off(client, path):
    assert_preflight_allowed(client.options(path, headers=PREFLIGHT))


@pytest.mark.parametrize("path", ROUTES)
def test_preflight_without_a_jwt_auth_required(make_app, path):
    client = make_app({"BRACHY_CDS_AUTH": "required"}).test_client()
    assert_preflight_allowed(client.options(path, headers=PREFLIGHT))


def test_simple_responses_carry_the_cors_header(client):
    response = client.get("/cds-services", headers={"Origin": "https://sandbox.cds-hooks.org"})
    assert response.headers["Access-Control-Allow-Origin"] in ("*", "https://sandbox.cds-hooks.org")


# JWT (BRACHY_CDS_AUTH=required, contract 5.6)


@pytest.fixture(scope="module")
def es384() -> TestIssuer:
    return TestIssuer("https://ehr.example.org/cds", "ES384")


@pytest.fixture(scope="module")
def rs384() -> TestIssuer:
    return TestIssuer("https://epic.example.net/interconnect", "RS384")


@pytest.fixture
def secured(make_app, tmp_path, es384, rs384):
    """Build an auth-required app that trusts ``es384`` and ``rs384`` (inline JWK Sets in a JSON file)."""
    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps([{"iss": es384.iss, "jwks": es384.jwks}, {"iss": rs384.iss, "jwks": rs384.jwks}]))

    def build(**config: str):
        return make_app({"BRACHY_CDS_AUTH": "required", "BRACHY_CDS_TRUSTED_ISSUERS": str(issuers), **config})

    return build


def bearer(issuer: TestIssuer, aud: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.sign(aud)}"}


def assert_unauthorized(response) -> None:
    assert response.status_code == 401
    assert response.get_data(as_text=True) in ("", "unauthorized")


CALLS = [
    ("GET", "/cds-services", None),
    ("GET", "/cds-services/", None),
    ("POST", DISCHARGE, "hook"),
    ("POST", f"{DISCHARGE}/feedback", "feedback"),
]


def call(client, method, path, payload, headers):
    body = {"hook": scenario_request(), "feedback": copy.deepcopy(FEEDBACK)}.get(payload)
    return client.open(path, method=method, json=body, headers=headers)


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
@pytest.mark.parametrize(("method", "path", "payload"), CALLS)
def test_valid_jwt_for_the_url_called_passes(secured, es384, rs384, alg, method, path, payload):
    issuer = es384 if alg == "ES384" else rs384
    client = secured().test_client()
    response = call(client, method, path, payload, bearer(issuer, f"http://localhost{path}"))
    assert response.status_code == 200


@pytest.mark.parametrize(("method", "path", "payload"), CALLS)
def test_missing_jwt_is_401_without_detail(secured, method, path, payload):
    response = call(secured().test_client(), method, path, payload, {})
    assert_unauthorized(response)


@pytest.mark.parametrize(("method", "path", "payload"), CALLS)
def test_jwt_for_another_url_is_401(secured, es384, method, path, payload):
    response = call(secured().test_client(), method, path, payload, bearer(es384, f"http://localhost{REVIEW}"))
    assert_unauthorized(response)


def test_untrusted_issuer_and_garbage_are_401(secured):
    client = secured().test_client()
    stranger = TestIssuer("https://stranger.example.com", "ES384")
    assert_unauthorized(client.get("/cds-services", headers=bearer(stranger, "http://localhost/cds-services")))
    assert_unauthorized(client.get("/cds-services", headers={"Authorization": "Bearer not.a.jwt"}))
    assert_unauthorized(client.get("/cds-services", headers={"Authorization": "Basic dXNlcjpwdw=="}))


def test_a_jwt_is_accepted_once(secured, es384):
    client = secured().test_client()
    headers = bearer(es384, "http://localhost/cds-services")
    assert client.get("/cds-services", headers=headers).status_code == 200
    assert_unauthorized(client.get("/cds-services", headers=headers))


def test_no_jwt_is_checked_before_the_404_of_an_unknown_service(secured):
    # Without a valid JWT the caller learns nothing, not even which services exist.
    assert_unauthorized(secured().test_client().post("/cds-services/no-such-service", json={}))


def test_public_url_sets_the_expected_audience(secured, es384, rs384):
    client = secured(BRACHY_CDS_PUBLIC_URL="https://cds.example.org/brachy/").test_client()
    public = "https://cds.example.org/brachy"
    assert client.get("/cds-services", headers=bearer(es384, f"{public}/cds-services")).status_code == 200
    response = client.post(DISCHARGE, json=scenario_request(), headers=bearer(rs384, f"{public}{DISCHARGE}"))
    assert response.status_code == 200
    feedback_url = f"{public}{DISCHARGE}/feedback"
    response = client.post(f"{DISCHARGE}/feedback", json=FEEDBACK, headers=bearer(es384, feedback_url))
    assert response.status_code == 200
    # The URL the request arrived at is no longer the audience.
    assert_unauthorized(client.get("/cds-services", headers=bearer(es384, "http://localhost/cds-services")))


def test_healthz_needs_no_jwt(secured):
    response = secured().test_client().get("/healthz")
    assert (response.status_code, response.get_json()) == (200, {"status": "ok"})


def test_auth_required_without_trusted_issuers_refuses_every_call(make_app, es384):
    client = make_app({"BRACHY_CDS_AUTH": "required"}).test_client()
    assert_unauthorized(client.get("/cds-services", headers=bearer(es384, "http://localhost/cds-services")))
