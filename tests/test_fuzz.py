"""Property-based fuzzing of the whole app with hypothesis (issue 4 acceptance: at least 2,000 requests).

Valid scenario requests with fields removed, values of the wrong type, huge strings, deep nesting,
odd Unicode, invalid FHIR and odd references in prefetch; requests generated from scratch; raw and
mangled bytes; mutated feedback; forged Authorization headers; odd paths and methods. Properties,
for every request: never a 5xx, the status is one the contract names, every 200 passes the CDS
Hooks checks and every error body is an OperationOutcome (the ``CheckedClient`` checks both), and
nothing is ever logged on ``brachy_cds.error`` (the app's "unhandled error": a bug).

Runs are derandomized (the same examples on every machine and CI run) and kept under a minute;
``QUOTAS`` says how many requests each test must have sent, and they add up to over 2,000.
"""

from __future__ import annotations

import base64
import copy
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service import create_app
from tests.conftest import CheckedClient
from tests.fhir_server import free_port
from tests.keys import TestIssuer

SCENARIOS = sorted((Path(__file__).parent / "fixtures" / "scenarios").glob("*/request.json"))
SERVICE_OF_HOOK = {
    "encounter-discharge": "brachytherapy-planning-charge",
    "patient-view": "brachytherapy-planning-review",
}
HOOK_STATUSES = {200, 400, 404, 412, 413}
QUOTAS = {
    "mutated hook calls": 900,
    "generated hook calls": 300,
    "raw bodies": 300,
    "mutated feedback": 250,
    "forged authorization": 200,
    "odd paths and methods": 150,
}
SENT: Counter[str] = Counter()
MAX_BODY_BYTES = 1024 * 1024
CLOSED_FHIR_SERVER = f"http://127.0.0.1:{free_port()}/fhir"
"""Allowed, but nothing listens there: a request that reaches the fetch step meets "connection refused"."""

FUZZ = settings(
    deadline=None,  # whole requests through the app: some take tens of milliseconds, by design
    derandomize=True,  # the same examples on every run: CI stays stable
    database=None,
    # Building the mutated requests (copies of real scenario JSON) is slower than hypothesis expects
    # of a strategy; the examples are not large, the data is.
    suppress_health_check=[HealthCheck.too_slow],
)


