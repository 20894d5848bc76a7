"""CORS and request limits through the whole app (issue 4; CDS Hooks C1, contract 1 and 5.5).

CORS: preflight answered without a JWT on every route, ``Authorization`` and ``Content-Type``
allowed, ``*`` without credentials by default, exact origins when ``BRACHY_CDS_CORS_ORIGINS`` says
so, and the headers on every answer, errors included (HAPI's starter sent none on POST:
reference/cds-hooks.md section 4). Limits: ``BRACHY_CDS_MAX_BODY_BYTES`` (413, also for a chunked
body through a real server), ``BRACHY_CDS_MAX_JSON_DEPTH`` (400 before parsing), strict JSON.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from cds_service.config import ConfigError, load_settings

CHARGE = "/cds-services/brachytherapy-planning-charge"
REVIEW = "/cds-services/brachytherapy-planning-review"
ROUTES = [
    "/cds-services",
    "/cds-services/",
    CHARGE,
    f"{CHARGE}/",
    f"{CHARGE}/feedback",
    REVIEW,
    f"{REVIEW}/feedback",
    "/cds-services/no-such-service",
    "/healthz",
]
ORIGIN = "https://ehr-ui.example.org"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}
SCENARIO = Path(__file__).parent / "fixtures" / "scenarios" / "r4-pos22-tandem-ovoids-implied-77317-26" / "request.json"
FEEDBACK = {"feedback": [{"card": "c-1", "outcome": "overridden", "outcomeTimestamp": "2026-10-20T10:00:00Z"}]}


def hook_request() -> dict[str, Any]:
    return json.loads(SCENARIO.read_text())


def diagnostics(response: Any) -> str:
    return response.get_json()["issue"][0]["diagnostics"]


def details(response: Any) -> str:
    return response.get_json()["issue"][0]["details"]["text"]


# --- CORS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ROUTES)
def test_preflight_is_answered_without_a_jwt_on_every_route(make_app, caplog, path):
    client = make_app({"BRACHY_CDS_AUTH": "required", "BRACHY_CDS_PUBLIC_URL": "https://cds.example.org"}).test_client()
    response = client.options(path, headers=PREFLIGHT)
    assert 200 <= response.status_code < 300
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    allowed_headers = {h.strip() for h in response.headers["Access-Control-Allow-Headers"].lower().split(",")}
    assert allowed_headers == {"authorization", "content-type"}
    allowed_methods = {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert allowed_methods == {"GET", "POST", "OPTIONS"}
    assert "Access-Control-Allow-Credentials" not in response.headers
    access = [r.fields for r in caplog.records if r.name == "brachy_cds.access"]
    assert [fields["method"] for fields in access] == ["OPTIONS"] and "authFailure" not in access[0]


def _answers(client: FlaskClient) -> Iterator[tuple[str, Any]]:
    """One answer of each kind the service gives, asked from a browser origin."""
    origin = {"Origin": ORIGIN}
    yield "200 discovery", client.get("/cds-services", headers=origin)
    yield "200 hook call", client.post(CHARGE, json=hook_request(), headers=origin)
    yield "200 feedback", client.post(f"{CHARGE}/feedback", json=FEEDBACK, headers=origin)
    yield "400 malformed", client.post(CHARGE, data=b"{", content_type="application/json", headers=origin)
    yield "404 unknown service", client.post("/cds-services/nope", json=hook_request(), headers=origin)
    yield "404 unknown path", client.get("/nothing-here", headers=origin)
    yield "405 wrong method", client.get(CHARGE, headers=origin)
    without_data = {**hook_request(), "prefetch": {}}
    yield "412 no data", client.post(CHARGE, json=without_data, headers=origin)
    yield "413 too large", client.post(CHARGE, data=b" " * 20_000, content_type="application/json", headers=origin)


def test_every_answer_carries_the_cors_header_errors_too(make_app):
    app = make_app({"BRACHY_CDS_MAX_BODY_BYTES": "10000"})
    seen = {}
    for name, response in _answers(app.test_client()):
        seen[name] = response.status_code
        assert response.headers.get("Access-Control-Allow-Origin") == "*", name
        assert "Access-Control-Allow-Credentials" not in response.headers, name
    assert [int(name.split()[0]) for name in seen] == list(seen.values())


def test_a_401_carries_the_cors_header(make_app):
    client = make_app({"BRACHY_CDS_AUTH": "required"}).test_client()
    for response in (
        client.get("/cds-services", headers={"Origin": ORIGIN}),
        client.post(CHARGE, json=hook_request(), headers={"Origin": ORIGIN, "Authorization": "Bearer x.y.z"}),
    ):
        assert response.status_code == 401
        assert response.headers["Access-Control-Allow-Origin"] == "*"


class _FailingSession:
    """A stand-in HTTP session with a bug: every request raises an exception the client does not expect."""

    def send(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug while reading https://ehr.example.org/fhir/Patient/pat-int-1 (Ida Integration)")

    def close(self) -> None:
        return None


def test_a_bug_is_a_generic_500_with_cors_headers_and_only_the_exception_type_logged(make_app, caplog):
    app = make_app({"BRACHY_CDS_ALLOWED_FHIR_SERVERS": "https://ehr.example.org/fhir"}, session=_FailingSession())
    app.test_client_class = FlaskClient  # the checked client refuses any 5xx; this test wants to see one
    body = {**hook_request(), "prefetch": {}, "fhirServer": "https://ehr.example.org/fhir"}
    response = app.test_client().post(CHARGE, json=body, headers={"Origin": ORIGIN})
    assert response.status_code == 500
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert diagnostics(response) == "brachy-cds:internal"
    assert "Ida" not in response.get_data(as_text=True) and "bug" not in response.get_data(as_text=True)
    errors = [r for r in caplog.records if r.name == "brachy_cds.error"]
    assert [(r.getMessage(), r.fields, r.exc_info) for r in errors] == [
        ("unhandled error", {"exception": "RuntimeError"}, None)
    ]


def test_configured_origins_are_matched_exactly(make_app):
    app = make_app({"BRACHY_CDS_CORS_ORIGINS": "https://ehr-a.example.org, http://[::1]:3000"})
    client = app.test_client()
    for origin in ("https://ehr-a.example.org", "http://[::1]:3000"):
        response = client.get("/cds-services", headers={"Origin": origin})
        assert response.headers["Access-Control-Allow-Origin"] == origin
        assert "Origin" in response.headers["Vary"]
        preflight = client.options(CHARGE, headers={**PREFLIGHT, "Origin": origin})
        assert preflight.headers["Access-Control-Allow-Origin"] == origin
    for stranger in ("https://ehr-a.example.org.evil.example", "https://evil.example", "http://ehr-a.example.org"):
        assert "Access-Control-Allow-Origin" not in client.get("/cds-services", headers={"Origin": stranger}).headers
        preflight = client.options(CHARGE, headers={**PREFLIGHT, "Origin": stranger})
        assert "Access-Control-Allow-Origin" not in preflight.headers


@pytest.mark.parametrize(
    "value", ["https://ehr.example.org/app", "ehr.example.org", "https://*.example.org", "https://u:p@ehr.example.org"]
)
def test_an_origin_that_is_not_scheme_host_port_stops_start_up(value):
    with pytest.raises(ConfigError) as caught:
        load_settings({"BRACHY_CDS_CORS_ORIGINS": f"https://ok.example.org,{value}"})
    assert str(caught.value).startswith("BRACHY_CDS_CORS_ORIGINS: ")


# --- limits --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CHARGE, f"{CHARGE}/feedback"])
def test_a_chunked_body_over_the_limit_is_413_in_the_app(make_app, path):
    """No Content-Length, as a WSGI server passes on a chunked body (``wsgi.input_terminated``)."""
    client = make_app({"BRACHY_CDS_MAX_BODY_BYTES": "4096"}).test_client()
    for size, status in ((4096 + 1, 413), (1_000_000, 413), (4096, 400)):
        response = client.post(
            path,
            input_stream=io.BytesIO(b" " * size),
            headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
            environ_overrides={"wsgi.input_terminated": True},
        )
        assert response.request.content_length is None
        assert response.status_code == status, size
        if status == 413:
            assert diagnostics(response) == "brachy-cds:body-too-large"
            assert details(response) == "The request body is over the limit of 4096 bytes"


@pytest.fixture
def served(make_app: Callable[..., Flask]) -> Iterator[Callable[..., str]]:
    """Serve an app with Werkzeug's threaded HTTP server on 127.0.0.1; return its base URL."""
    servers = []

    def serve(config: dict[str, str]) -> str:
        server = make_server("127.0.0.1", 0, make_app(config), threaded=True)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_port}"

    yield serve
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_chunked_body_over_the_limit_is_413_through_a_real_server(served):
    base = served({"BRACHY_CDS_MAX_BODY_BYTES": "65536"})
    request = json.dumps(hook_request()).encode()

    def chunks(data: bytes, size: int = 8192) -> Iterator[bytes]:
        for start in range(0, len(data), size):
            yield data[start : start + size]

    with requests.Session() as session:
        session.trust_env = False
        fits = session.post(f"{base}{CHARGE}", data=chunks(request), headers={"Content-Type": "application/json"})
        assert fits.request.headers["Transfer-Encoding"] == "chunked"
        assert fits.status_code == 200, fits.text
        padded = request[:-1] + b" " * 2_000_000 + b"}"  # still valid JSON, 2 MB of it
        too_large = session.post(f"{base}{CHARGE}", data=chunks(padded), headers={"Content-Type": "application/json"})
        assert too_large.status_code == 413
        assert too_large.json()["issue"][0]["diagnostics"] == "brachy-cds:body-too-large"


