"""FHIR-server faults, through the whole app, against the real test FHIR server (issue 4).

Every hook call here has no prefetch, so all data comes from ``fhirServer``: the real sekmet
server, or sekmet behind a proxy that misbehaves for the requests a case picks (what sekmet cannot
do itself: 5xx, broken JSON, HTML, endless paging, redirects, dribbling bodies...). Each case is
answered with 412 and the diagnostics code of the failure (or, when only optional data failed,
with the cards the rest of the data supports), never a 5xx (the checked client refuses any), never
a hang: the FHIR budget ends every wait. Outcomes are asserted, never timings; ``answered`` only
turns a hang into a failure after a minute. Retries: once, after a back-off, for reads and
searches that met a connection error, 5xx or 429, and never for 4xx answers.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask

from tests.fhir_server import (
    DelayProxy,
    FhirTestServer,
    LoopbackServer,
    ScriptedHandler,
    free_port,
    load_fixture,
    with_suffix,
)

SUFFIX = "-flt"
SERVICE = "/cds-services/brachytherapy-planning-charge"
PATIENT, ENCOUNTER = f"pat-int-1{SUFFIX}", f"enc-int-hdr{SUFFIX}"
OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "exception", "diagnostics": "database unavailable"}],
}
HANG_GUARD_SECONDS = 60
"""A fail-safe that turns a hang into a failure; the FHIR budget (1-3 s) ends every case long before."""


@pytest.fixture(scope="module")
def stored(fhir_server: FhirTestServer) -> dict[str, Any]:
    """The HDR tandem-and-ovoid encounter (tests/fixtures/integration), stored with ids ending in ``-flt``."""
    bundle = with_suffix(load_fixture("hdr-tandem-ovoid.json"), SUFFIX)
    fhir_server.load(bundle)
    return bundle


def hook(fhir_base: str, token: str, **changes: Any) -> dict[str, Any]:
    """An encounter-discharge call without prefetch: everything is fetched from ``fhir_base``."""
    body: dict[str, Any] = {
        "hook": "encounter-discharge",
        "hookInstance": "a3c5b1f2-6d7e-4f80-9a1b-2c3d4e5f6a70",
        "fhirServer": fhir_base,
        "fhirAuthorization": {"access_token": token, "token_type": "Bearer", "expires_in": 300, "scope": "x"},
        "context": {"userId": "Practitioner/dr-flt", "patientId": PATIENT, "encounterId": ENCOUNTER},
    }
    body.update(changes)
    return body


def answered(app: Flask, body: dict[str, Any]) -> Any:
    """POST the hook call from another thread; fail (instead of hanging) if no answer comes within a minute."""
    result: dict[str, Any] = {}

    def call() -> None:
        result["response"] = app.test_client().post(SERVICE, json=body)

    thread = threading.Thread(target=call, name="hook-call")
    thread.start()
    thread.join(HANG_GUARD_SECONDS)
    assert not thread.is_alive(), "the hook call hung"
    assert "response" in result, "the hook call raised instead of answering"
    return result["response"]


def diagnostics(response: Any) -> str:
    return response.get_json()["issue"][0]["diagnostics"]


def topics(response: Any) -> list[str]:
    return [card["source"]["topic"]["code"] for card in response.get_json()["cards"]]


# --- a proxy that misbehaves on purpose ---------------------------------------------------------


@dataclass
class Fault:
    """One misbehaviour: for requests whose FHIR path matches ``target``, ``act`` answers instead of sekmet."""

    name: str
    target: str
    act: Callable[[ScriptedHandler, int], None]
    """(handler, how many matching requests came before this one) -> writes the answer."""
    status: int = 412
    diagnostics: str | None = None
    calls: int | None = None
    """How many matching requests the service may send (None: not checked)."""
    budget: str = "3"
    max_response_bytes: str = str(20 * 1024 * 1024)
    notes: dict[str, Any] = field(default_factory=dict)


class FaultyProxy(DelayProxy):
    """sekmet behind a proxy that lets ``fault`` answer the requests it targets; the rest pass through."""

    def __init__(self, upstream: str, fault: Fault) -> None:
        self.fault = fault
        self.matched = 0
        super().__init__(upstream)

    def _forward(self, handler: ScriptedHandler) -> None:
        path = re.sub(r"^/fhir/?", "", handler.path)
        if re.search(self.fault.target, path):
            with self._lock:
                before, self.matched = self.matched, self.matched + 1
            self.fault.act(handler, before)
            return
        self.pass_through(handler)

    def pass_through(self, handler: ScriptedHandler) -> None:
        """Let the real server answer this request."""
        super()._forward(handler)

    def targeted(self) -> list[str]:
        return [p for p in self.paths() if re.search(self.fault.target, p)]


def send_status(status: int, body: Any = OUTCOME) -> Callable[[ScriptedHandler, int], None]:
    return lambda handler, _: handler.send_json(status, body)


def send_raw(data: bytes, content_type: str = "application/fhir+json") -> Callable[[ScriptedHandler, int], None]:
    return lambda handler, _: handler.send_bytes(200, data, content_type=content_type)


def fail_first(status: int) -> Callable[[ScriptedHandler, int], None]:
    """Fail the first request, then let the real server answer (for a retry to succeed)."""

    def act(handler: ScriptedHandler, before: int) -> None:
        if before == 0:
            handler.send_json(status, OUTCOME)
        else:
            handler.server.owner.pass_through(handler)  # type: ignore[attr-defined]

    return act


def endless_pages(handler: ScriptedHandler, before: int) -> None:
    """Every page links to a new next page."""
    next_url = f"{handler.server.owner.base_url}/Procedure?encounter={ENCOUNTER}&page={before + 1}"
    link = [{"relation": "next", "url": next_url}]
    handler.send_json(200, {"resourceType": "Bundle", "type": "searchset", "link": link, "entry": []})


def huge_page(handler: ScriptedHandler, _: int) -> None:
    """A valid searchset Bundle of about 300 KB (the cap in these cases is 64 KB)."""
    procedure = {"resourceType": "Procedure", "id": "p", "status": "completed", "note": [{"text": "x" * 1000}]}
    entry = {"resource": procedure}
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [entry] * 300}
    handler.send_bytes(200, json.dumps(bundle).encode())


def huge_page_without_length(handler: ScriptedHandler, _: int) -> None:
    """The same, streamed without a Content-Length until the server closes the connection."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/fhir+json")
    handler.end_headers()
    handler.wfile.write(b'{"resourceType": "Bundle", "type": "searchset", "entry": [')
    for _ in range(2000):
        handler.wfile.write(b'{"resource": {"resourceType": "Procedure", "status": "completed"}},' * 10)


