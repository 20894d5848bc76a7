"""End to end through the app against the real test FHIR server (sekmet on 127.0.0.1, bearer token).

Covers issue 2's integration list at the HTTP level: the no-prefetch fallback, paging, Devices
fetched by id in one search, a fhirServer outside the allowed list never contacted, a 401 from the
FHIR server answered with 412, and a slow server answered 412 within the time budget.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.fhir_server import FhirTestServer, load_fixture, with_suffix

EXAMPLES = Path(__file__).resolve().parent / "fixtures" / "fhir"  # example-*.json: copies of shared/examples
SERVICE = "/cds-services/brachytherapy-planning-charge"
REVIEW = "/cds-services/brachytherapy-planning-review"
SUFFIX = "-it"


def summaries(body: dict[str, Any]) -> list[str]:
    return [card["summary"] for card in body["cards"]]


def created_lines(body: dict[str, Any]) -> list[str]:
    out = []
    for card in body["cards"]:
        for suggestion in card.get("suggestions", []):
            for action in suggestion["actions"]:
                if action["type"] == "create":
                    resource = action["resource"]
                    mods = [e["valueCodeableConcept"]["coding"][0]["code"] for e in resource.get("extension", [])]
                    out.append("-".join([resource["code"]["coding"][0]["code"], *mods]))
    return out


@pytest.fixture(scope="module")
def stored(fhir_server: FhirTestServer) -> dict[str, Any]:
    """The HDR tandem-and-ovoid encounter (tests/fixtures/integration) stored on the FHIR server."""
    bundle = with_suffix(load_fixture("hdr-tandem-ovoid.json"), SUFFIX)
    fhir_server.load(bundle)
    return bundle


def hook(fhir_base: str, token: str | None, prefetch: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "encounter-discharge",
        "hookInstance": "7d1e0c55-3b0a-4c55-9a0e-4f3f3b3e1f01",
        "fhirServer": fhir_base,
        "context": {"userId": "Practitioner/dr-it", "patientId": f"pat-int-1{SUFFIX}",
                    "encounterId": f"enc-int-hdr{SUFFIX}"},
    }
    if token:
        body["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                                     "scope": "patient/*.read", "subject": "brachy-cds"}
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def test_no_prefetch_everything_is_fetched_with_the_token(stored, fhir_server, delay_proxy, make_app):
    app = make_app({"BRACHY_CDS_ALLOWED_FHIR_SERVERS": delay_proxy.base_url})
    response = app.test_client().post(SERVICE, json=hook(delay_proxy.base_url, fhir_server.token))
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    topics = [card["source"]["topic"]["code"] for card in body["cards"]]
    assert topics[:1] == ["charge-suggestion"] and "bundling-conflict" in topics
    assert created_lines(body) == ["77317-26"]
    assert body["cards"][0]["summary"].startswith("Bill 77317-26:")
    # Every request carried the bearer token, and the referenced Devices came in one search.
    assert all(r.headers.get("authorization") == f"Bearer {fhir_server.token}" for r in delay_proxy.requests)
    assert len(delay_proxy.requests) == 10  # 4 prefetch reads/searches, 3 evidence searches, 3 reference searches
    device_searches = [p for p in delay_proxy.paths() if p.startswith("Device")]
    assert len(device_searches) == 1 and device_searches[0].startswith("Device?_id=")


def test_the_shared_worked_example_fetches_devices_and_location(fhir_server, make_app):
    """reference example: 8 catheters fetched by id, freestanding centre POS 11 -> 77317 global."""
    request = json.loads((EXAMPLES / "example-encounter-discharge-request.json").read_text())
    devices = json.loads((EXAMPLES / "example-devices-fetched.json").read_text())
    location = {"resourceType": "Location", "id": "ex-loc", "status": "active",
                "name": "Lakeside Cancer Center, HDR room",
                "type": [{"coding": [{"system": "https://www.cms.gov/Medicare/Coding/place-of-service-codes/"
                                      "Place_of_Service_Code_Set", "code": "11"}]}]}
    center = {"resourceType": "Organization", "id": "ex-center", "name": "Lakeside Cancer Center"}
    fhir_server.load([entry["resource"] for entry in devices["entry"]] + [location, center])
    request["fhirServer"] = fhir_server.base_url
    request["fhirAuthorization"]["access_token"] = fhir_server.token
    app = make_app({"BRACHY_CDS_ALLOWED_FHIR_SERVERS": fhir_server.base_url})
    response = app.test_client().post(SERVICE, json=request)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert [card["source"]["topic"]["code"] for card in body["cards"]][:1] == ["charge-suggestion"]
    card = body["cards"][0]
    assert card["summary"] == "Bill 77317 (global): intermediate brachytherapy isodose plan, 8 channels on 2026-10-14"
    assert created_lines(body) == ["77317"]
    assert "Lakeside Cancer Center, HDR room" in card["detail"] and "Place of Service 11" in card["detail"]
    assert card["detail"].count("Brachytherapy catheter") == 8


def test_a_prefetched_first_page_is_completed_through_paging(stored, fhir_server, make_app):
    """The EHR sends only the first page of charges; the 77300 on page 2 is found by following ``next``."""
    extra = {"resourceType": "ChargeItem", "id": f"ci-int-77290{SUFFIX}", "status": "billable",
             "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "77290"}]},
             "subject": {"reference": f"Patient/pat-int-1{SUFFIX}"},
             "context": {"reference": f"Encounter/enc-int-hdr{SUFFIX}"}}
    fhir_server.load([extra])
    first_page = fhir_server.search(f"ChargeItem?patient=pat-int-1{SUFFIX}&_count=1&_sort=-_lastUpdated")
    assert [e["resource"]["id"] for e in first_page["entry"]] == [f"ci-int-77290{SUFFIX}"]
    assert any(link["relation"] == "next" for link in first_page["link"])
    prefetch = {"encounter": fhir_server.read(f"Encounter/enc-int-hdr{SUFFIX}"),
                "procedures": fhir_server.search(f"Procedure?encounter=enc-int-hdr{SUFFIX}"),
                "charges": first_page,
                "coverage": {"resourceType": "Bundle", "type": "searchset", "total": 0}}
    app = make_app({"BRACHY_CDS_ALLOWED_FHIR_SERVERS": fhir_server.base_url})
    response = app.test_client().post(SERVICE, json=hook(fhir_server.base_url, fhir_server.token, prefetch))
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert [card["source"]["topic"]["code"] for card in body["cards"]][:2] == ["charge-suggestion",
                                                                                 "bundling-conflict"]
    assert f"ChargeItem/ci-int-77300{SUFFIX}" in body["cards"][1]["detail"]


def test_a_fhir_server_outside_the_allowed_list_is_never_contacted(stored, fhir_server, delay_proxy, make_app):
    app = make_app({"BRACHY_CDS_ALLOWED_FHIR_SERVERS": "https://ehr.example.org/fhir"})
    response = app.test_client().post(SERVICE, json=hook(delay_proxy.base_url, fhir_server.token))
    assert response.status_code == 412
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "allowed" in outcome["issue"][0]["details"]["text"]
    assert delay_proxy.requests == []


def test_devices_not_in_prefetch_without_an_allowed_server_is_a_412(stored, fhir_server, make_app):
    prefetch = {
        "encounter": fhir_server.read(f"Encounter/enc-int-hdr{SUFFIX}"),
        "procedures": fhir_server.search(f"Procedure?encounter=enc-int-hdr{SUFFIX}"),
        "charges": {"resourceType": "Bundle", "type": "searchset", "total": 0},
        "coverage": {"resourceType": "Bundle", "type": "searchset", "total": 0},
    }
    response = make_app().test_client().post(SERVICE, json=hook(fhir_server.base_url, None, prefetch))
    assert response.status_code == 412
    assert "Device" in response.get_json()["issue"][0]["details"]["text"]


def test_a_401_from_the_fhir_server_is_a_412_without_the_token_in_the_answer(stored, fhir_server, make_app):
    app = make_app({"BRACHY_CDS_ALLOWED_FHIR_SERVERS": fhir_server.base_url})
    wrong = "wrong-token-0f9e8d"
    response = app.test_client().post(SERVICE, json=hook(fhir_server.base_url, wrong))
    assert response.status_code == 412
    text = response.get_data(as_text=True)
    assert "401" in text and wrong not in text


def test_a_slow_fhir_server_is_answered_412_within_the_budget(stored, fhir_server, delay_proxy, make_app):
    delay_proxy.delay = 3.0
    app = make_app({"BRACHY_CDS_ALLOWED_FHIR_SERVERS": delay_proxy.base_url, "BRACHY_CDS_FHIR_BUDGET_SECONDS": "0.5"})
    response = app.test_client().post(SERVICE, json=hook(delay_proxy.base_url, fhir_server.token))
    assert response.status_code == 412
    outcome = response.get_json()["issue"][0]
    assert outcome["diagnostics"] == "brachy-cds:fhir-timeout"


def test_patient_view_without_prefetch_or_encounter_finds_the_encounter(stored, fhir_server, make_app):
    request = hook(fhir_server.base_url, fhir_server.token)
    request["hook"] = "patient-view"
    del request["context"]["encounterId"]
    # 2026-03-02 procedure: judge as of 2026-03-20 so it is inside the 30-day look-back.
    app = make_app({"BRACHY_CDS_ALLOWED_FHIR_SERVERS": fhir_server.base_url}, clock=lambda: 1773964800.0)
    response = app.test_client().post(REVIEW, json=request)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert created_lines(response.get_json()) == ["77317-26"]


def test_prefetch_only_answer_needs_no_server(stored, fhir_server, make_app):
    """With every Device in the prefetch Bundle, no fhirServer is needed at all."""
    procedures = fhir_server.search(f"Procedure?encounter=enc-int-hdr{SUFFIX}")
    devices = fhir_server.search(f"Device?_id=dev-int-tandem{SUFFIX},dev-int-ovoid-l{SUFFIX},"
                                 f"dev-int-ovoid-r{SUFFIX},dev-afterloader-1{SUFFIX}")
    location = fhir_server.read(f"Location/loc-int-hdr{SUFFIX}")
    procedures = copy.deepcopy(procedures)
    procedures["entry"] = procedures.get("entry", []) + devices.get("entry", []) + [{"resource": location}]
    prefetch = {"encounter": fhir_server.read(f"Encounter/enc-int-hdr{SUFFIX}"), "procedures": procedures,
                "charges": {"resourceType": "Bundle", "type": "searchset", "total": 0},
                "coverage": {"resourceType": "Bundle", "type": "searchset", "total": 0}}
    body = hook(fhir_server.base_url, None, prefetch)
    del body["fhirServer"]
    response = make_app().test_client().post(SERVICE, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert created_lines(response.get_json()) == ["77317-26"]