def _scenario(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


BASE_REQUESTS = [_scenario(path) for path in SCENARIOS]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """One app for every example (auth off, prefetch plus one unreachable allowed server, 1 MiB bodies)."""
    folder = tmp_path_factory.mktemp("fuzz")
    built = create_app(
        {
            "BRACHY_CDS_AUTH": "off",
            "BRACHY_CDS_DATABASE_URL": f"sqlite:///{folder / 'fuzz.sqlite3'}",
            "BRACHY_CDS_ALLOWED_FHIR_SERVERS": CLOSED_FHIR_SERVER,
            "BRACHY_CDS_FHIR_BUDGET_SECONDS": "0.3",  # below the retry threshold: refused once, 412
            "BRACHY_CDS_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        }
    )
    built.test_client_class = CheckedClient
    yield built
    built.extensions["brachy_cds"].close()


@pytest.fixture(autouse=True)
def fuzzing(leak_registry: Any, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Generated values repeat across fields (a token equal to a hookInstance, which is logged by design):
    the leak registry learns nothing from these requests; the test data's secrets are still checked."""
    leak_registry.learn_from_requests = False
    yield
    bugs = [record for record in caplog.get_records("call") if record.name == "brachy_cds.error"]
    assert bugs == [], [record.__dict__.get("fields") for record in bugs]


# --- strategies ---------------------------------------------------------------------------------

ODD_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "\u202etxet\u202c",
        "\ufeff",
        "\ud800",
        "\udfff\ud800",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 😀",
        "e\u0301\u0301\u0301",
        "\u2028\u2029",
        "<script>alert(1)</script>",
        "**bold** [link](javascript:alert(1))",
        "../../etc/passwd",
        "%00%2e%2e",
        "{{context.patientId}}",
        "Patient/../../x",
        "Device?_id=a,b",
        "http://169.254.169.254/latest/meta-data",
        "Bearer x.y.z",
        "NaN",
        "9" * 400,
    ]
)
UNICODE_TEXT = st.text(st.characters(categories=["Cs", "Co", "Cn", "Cc", "Zl", "Zp", "Mn", "So", "Lo"]), max_size=30)
HUGE_TEXT = st.integers(min_value=10_000, max_value=2 * MAX_BODY_BYTES).map(lambda n: "x" * n)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()  # NaN and infinities included: the body is then not strict JSON (400)
    | st.text(max_size=20)
    | ODD_TEXT
    | UNICODE_TEXT
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def nested(levels: int) -> Any:
    value: Any = {"resourceType": "Patient"}
    for level in range(levels):
        value = [value] if level % 2 else {"x": value}
    return value


WEIRD_VALUES = (
    JSON_VALUES
    | HUGE_TEXT
    | st.integers(min_value=1, max_value=300).map(nested)
    | st.sampled_from([[], {}, [None], {"resourceType": None}, {"resourceType": "OperationOutcome"}])
)
RESOURCE_TYPES = st.sampled_from(
    ["Patient", "Bundle", "OperationOutcome", "Procedure", "Device", "Encounter", "ChargeItem", "Nonsense", "", "b"]
)
REFERENCES = st.sampled_from(
    [
        "Device/",
        "#",
        "#missing",
        "urn:uuid:",
        "urn:uuid:00000000-0000-0000-0000-000000000000",
        "http://evil.example/fhir/Device/1",
        f"{CLOSED_FHIR_SERVER}/Device/dev-1",
        "Device/a/_history/1",
        "../Device/x",
        "Device?_id=x",
        "Device/" + "a" * 200,
        "Encounter/enc-1",
        "Procedure/proc-1",
    ]
)


def all_paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from all_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from all_paths(value, (*prefix, index))


def parent_of(document: Any, path: tuple[Any, ...]) -> Any:
    node = document
    for step in path[:-1]:
        node = node[step]
    return node


def mutate(data: st.DataObject, document: Any) -> Any:
    """Apply one drawn mutation to ``document`` (in place where possible); return the new document."""
    kind = data.draw(
        st.sampled_from(["drop", "replace", "insert", "resourceType", "reference", "empty", "repeat"]), label="kind"
    )
    paths = list(all_paths(document))
    if kind == "resourceType":
        paths = [p for p in paths if p and p[-1] == "resourceType"] or paths
    elif kind == "reference":
        paths = [p for p in paths if p and p[-1] == "reference"] or paths
    path = data.draw(st.sampled_from(paths), label="path")
    if not path:
        return copy.deepcopy(data.draw(WEIRD_VALUES, label="root"))
    parent, key = parent_of(document, path), path[-1]
    if kind == "drop":
        del parent[key]
    elif kind == "insert" and isinstance(parent[key], dict):
        new_key = data.draw(st.text(max_size=12) | ODD_TEXT, label="new key")
        parent[key][new_key] = copy.deepcopy(data.draw(WEIRD_VALUES, label="value"))
    elif kind == "resourceType":
        parent[key] = data.draw(RESOURCE_TYPES, label="resourceType")
    elif kind == "reference":
        parent[key] = data.draw(REFERENCES, label="reference")
    elif kind == "empty":
        parent[key] = type(parent[key])() if isinstance(parent[key], dict | list | str) else None
    elif kind == "repeat" and isinstance(parent[key], list) and parent[key]:
        parent[key] = copy.deepcopy(parent[key] * data.draw(st.integers(min_value=2, max_value=60), label="times"))
    else:
        # Copies: a drawn value may be a shared constant, and later mutations change values in place.
        parent[key] = copy.deepcopy(data.draw(WEIRD_VALUES, label="value"))
    return document


def post_hook(app: Flask, body: Any, service: str | None = None) -> Any:
    hook = body.get("hook") if isinstance(body, dict) else None
    service = service or SERVICE_OF_HOOK.get(hook if isinstance(hook, str) else "", "brachytherapy-planning-charge")
    return app.test_client().post(f"/cds-services/{service}", json=body)


# --- the properties -----------------------------------------------------------------------------


def test_mutated_hook_calls(app):
    @settings(FUZZ, max_examples=QUOTAS["mutated hook calls"])
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        body = copy.deepcopy(data.draw(st.sampled_from(BASE_REQUESTS), label="scenario"))
        if data.draw(st.booleans(), label="call the server"):
            body["fhirServer"] = CLOSED_FHIR_SERVER
            body["fhirAuthorization"] = {"access_token": "fuzz-token-9d8c7b6a", "token_type": "Bearer"}
        for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="mutations")):
            body = mutate(data, body)
        response = post_hook(app, body)
        SENT["mutated hook calls"] += 1
        assert response.status_code in HOOK_STATUSES

    run()
    assert SENT["mutated hook calls"] >= QUOTAS["mutated hook calls"]