def no_answer(handler: ScriptedHandler, _: int) -> None:
    handler.pause(30)  # returns as soon as the test closes the proxy


def dribble(handler: ScriptedHandler, _: int) -> None:
    handler.drip(json.dumps({"resourceType": "Encounter", "id": ENCOUNTER, "status": "finished"}).encode())


def cut_off(handler: ScriptedHandler, _: int) -> None:
    """Promise 5000 bytes, send 20, hang up."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/fhir+json")
    handler.send_header("Content-Length", "5000")
    handler.end_headers()
    handler.wfile.write(b'{"resourceType": "Bu')
    handler.wfile.flush()
    handler.close_connection = True


def invalid_procedure(handler: ScriptedHandler, _: int) -> None:
    entry = {"resource": {"resourceType": "Procedure", "id": "p-bad", "status": 7, "subject": "Patient/x"}}
    handler.send_json(200, {"resourceType": "Bundle", "type": "searchset", "entry": [entry]})


FAULTS = [
    Fault("500 on the Encounter read (retried once)", r"^Encounter/", send_status(500), diagnostics="fhir-server-error",
          calls=2),
    Fault("503 on the Procedure search (retried once)", r"^Procedure\?", send_status(503),
          diagnostics="fhir-server-error", calls=2),
    Fault("429 on the Device search (retried once)", r"^Device\?", send_status(429, {}),
          diagnostics="fhir-server-error", calls=2),
    Fault("403 on the Procedure search (not retried)", r"^Procedure\?", send_status(403),
          diagnostics="fhir-unauthorized", calls=1),
    Fault("401 on the Device search (not retried)", r"^Device\?", send_status(401),
          diagnostics="fhir-unauthorized", calls=1),
    Fault("404 on the Procedure search", r"^Procedure\?", send_status(404), diagnostics="fhir-bad-response", calls=1),
    Fault("OperationOutcome 400 on the Procedure search", r"^Procedure\?", send_status(400),
          diagnostics="fhir-bad-response", calls=1),
    Fault("OperationOutcome 200 instead of a Bundle", r"^Procedure\?", send_status(200),
          diagnostics="fhir-bad-response", calls=1),
    Fault("OperationOutcome 200 instead of the Encounter", r"^Encounter/", send_status(200),
          diagnostics="fhir-bad-response", calls=1),
    Fault("malformed JSON", r"^Procedure\?", send_raw(b'{"resourceType": "Bundle", "entry": ['),
          diagnostics="fhir-bad-response", calls=1),
    Fault("an HTML page", r"^Encounter/", send_raw(b"<html><body>Login</body></html>", "text/html"),
          diagnostics="fhir-bad-response", calls=1),
    Fault("JSON that is not FHIR", r"^Device\?", send_raw(b'{"devices": []}'), diagnostics="fhir-bad-response",
          calls=1),
    Fault("JSON nested 10,000 deep", r"^Encounter/", send_raw(b"[" * 10_000 + b"]" * 10_000),
          diagnostics="fhir-bad-response", calls=1),
    Fault("invalid FHIR in a Bundle", r"^Procedure\?", invalid_procedure, diagnostics="fhir-bad-response", calls=1),
    Fault("an endless next link", r"^Procedure\?", endless_pages, diagnostics="fhir-bad-response", calls=50),
    Fault("a huge page", r"^Procedure\?", huge_page, diagnostics="fhir-bad-response", calls=1,
          max_response_bytes="65536"),
    Fault("a huge page without Content-Length", r"^Procedure\?", huge_page_without_length,
          diagnostics="fhir-bad-response", calls=1, max_response_bytes="65536"),
    Fault("no answer at all", r"^Procedure\?", no_answer, diagnostics="fhir-timeout", calls=1, budget="1"),
    Fault("a body dribbled a byte at a time", r"^Encounter/", dribble, diagnostics="fhir-timeout", calls=1,
          budget="1"),
    Fault("a connection cut mid-body (retried once)", r"^Encounter/", cut_off, diagnostics="fhir-connection",
          calls=2),
]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda fault: fault.name)
def test_fault_is_answered_412_within_the_budget(stored, fhir_server, make_app, caplog, fault):
    with FaultyProxy(fhir_server.base_url, fault) as proxy:
        app = make_app(
            {
                "BRACHY_CDS_ALLOWED_FHIR_SERVERS": proxy.base_url,
                "BRACHY_CDS_FHIR_BUDGET_SECONDS": fault.budget,
                "BRACHY_CDS_FHIR_MAX_RESPONSE_BYTES": fault.max_response_bytes,
            }
        )
        response = answered(app, hook(proxy.base_url, fhir_server.token))
        assert response.status_code == fault.status, response.get_data(as_text=True)
        assert diagnostics(response) == f"brachy-cds:{fault.diagnostics}"
        if fault.calls is not None:
            assert len(proxy.targeted()) == fault.calls, proxy.paths()
        # The token went only to the fhirServer it came with, on every request.
        assert {r.headers.get("authorization") for r in proxy.requests} == {f"Bearer {fhir_server.token}"}
    access = [r.fields for r in caplog.records if r.name == "brachy_cds.access"]
    assert access[-1]["status"] == fault.status and access[-1]["hookInstance"] == hook("", "")["hookInstance"]
    assert not [r for r in caplog.records if r.name == "brachy_cds.error"]


def test_the_proxy_itself_is_transparent(stored, fhir_server, make_app):
    """Control: with a fault that targets nothing, the same call gets the full answer."""
    fault = Fault("none", r"^Nothing$", send_status(500))
    with FaultyProxy(fhir_server.base_url, fault) as proxy:
        app = make_app({"BRACHY_CDS_ALLOWED_FHIR_SERVERS": proxy.base_url})
        response = answered(app, hook(proxy.base_url, fhir_server.token))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert topics(response)[:2] == ["charge-suggestion", "bundling-conflict"]


@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_search_that_fails_once_succeeds_on_its_retry(stored, fhir_server, make_app, status):
    fault = Fault("fails once", r"^Procedure\?", fail_first(status))
    with FaultyProxy(fhir_server.base_url, fault) as proxy:
        app = make_app({"BRACHY_CDS_ALLOWED_FHIR_SERVERS": proxy.base_url})
        response = answered(app, hook(proxy.base_url, fhir_server.token))
        assert len(proxy.targeted()) == 2
    assert response.status_code == 200, response.get_data(as_text=True)
    assert topics(response)[0] == "charge-suggestion"


def test_no_retry_when_the_budget_has_no_room_for_it(stored, fhir_server, make_app):
    """A server that answers 503 only after most of the budget: the back-off would not fit, so no retry."""

    def slow_503(handler: ScriptedHandler, _: int) -> None:
        if not handler.pause(0.8):
            handler.send_json(503, OUTCOME)

    fault = Fault("slow 503", r"^Procedure\?", slow_503)
    with FaultyProxy(fhir_server.base_url, fault) as proxy:
        app = make_app({"BRACHY_CDS_ALLOWED_FHIR_SERVERS": proxy.base_url, "BRACHY_CDS_FHIR_BUDGET_SECONDS": "1"})
        response = answered(app, hook(proxy.base_url, fhir_server.token))
        assert response.status_code == 412
        assert len(proxy.targeted()) == 1


def test_connection_refused_is_a_412(stored, make_app):
    closed = f"http://127.0.0.1:{free_port()}/fhir"
    app = make_app({"BRACHY_CDS_ALLOWED_FHIR_SERVERS": closed})
    response = answered(app, hook(closed, "token-for-nobody-1234"))
    assert (response.status_code, diagnostics(response)) == (412, "brachy-cds:fhir-connection")


def test_a_wrong_token_on_the_real_server_is_a_412_without_retry(stored, fhir_server, delay_proxy, make_app):
    app = make_app({"BRACHY_CDS_ALLOWED_FHIR_SERVERS": delay_proxy.base_url})
    response = answered(app, hook(delay_proxy.base_url, "expired-token-0a1b2c3d"))
    assert (response.status_code, diagnostics(response)) == (412, "brachy-cds:fhir-unauthorized")
    assert "401" in response.get_json()["issue"][0]["details"]["text"]
    paths = delay_proxy.paths()
    assert len(paths) == len(set(paths))  # each first-wave request once: a refused token is not retried


def test_an_encounter_the_real_server_does_not_have_is_nothing_to_judge(stored, fhir_server, make_app):
    """404 on the Encounter read and no Procedures for it: nothing in scope, so no cards (no noise)."""
    app = make_app({"BRACHY_CDS_ALLOWED_FHIR_SERVERS": fhir_server.base_url})
    body = hook(fhir_server.base_url, fhir_server.token)
    body["context"]["encounterId"] = "enc-not-on-the-server"
    response = answered(app, body)
    assert (response.status_code, response.get_json()) == (200, {"cards": []})


def test_a_404_on_the_encounter_read_still_judges_its_procedures(stored, fhir_server, make_app):
    """The Encounter read is 404 but its Procedures are found: cards from the data that is there."""
    fault = Fault("encounter 404", r"^Encounter/", send_status(404))
    with FaultyProxy(fhir_server.base_url, fault) as proxy:
        app = make_app({"BRACHY_CDS_ALLOWED_FHIR_SERVERS": proxy.base_url})
        response = answered(app, hook(proxy.base_url, fhir_server.token))
        assert len(proxy.targeted()) == 1  # a 404 is an answer: not retried
    assert response.status_code == 200, response.get_data(as_text=True)
    assert topics(response)[0] == "charge-suggestion"


def test_a_missing_device_on_the_real_server_gives_the_count_missing_card(stored, fhir_server, make_app):
    """404s inside a Device search (ids the server lacks): cards from the data that is there."""
    procedure = next(e["resource"] for e in stored["entry"] if e["resource"]["resourceType"] == "Procedure")
    ghost = json.loads(json.dumps(procedure))
    ghost["id"] = f"proc-ghost{SUFFIX}"
    ghost["focalDevice"] = [{"manipulated": {"reference": f"Device/dev-not-stored{SUFFIX}"}}]
    ghost.pop("usedReference", None)
    ghost["encounter"] = {"reference": f"Encounter/enc-ghost{SUFFIX}"}
    encounter = next(e["resource"] for e in stored["entry"] if e["resource"]["resourceType"] == "Encounter")
    ghost_encounter = {**json.loads(json.dumps(encounter)), "id": f"enc-ghost{SUFFIX}"}
    fhir_server.load([ghost, ghost_encounter])
    app = make_app({"BRACHY_CDS_ALLOWED_FHIR_SERVERS": fhir_server.base_url})
    body = hook(fhir_server.base_url, fhir_server.token)
    body["context"]["encounterId"] = f"enc-ghost{SUFFIX}"
    response = answered(app, body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert "count-missing" in topics(response) and "charge-suggestion" not in topics(response)


def test_failing_optional_data_still_gives_the_cards_the_rest_supports(stored, fhir_server, make_app):
    """The Coverage search (payer note only) fails: the charge is still suggested, without the payer note."""
    fault = Fault("coverage 500", r"^Coverage\?", send_status(500))
    with FaultyProxy(fhir_server.base_url, fault) as proxy:
        app = make_app({"BRACHY_CDS_ALLOWED_FHIR_SERVERS": proxy.base_url})
        response = answered(app, hook(proxy.base_url, fhir_server.token))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert topics(response)[0] == "charge-suggestion" and "payer-note" not in topics(response)


def test_an_operation_outcome_as_prefetch_is_fetched_instead(stored, fhir_server, delay_proxy, make_app):
    """The EHR could not run the Procedure query and says so in prefetch (hapi-fhir#6836): fetch it ourselves."""
    app = make_app({"BRACHY_CDS_ALLOWED_FHIR_SERVERS": delay_proxy.base_url})
    body = hook(delay_proxy.base_url, fhir_server.token, prefetch={"procedures": OUTCOME})
    response = answered(app, body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert topics(response)[0] == "charge-suggestion"
    assert any(path.startswith("Procedure?encounter=") for path in delay_proxy.paths())


def test_a_redirect_to_another_host_is_not_followed(stored, fhir_server, make_app, loopback_server):
    elsewhere: LoopbackServer = loopback_server(lambda handler: handler.send_json(200, {"resourceType": "Encounter"}))

    def redirect(handler: ScriptedHandler, _: int) -> None:
        handler.send_json(302, {}, headers={"Location": f"{elsewhere.base_url}/Encounter/{ENCOUNTER}"})

    fault = Fault("redirect", r"^Encounter/", redirect)
    with FaultyProxy(fhir_server.base_url, fault) as proxy:
        app = make_app({"BRACHY_CDS_ALLOWED_FHIR_SERVERS": f"{proxy.base_url},{elsewhere.base_url}"})
        response = answered(app, hook(proxy.base_url, fhir_server.token))
    assert (response.status_code, diagnostics(response)) == (412, "brachy-cds:fhir-bad-response")
    assert elsewhere.requests == []  # not followed, and the token never went there


def test_a_next_link_to_another_server_is_not_followed(stored, fhir_server, make_app, loopback_server):
    elsewhere: LoopbackServer = loopback_server(lambda handler: handler.send_json(200, {"resourceType": "Bundle"}))

    def off_server_next(handler: ScriptedHandler, _: int) -> None:
        link = {"relation": "next", "url": f"{elsewhere.base_url}/ChargeItem?page=2"}
        handler.send_json(200, {"resourceType": "Bundle", "type": "searchset", "link": [link], "entry": []})

    fault = Fault("next elsewhere", r"^ChargeItem\?", off_server_next)
    with FaultyProxy(fhir_server.base_url, fault) as proxy:
        app = make_app({"BRACHY_CDS_ALLOWED_FHIR_SERVERS": f"{proxy.base_url},{elsewhere.base_url}"})
        response = answered(app, hook(proxy.base_url, fhir_server.token))
    assert (response.status_code, diagnostics(response)) == (412, "brachy-cds:fhir-bad-response")
    assert elsewhere.requests == []


def test_a_fhir_server_not_in_the_allowed_list_is_never_contacted(stored, fhir_server, delay_proxy, make_app):
    for allowed in ("https://ehr.example.org/fhir", delay_proxy.base_url + "x", delay_proxy.origin + "/fhir/R4"):
        app = make_app({"BRACHY_CDS_ALLOWED_FHIR_SERVERS": allowed})
        response = answered(app, hook(delay_proxy.base_url, fhir_server.token))
        assert (response.status_code, diagnostics(response)) == (412, "brachy-cds:prefetch-missing")
    assert delay_proxy.requests == []


def test_the_matrix_covers_the_issue_list():
    names = " | ".join(fault.name for fault in FAULTS)
    for kind in ("500", "403", "401", "404", "malformed JSON", "HTML", "not FHIR", "OperationOutcome", "endless next",
                 "huge page", "no answer", "dribbled"):
        assert kind in names, kind