def test_nesting_over_the_limit_is_a_400_naming_the_limit(make_app):
    client = make_app().test_client()

    def nested(levels: int) -> Any:
        value: Any = "leaf"
        for _ in range(levels):
            value = [value]
        return value

    response = client.post(CHARGE, json={**hook_request(), "extension": nested(64)})  # 65 with the request object
    assert (response.status_code, details(response)) == (
        400,
        "The request body nests arrays or objects deeper than 64 levels",
    )
    endless = client.post(CHARGE, data=b"[" * 4_000_000, content_type="application/json")
    assert details(endless) == "The request body nests arrays or objects deeper than 64 levels"
    assert client.post(CHARGE, json={**hook_request(), "extension": nested(63)}).status_code == 200  # 64 levels


def test_the_nesting_limit_is_configurable(make_app):
    client = make_app({"BRACHY_CDS_MAX_JSON_DEPTH": "8"}).test_client()
    response = client.post(CHARGE, json=hook_request())  # a real request nests about 10 levels
    assert (response.status_code, details(response)) == (
        400,
        "The request body nests arrays or objects deeper than 8 levels",
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"hook": "encounter-discharge", "n": NaN}', "The request body is not valid JSON"),
        (b'{"hook": "encounter-discharge", "n": Infinity}', "The request body is not valid JSON"),
        (b'{"hook": "encounter-\xe9"}', "The request body is not valid JSON (not UTF-8 text)"),
    ],
)
def test_only_strict_json_is_read(make_app, data, message):
    response = make_app().test_client().post(CHARGE, data=data, content_type="application/json")
    assert (response.status_code, details(response)) == (400, message)