def test_generated_hook_calls(app):
    context = st.fixed_dictionaries(
        {},
        optional={
            "patientId": st.sampled_from(["pat-1", "Patient/pat-1", "", "pat 1"]) | SCALARS,
            "encounterId": st.sampled_from(["enc-1", "Encounter/enc-1"]) | SCALARS,
            "userId": st.sampled_from(["Practitioner/dr-1", "PractitionerRole/r"]) | SCALARS,
        },
    )
    prefetch = st.dictionaries(
        st.sampled_from(["encounter", "procedures", "charges", "coverage", "patient", "other"]) | st.text(max_size=5),
        st.none()
        | st.fixed_dictionaries({"resourceType": RESOURCE_TYPES}, optional={"entry": JSON_VALUES})
        | JSON_VALUES,
        max_size=5,
    )
    body = st.fixed_dictionaries(
        {},
        optional={
            "hook": st.sampled_from(list(SERVICE_OF_HOOK)) | SCALARS,
            "hookInstance": st.uuids().map(str) | SCALARS,
            "context": context | SCALARS,
            "fhirServer": st.sampled_from([CLOSED_FHIR_SERVER, "https://ehr.example.org/fhir", "ftp://x"]) | SCALARS,
            "fhirAuthorization": st.fixed_dictionaries(
                {}, optional={"access_token": SCALARS, "token_type": st.sampled_from(["Bearer", "MAC"]) | SCALARS}
            )
            | SCALARS,
            "prefetch": prefetch | SCALARS,
        },
    )

    @settings(FUZZ, max_examples=QUOTAS["generated hook calls"])
    @given(body=body | JSON_VALUES, service=st.sampled_from(list(SERVICE_OF_HOOK.values())))
    def run(body: Any, service: str) -> None:
        response = post_hook(app, body, service)
        SENT["generated hook calls"] += 1
        assert response.status_code in HOOK_STATUSES

    run()
    assert SENT["generated hook calls"] >= QUOTAS["generated hook calls"]


def test_raw_and_mangled_bodies(app):
    valid = [json.dumps(request).encode() for request in BASE_REQUESTS[:8]]

    @st.composite
    def mangled(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(valid)))
        for _ in range(draw(st.integers(min_value=1, max_value=4))):
            at = draw(st.integers(min_value=0, max_value=len(data) - 1))
            action = draw(st.sampled_from(["cut", "flip", "insert"]))
            if action == "cut":
                del data[at:]
                if not data:
                    break
            elif action == "flip":
                data[at] = draw(st.integers(min_value=0, max_value=255))
            else:
                data[at:at] = draw(st.sampled_from([b"[" * 200, b'"', b"\\", b"\xff\xfe", b"NaN", b"\x00", b"}"]))
        return bytes(data)

    bodies = (
        st.binary(max_size=200)
        | mangled()
        | st.integers(min_value=1, max_value=400_000).map(lambda n: b"[" * n)
        | st.sampled_from([b"", b"null", b"[]", b"{}", b'"x"', b"\xef\xbb\xbf{}", "{}".encode("utf-16")])
    )
    content_types = st.sampled_from(["application/json", "application/fhir+json", "text/plain", None])

    @settings(FUZZ, max_examples=QUOTAS["raw bodies"])
    @given(raw=bodies, content_type=content_types, path=st.sampled_from(list(SERVICE_OF_HOOK.values())))
    def run(raw: bytes, content_type: str | None, path: str) -> None:
        response = app.test_client().post(f"/cds-services/{path}", data=raw, content_type=content_type)
        SENT["raw bodies"] += 1
        assert response.status_code in HOOK_STATUSES

    run()
    assert SENT["raw bodies"] >= QUOTAS["raw bodies"]


def test_mutated_feedback(app):
    base = {
        "feedback": [
            {
                "card": "4e0a3a1e-3283-4575-ab82-028d55fe2719",
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": "e56e1945-20b3-4393-8503-a1a20fd73152"}],
                "outcomeTimestamp": "2026-10-20T10:05:31Z",
            },
            {
                "card": "9368d37b-283f-44a0-93ea-547cebab93ed",
                "outcome": "overridden",
                "overrideReason": {"reason": {"code": "d7ecf885", "system": "urn:x"}, "userComment": "c"},
                "outcomeTimestamp": "2026-10-20T00:00:00+02:00",
            },
        ]
    }

    @settings(FUZZ, max_examples=QUOTAS["mutated feedback"])
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        body: Any = copy.deepcopy(base)
        for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="mutations")):
            body = mutate(data, body)
        service = data.draw(st.sampled_from(list(SERVICE_OF_HOOK.values())), label="service")
        response = app.test_client().post(f"/cds-services/{service}/feedback", json=body)
        SENT["mutated feedback"] += 1
        assert response.status_code in {200, 400, 413}

    run()
    assert SENT["mutated feedback"] >= QUOTAS["mutated feedback"]


def test_forged_authorization_headers(make_app, tmp_path):
    ehr = TestIssuer("https://ehr.example.org/cds", "ES384")
    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps([{"iss": ehr.iss, "jwks": ehr.jwks}]))
    secured = make_app({"BRACHY_CDS_AUTH": "required", "BRACHY_CDS_TRUSTED_ISSUERS": str(issuers)})
    segment = st.one_of(
        st.binary(max_size=40).map(lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()),
        JSON_VALUES.map(lambda v: base64.urlsafe_b64encode(json.dumps(v).encode()).rstrip(b"=").decode()),
        st.sampled_from(["", "e30", "eyJhbGciOiJub25lIn0", ehr.sign("http://localhost/cds-services").split(".")[0]]),
    )
    header = st.one_of(
        st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=60),
        st.tuples(segment, segment, segment).map(lambda parts: "Bearer " + ".".join(parts)),
        st.tuples(segment, segment).map(lambda parts: "Bearer " + ".".join(parts)),
    )

    @settings(FUZZ, max_examples=QUOTAS["forged authorization"])
    @given(authorization=header, path=st.sampled_from(["/cds-services", "/cds-services/brachytherapy-planning-charge"]))
    def run(authorization: str, path: str) -> None:
        client = secured.test_client()
        if path == "/cds-services":
            response = client.get(path, headers={"Authorization": authorization})
        else:
            response = client.post(path, json=BASE_REQUESTS[0], headers={"Authorization": authorization})
        SENT["forged authorization"] += 1
        assert (response.status_code, response.get_data()) == (401, b"unauthorized")

    run()
    assert SENT["forged authorization"] >= QUOTAS["forged authorization"]


def test_odd_paths_and_methods(app):
    segment = st.text(st.characters(codec="utf-8", exclude_characters="/?#", exclude_categories=["Cs"]), max_size=20)

    @settings(FUZZ, max_examples=QUOTAS["odd paths and methods"])
    @given(
        method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
        segments=st.lists(segment | st.sampled_from(["cds-services", "feedback", "..", "%2e%2e"]), max_size=4),
    )
    def run(method: str, segments: list[str]) -> None:
        path = "/" + "/".join(quote(segment, safe="%") for segment in segments).lstrip("/")  # never "//host"
        response = app.test_client().open(path, method=method, json={} if method in ("POST", "PUT") else None)
        SENT["odd paths and methods"] += 1
        # 308: Werkzeug redirects a doubled slash to the single-slash route (a relative Location, same site).
        assert response.status_code in {200, 308, 400, 404, 405, 412, 413}

    run()
    assert SENT["odd paths and methods"] >= QUOTAS["odd paths and methods"]


def test_quotas_add_up_to_at_least_2000():
    assert sum(QUOTAS.values()) >= 2000
