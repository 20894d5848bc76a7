"""Tests for cds_service.gather against the real FHIR server (sekmet) and recording loopback proxies.

What reached the server is read from the ``delay_proxy`` request log, so "one Device search" and
"never contacted" are observed on the wire, not assumed.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest

from cds_service.config import Settings
from cds_service.discovery import PrefetchTemplate, ServiceDefinition, find_service
from cds_service.errors import BadRequest, DataUnavailable
from cds_service.fhir_client import FhirClient
from cds_service.gather import Gathered, Gatherer
from cds_service.hooks import HookRequest, parse_hook_request
from fhir_mappings import extract
from fhir_mappings.rules import RuleSet, load_rules
from tests.fhir_server import (
    TEST_TOKEN,
    DelayProxy,
    FhirTestServer,
    LoopbackServer,
    ScriptedHandler,
    load_fixture,
    with_suffix,
)

DISCHARGE = find_service("brachytherapy-planning-charge")
REVIEW = find_service("brachytherapy-planning-review")
TODAY = dt.date(2026, 3, 20)
"""The HDR fraction is on 2026-03-02: inside the default 30-day look-back from here."""
SUFFIX = "-g"
PATIENT, ENCOUNTER = f"pat-int-1{SUFFIX}", f"enc-int-hdr{SUFFIX}"
DEVICE_SEARCH = (
    f"Device?_id=dev-afterloader-1{SUFFIX},dev-int-ovoid-l{SUFFIX},dev-int-ovoid-r{SUFFIX},dev-int-tandem{SUFFIX}"
    "&_count=4"
)

GathererFactory = Callable[..., Gatherer]
ServerFactory = Callable[[Callable[[ScriptedHandler], None]], LoopbackServer]


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return load_rules()


@pytest.fixture(scope="module")
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="test-fhir")
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def case() -> dict[str, Any]:
    """The HDR tandem-and-ovoid encounter as a collection Bundle (ids end in ``-g``)."""
    return with_suffix(load_fixture("hdr-tandem-ovoid.json"), SUFFIX)


@pytest.fixture(scope="module")
def stored(case: dict[str, Any], fhir_server: FhirTestServer) -> dict[str, Any]:
    """The same case, stored once in the test FHIR server for this module."""
    fhir_server.load(case)
    return case


@pytest.fixture
def make_gatherer(rules: RuleSet, executor: ThreadPoolExecutor) -> Iterator[GathererFactory]:
    """Build Gatherers allowed to call the given FHIR bases (Settings overrides as keywords)."""
    clients: list[FhirClient] = []

    def build(*allowed: str, **overrides: Any) -> Gatherer:
        settings = replace(Settings(), allowed_fhir_servers=tuple(allowed), **overrides)
        client = FhirClient(settings)
        clients.append(client)
        return Gatherer(settings, rules, client, executor, today=lambda: TODAY)

    yield build
    for client in clients:
        client.close()


def resources(bundle: dict[str, Any], *types: str) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in bundle["entry"] if entry["resource"]["resourceType"] in types]


def searchset(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(items),
        "entry": [{"resource": item, "search": {"mode": "match"}} for item in items],
    }


def full_prefetch(case: dict[str, Any]) -> dict[str, Any]:
    """What a complete EHR prefetch for encounter-discharge holds (no Devices, Locations or Organizations)."""
    return {
        "encounter": resources(case, "Encounter")[0],
        "procedures": searchset(resources(case, "Procedure")),
        "charges": searchset(resources(case, "ChargeItem")),
        "coverage": searchset(resources(case, "Coverage")),
        "imaging": searchset(resources(case, "ImagingStudy")),
        "documents": searchset(resources(case, "DocumentReference")),
        "consent": searchset(resources(case, "Consent")),
    }


EVIDENCE_TYPES = {"ImagingStudy", "DocumentReference", "Consent"}
"""The optional documentation-evidence types of both services' prefetch templates."""


def hook_request(
    service: ServiceDefinition,
    *,
    prefetch: dict[str, Any] | None = None,
    fhir_server: str | None = None,
    token: str | None = None,
    encounter: str | None = ENCOUNTER,
    patient: str = PATIENT,
) -> HookRequest:
    """Parse a hook call body as the EHR would send it."""
    context = {"userId": "Practitioner/prac-7", "patientId": patient}
    if encounter:
        context["encounterId"] = encounter
    body: dict[str, Any] = {"hook": service.hook, "hookInstance": str(uuid.uuid4()), "context": context}
    if fhir_server:
        body["fhirServer"] = fhir_server
    if token:
        body["fhirAuthorization"] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "brachy-cds",
        }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return parse_hook_request(body, service)


def keys(gathered: Gathered, resource_type: str) -> list[str]:
    return sorted(gathered.pool.key_of(model) for model in gathered.pool.of_type(resource_type))


# Fetching from fhirServer


def test_without_prefetch_everything_is_fetched_in_two_waves(
    stored: dict, delay_proxy: DelayProxy, make_gatherer: GathererFactory, rules: RuleSet
):
    gatherer = make_gatherer(delay_proxy.base_url)
    gathered = gatherer.gather(DISCHARGE, hook_request(DISCHARGE, fhir_server=delay_proxy.base_url, token=TEST_TOKEN))

    assert gathered.encounter_refs == [f"Encounter/{ENCOUNTER}"]
    assert sorted(delay_proxy.paths()) == sorted(
        [
            f"Encounter/{ENCOUNTER}",
            f"Procedure?encounter={ENCOUNTER}",
            f"ChargeItem?patient={PATIENT}",
            f"Coverage?patient={PATIENT}&status=active",
            f"ImagingStudy?encounter={ENCOUNTER}",
            f"DocumentReference?encounter={ENCOUNTER}&status=current",
            f"Consent?patient={PATIENT}&status=active",
            DEVICE_SEARCH,
            f"Location?_id=loc-int-hdr{SUFFIX}&_count=1",
            f"Organization?_id=org-int-hosp{SUFFIX},org-int-medicare{SUFFIX}&_count=2",
        ]
    )
    assert {r.headers.get("authorization") for r in delay_proxy.requests} == {f"Bearer {TEST_TOKEN}"}
    assert keys(gathered, "Device") == [
        f"Device/dev-afterloader-1{SUFFIX}",
        f"Device/dev-int-ovoid-l{SUFFIX}",
        f"Device/dev-int-ovoid-r{SUFFIX}",
        f"Device/dev-int-tandem{SUFFIX}",
    ]
    assert keys(gathered, "Location") == [f"Location/loc-int-hdr{SUFFIX}"]
    assert keys(gathered, "ChargeItem") == [f"ChargeItem/ci-int-77300{SUFFIX}"]
    assert (gathered.fetch_count, gathered.rounds, gathered.notes) == (10, 1, [])
    assert gathered.checked >= {"Encounter", "Procedure", "ChargeItem", "Coverage", *EVIDENCE_TYPES}
    facts = extract.encounter_facts(gathered.pool, gathered.encounter_refs[0], f"Patient/{PATIENT}", rules)
    assert [(d.ref, d.kind) for d in facts.devices] == [
        (f"Device/dev-int-tandem{SUFFIX}", "applicator"),
        (f"Device/dev-int-ovoid-l{SUFFIX}", "applicator"),
        (f"Device/dev-int-ovoid-r{SUFFIX}", "applicator"),
        (f"Device/dev-afterloader-1{SUFFIX}", None),
    ]
    assert [loc.pos_codes for loc in facts.locations] == [("22",)]
    assert [payor.label for coverage in facts.coverages for payor in coverage.payors] == [
        "Centers for Medicare & Medicaid Services"
    ]
    assert facts.missing == ()


def hold_until(proxy: DelayProxy, held: str, until: str, seconds: float = 5.0) -> list[bool]:
    """Make the proxy hold requests whose FHIR path starts with ``held`` until one starting with ``until`` arrives.

    Returns a list that gets, for each held request, whether the awaited request came within ``seconds``.
    """
    arrived, outcomes, forward = threading.Event(), [], proxy.respond

    def respond(handler: ScriptedHandler) -> None:
        path = re.sub(r"^/fhir/?", "", handler.path)
        if path.startswith(until):
            arrived.set()
        if path.startswith(held):
            outcomes.append(arrived.wait(seconds))
        forward(handler)

    proxy.respond = respond
    return outcomes


@pytest.mark.parametrize("prefetched", [False, True], ids=["no prefetch", "prefetch without consent"])
def test_the_device_search_does_not_wait_for_a_slow_evidence_search(
    prefetched: bool, stored: dict, delay_proxy: DelayProxy, make_gatherer: GathererFactory
):
    # The Consent search is held until the Device search reaches the server: a gatherer that sent
    # the reference searches only after every prefetch fetch had answered would wait the full 5 s.
    outcomes = hold_until(delay_proxy, held="Consent?", until="Device?")
    prefetch = {k: v for k, v in full_prefetch(stored).items() if k != "consent"} if prefetched else None
    gatherer = make_gatherer(delay_proxy.base_url, fhir_budget_seconds=10.0)
    gathered = gatherer.gather(
        DISCHARGE, hook_request(DISCHARGE, prefetch=prefetch, fhir_server=delay_proxy.base_url, token=TEST_TOKEN)
    )

    assert outcomes == [True]
    assert [p for p in delay_proxy.paths() if p.startswith("Device")] == [DEVICE_SEARCH]
    assert len(keys(gathered, "Device")) == 4
    assert "Consent" in gathered.checked  # the held search was answered and read, not dropped


def test_a_type_is_searched_once_its_sources_are_all_in(
    stored: dict, delay_proxy: DelayProxy, make_gatherer: GathererFactory
):
    # The Encounter read is held until the Device search has left, so the Procedures and the Coverage
    # are in before the Encounter: the Organizations (serviceProvider and payor) must still be one search.
    outcomes = hold_until(delay_proxy, held=f"Encounter/{ENCOUNTER}", until="Device?")
    gatherer = make_gatherer(delay_proxy.base_url, fhir_budget_seconds=10.0)
    gathered = gatherer.gather(DISCHARGE, hook_request(DISCHARGE, fhir_server=delay_proxy.base_url, token=TEST_TOKEN))

    assert outcomes == [True]
    paths = delay_proxy.paths()
    assert sorted(p for p in paths if p.startswith(("Location", "Organization"))) == [
        f"Location?_id=loc-int-hdr{SUFFIX}&_count=1",
        f"Organization?_id=org-int-hosp{SUFFIX},org-int-medicare{SUFFIX}&_count=2",
    ]
    assert paths.index(DEVICE_SEARCH) < paths.index(f"Location?_id=loc-int-hdr{SUFFIX}&_count=1")
    assert (gathered.fetch_count, gathered.rounds, gathered.notes) == (10, 1, [])


def test_devices_missing_from_prefetch_are_fetched_by_id_in_one_search(
    stored: dict, delay_proxy: DelayProxy, make_gatherer: GathererFactory
):
    gatherer = make_gatherer(delay_proxy.base_url)
    request = hook_request(
        DISCHARGE, prefetch=full_prefetch(stored), fhir_server=delay_proxy.base_url, token=TEST_TOKEN
    )
    gathered = gatherer.gather(DISCHARGE, request)

    assert [p for p in delay_proxy.paths() if p.startswith("Device")] == [DEVICE_SEARCH]
    assert sorted(delay_proxy.paths()) == sorted(
        [
            DEVICE_SEARCH,
            f"Location?_id=loc-int-hdr{SUFFIX}&_count=1",
            f"Organization?_id=org-int-hosp{SUFFIX},org-int-medicare{SUFFIX}&_count=2",
        ]
    )
    assert len(keys(gathered, "Device")) == 4
    assert gathered.fetch_count == 3


def test_devices_the_server_does_not_have_are_asked_for_once_and_are_not_a_412(
    stored: dict, delay_proxy: DelayProxy, make_gatherer: GathererFactory
):
    prefetch = full_prefetch(stored)
    procedure = dict(prefetch["procedures"]["entry"][0]["resource"])
    procedure["focalDevice"] = [*procedure["focalDevice"], {"manipulated": {"reference": "Device/dev-never-stored"}}]
    prefetch["procedures"] = searchset([procedure])
    gatherer = make_gatherer(delay_proxy.base_url)
    gathered = gatherer.gather(
        DISCHARGE, hook_request(DISCHARGE, prefetch=prefetch, fhir_server=delay_proxy.base_url, token=TEST_TOKEN)
    )

    device_searches = [p for p in delay_proxy.paths() if p.startswith("Device")]
    assert len(device_searches) == 1
    assert "dev-never-stored" in device_searches[0]
    assert len(keys(gathered, "Device")) == 4


def test_a_prefetched_first_page_is_completed_from_its_next_link(
    fhir_server: FhirTestServer, delay_proxy: DelayProxy, make_gatherer: GathererFactory
):
    data = with_suffix(load_fixture("hdr-tandem-ovoid.json"), "-gp")
    extra = [
        {
            "resourceType": "ChargeItem",
            "id": f"ci-gp-{n}",
            "status": "billable",
            "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "77290"}]},
            "subject": {"reference": "Patient/pat-int-1-gp"},
        }
        for n in range(4)
    ]
    fhir_server.load([*resources(data, *_ALL_TYPES), *extra])
    with fhir_server.session.get(
        f"{delay_proxy.base_url}/ChargeItem?patient=pat-int-1-gp&_count=2", headers=fhir_server.auth_headers, timeout=10
    ) as response:
        first_page = response.json()
    assert any(link["relation"] == "next" for link in first_page["link"])
    prefetch = {**full_prefetch(data), "charges": first_page}
    del delay_proxy.requests[:]

    gatherer = make_gatherer(delay_proxy.base_url)
    request = hook_request(
        DISCHARGE,
        prefetch=prefetch,
        fhir_server=delay_proxy.base_url,
        token=TEST_TOKEN,
        encounter="enc-int-hdr-gp",
        patient="pat-int-1-gp",
    )
    gathered = gatherer.gather(DISCHARGE, request)

    assert keys(gathered, "ChargeItem") == sorted(
        ["ChargeItem/ci-int-77300-gp", *(f"ChargeItem/ci-gp-{n}" for n in range(4))]
    )
    page_requests = [p for p in delay_proxy.paths() if p.startswith("ChargeItem")]
    assert len(page_requests) == 2
    assert all("_offset=" in p for p in page_requests)


def test_patient_view_without_encounter_finds_encounters_in_the_look_back(
    stored: dict, delay_proxy: DelayProxy, make_gatherer: GathererFactory
):
    gatherer = make_gatherer(delay_proxy.base_url)
    request = hook_request(REVIEW, encounter=None, fhir_server=delay_proxy.base_url, token=TEST_TOKEN)
    gathered = gatherer.gather(REVIEW, request)

    assert gathered.encounter_refs == [f"Encounter/{ENCOUNTER}"]
    assert sorted(delay_proxy.paths()) == sorted(
        [
            f"Procedure?patient={PATIENT}",
            f"ChargeItem?patient={PATIENT}",
            f"Coverage?patient={PATIENT}&status=active",
            f"ImagingStudy?patient={PATIENT}",
            f"DocumentReference?patient={PATIENT}&status=current",
            f"Consent?patient={PATIENT}&status=active",
            f"Encounter?_id={ENCOUNTER}&_count=1",
            DEVICE_SEARCH,
            f"Location?_id=loc-int-hdr{SUFFIX}&_count=1",
            # The payor (from the Coverage) waits for the Encounter's serviceProvider: one search for both.
            f"Organization?_id=org-int-hosp{SUFFIX},org-int-medicare{SUFFIX}&_count=2",
        ]
    )
    assert gathered.rounds == 2
    assert keys(gathered, "Encounter") == [f"Encounter/{ENCOUNTER}"]


def test_patient_view_outside_the_look_back_judges_nothing_and_resolves_nothing(
    stored: dict, delay_proxy: DelayProxy, make_gatherer: GathererFactory
):
    gatherer = make_gatherer(delay_proxy.base_url, lookback_days=10)
    request = hook_request(REVIEW, encounter=None, fhir_server=delay_proxy.base_url, token=TEST_TOKEN)
    gathered = gatherer.gather(REVIEW, request)

    assert gathered.encounter_refs == []
    assert len(delay_proxy.requests) == 6  # the six prefetch queries, no reference resolution
    assert gathered.rounds == 0


# How each prefetch value is read (CDS Hooks P4/P5, contract 5.5)


@pytest.mark.parametrize(
    ("value", "fetched"),
    [
        (None, False),  # null: the EHR says there is nothing
        ({"resourceType": "Bundle", "type": "searchset", "total": 0}, False),  # an empty search result
        ("absent", True),  # the EHR did not run the template
        ({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}, True),
    ],
    ids=["null", "empty-bundle", "absent", "operation-outcome"],
)
def test_null_empty_absent_and_operation_outcome_prefetch(
    stored: dict, delay_proxy: DelayProxy, make_gatherer: GathererFactory, value: Any, fetched: bool
):
    prefetch = full_prefetch(stored)
    if value == "absent":
        del prefetch["procedures"]
    else:
        prefetch["procedures"] = value
    gatherer = make_gatherer(delay_proxy.base_url)
    gathered = gatherer.gather(
        DISCHARGE, hook_request(DISCHARGE, prefetch=prefetch, fhir_server=delay_proxy.base_url, token=TEST_TOKEN)
    )

    procedure_searches = [p for p in delay_proxy.paths() if p.startswith("Procedure")]
    assert procedure_searches == ([f"Procedure?encounter={ENCOUNTER}"] if fetched else [])
    assert keys(gathered, "Procedure") == ([f"Procedure/proc-int-hdr{SUFFIX}"] if fetched else [])


def test_a_null_encounter_read_is_not_fetched_again(
    stored: dict, delay_proxy: DelayProxy, make_gatherer: GathererFactory
):
    prefetch = {**full_prefetch(stored), "encounter": None}
    gatherer = make_gatherer(delay_proxy.base_url)
    gathered = gatherer.gather(
        DISCHARGE, hook_request(DISCHARGE, prefetch=prefetch, fhir_server=delay_proxy.base_url, token=TEST_TOKEN)
    )

    assert not any(p.startswith("Encounter") for p in delay_proxy.paths())
    assert keys(gathered, "Encounter") == []
    assert gathered.encounter_refs == [f"Encounter/{ENCOUNTER}"]


def test_a_value_for_a_template_whose_token_the_context_lacks_is_ignored(make_gatherer: GathererFactory):
    service = ServiceDefinition(
        id="test-review",
        hook="patient-view",
        title="t",
        description="d",
        prefetch=(
            PrefetchTemplate("procedures", "Procedure?patient={{context.patientId}}", True, "Procedure"),
            PrefetchTemplate("encounter-procedures", "Procedure?encounter={{context.encounterId}}", False, "Procedure"),
        ),
    )
    stray = {
        "resourceType": "Procedure",
        "id": "proc-stray",
        "status": "completed",
        "subject": {"reference": f"Patient/{PATIENT}"},
    }
    prefetch = {"procedures": searchset([]), "encounter-procedures": searchset([stray])}
    gathered = make_gatherer().gather(service, hook_request(service, prefetch=prefetch, encounter=None))

    assert keys(gathered, "Procedure") == []
    assert gathered.notes == [
        "Procedure data was not available: prefetch 'encounter-procedures' needs context.encounterId,"
        " which the request context lacks"
    ]


def test_an_invalid_prefetch_resource_is_a_bad_request(case: dict, make_gatherer: GathererFactory):
    prefetch = full_prefetch(case)
    broken = {k: v for k, v in prefetch["encounter"].items() if k != "status"}
    with pytest.raises(BadRequest) as caught:
        make_gatherer().gather(DISCHARGE, hook_request(DISCHARGE, prefetch={**prefetch, "encounter": broken}))
    assert caught.value.message.startswith("prefetch 'encounter': ")
    assert "Encounter is not valid FHIR R4 or R5" in caught.value.message


# When data cannot be had: 412 or a note


def test_no_allowed_server_and_missing_prefetch_is_a_412_and_nothing_is_sent(
    delay_proxy: DelayProxy, make_gatherer: GathererFactory
):
    gatherer = make_gatherer("https://ehr.example.org/fhir")
    with pytest.raises(DataUnavailable) as caught:
        gatherer.gather(DISCHARGE, hook_request(DISCHARGE, fhir_server=delay_proxy.base_url, token=TEST_TOKEN))
    assert caught.value.message == "prefetch 'encounter' is missing and no allowed fhirServer was given"
    assert caught.value.status == 412
    assert delay_proxy.requests == []


def test_devices_without_an_allowed_server_are_a_412(
    case: dict, delay_proxy: DelayProxy, make_gatherer: GathererFactory
):
    gatherer = make_gatherer()
    request = hook_request(DISCHARGE, prefetch=full_prefetch(case), fhir_server=delay_proxy.base_url, token=TEST_TOKEN)
    with pytest.raises(DataUnavailable) as caught:
        gatherer.gather(DISCHARGE, request)
    assert caught.value.message == (
        "Device resources referenced by the brachytherapy Procedures are not in prefetch"
        " and no allowed fhirServer was given"
    )
    assert delay_proxy.requests == []


def test_setting_and_payer_evidence_without_a_server_are_notes(case: dict, make_gatherer: GathererFactory):
    prefetch = full_prefetch(case)
    prefetch["procedures"] = searchset(resources(case, "Procedure", "Device"))
    del prefetch["coverage"]
    gathered = make_gatherer().gather(DISCHARGE, hook_request(DISCHARGE, prefetch=prefetch))

    assert gathered.notes == [
        "Coverage data was not available: prefetch 'coverage' is missing and no allowed fhirServer was given",
        "Location data was not available: not in prefetch and no allowed fhirServer was given",
        "Organization data was not available: not in prefetch and no allowed fhirServer was given",
    ]
    assert len(keys(gathered, "Device")) == 4
    assert gathered.fetch_count == 0


def test_a_first_page_without_an_allowed_server_is_a_412_for_a_required_key(case: dict, make_gatherer: GathererFactory):
    charges = searchset(resources(case, "ChargeItem"))
    charges["link"] = [{"relation": "next", "url": "https://ehr.example.org/fhir/ChargeItem?page=2"}]
    with pytest.raises(DataUnavailable) as caught:
        make_gatherer().gather(DISCHARGE, hook_request(DISCHARGE, prefetch={**full_prefetch(case), "charges": charges}))
    assert caught.value.message == (
        "prefetch 'charges' is only the first page of a paged search and no allowed fhirServer was given"
    )


def test_a_refused_token_is_a_412_naming_the_resource_type(
    stored: dict, delay_proxy: DelayProxy, make_gatherer: GathererFactory
):
    prefetch = full_prefetch(stored)
    prefetch["procedures"] = searchset(resources(stored, "Procedure", "Device", "Location", "Organization"))
    del prefetch["charges"]
    gatherer = make_gatherer(delay_proxy.base_url)
    request = hook_request(DISCHARGE, prefetch=prefetch, fhir_server=delay_proxy.base_url, token="expired-token")
    with pytest.raises(DataUnavailable) as caught:
        gatherer.gather(DISCHARGE, request)
    assert caught.value.message == "the FHIR server refused the access token (HTTP 401) while searching ChargeItem"
    assert caught.value.code == "fhir-unauthorized"
    assert "expired-token" not in str(caught.value.operation_outcome())


def test_optional_evidence_that_cannot_be_fetched_is_a_note_never_a_412(
    stored: dict, delay_proxy: DelayProxy, make_gatherer: GathererFactory
):
    # Payer and documentation evidence is optional: a refused fetch leaves it unchecked, the call goes on.
    prefetch = full_prefetch(stored)
    prefetch["procedures"] = searchset(resources(stored, "Procedure", "Device", "Location", "Organization"))
    for key in ("coverage", "imaging", "documents", "consent"):
        del prefetch[key]
    gatherer = make_gatherer(delay_proxy.base_url)
    request = hook_request(DISCHARGE, prefetch=prefetch, fhir_server=delay_proxy.base_url, token="expired-token")
    gathered = gatherer.gather(DISCHARGE, request)

    refused = "the FHIR server refused the access token (HTTP 401) while searching"
    assert sorted(gathered.notes) == sorted(
        [
            f"Coverage data was not available: fetching coverage failed ({refused} Coverage)",
            f"ImagingStudy data was not available: fetching imaging failed ({refused} ImagingStudy)",
            f"DocumentReference data was not available: fetching documents failed ({refused} DocumentReference)",
            f"Consent data was not available: fetching consent failed ({refused} Consent)",
        ]
    )
    assert gathered.checked.isdisjoint({"Coverage", *EVIDENCE_TYPES})
    assert {"Encounter", "Procedure", "ChargeItem"} <= gathered.checked
    assert "expired-token" not in " ".join(gathered.notes)


def test_invalid_optional_evidence_in_prefetch_is_a_note_not_a_400(case: dict, make_gatherer: GathererFactory):
    prefetch = full_prefetch(case)
    prefetch["procedures"] = searchset(resources(case, "Procedure", "Device", "Location", "Organization"))
    broken_consent = {"resourceType": "Consent", "status": "active", "patient": {"reference": f"Patient/{PATIENT}"}}
    prefetch["consent"] = searchset([broken_consent])  # R4 needs scope and category: invalid
    gathered = make_gatherer().gather(DISCHARGE, hook_request(DISCHARGE, prefetch=prefetch))

    assert [note.split(" (")[0] for note in gathered.notes] == [
        "Consent data was not available: prefetch 'consent' is not valid FHIR"
    ]
    assert "Consent" not in gathered.checked
    assert {"ImagingStudy", "DocumentReference"} <= gathered.checked


def test_a_slow_server_is_abandoned_with_a_412(stored: dict, delay_proxy: DelayProxy, make_gatherer: GathererFactory):
    delay_proxy.delay = 5.0
    gatherer = make_gatherer(delay_proxy.base_url, fhir_budget_seconds=0.5)
    with pytest.raises(DataUnavailable) as caught:
        gatherer.gather(DISCHARGE, hook_request(DISCHARGE, fhir_server=delay_proxy.base_url, token=TEST_TOKEN))
    assert caught.value.message == "FHIR data could not be gathered within 0.5 s"
    assert caught.value.code == "fhir-timeout"


def test_a_failing_server_is_a_412(case: dict, loopback_server: ServerFactory, make_gatherer: GathererFactory):
    server = loopback_server(lambda handler: handler.send_json(503, {"resourceType": "OperationOutcome"}))
    prefetch = {k: v for k, v in full_prefetch(case).items() if k != "charges"}
    # The referenced Devices, Location and Organizations come along (as with _include): only ChargeItem is fetched.
    prefetch["procedures"] = searchset(resources(case, "Procedure", "Device", "Location", "Organization"))
    gatherer = make_gatherer(server.base_url)
    with pytest.raises(DataUnavailable) as caught:
        gatherer.gather(DISCHARGE, hook_request(DISCHARGE, prefetch=prefetch, fhir_server=server.base_url))
    assert caught.value.message == "the FHIR server failed (HTTP 503) while searching ChargeItem"
    assert caught.value.code == "fhir-server-error"
    assert server.paths() == [f"ChargeItem?patient={PATIENT}"] * 2  # one retry


def test_invalid_fhir_from_the_server_is_a_412(
    case: dict, loopback_server: ServerFactory, make_gatherer: GathererFactory
):
    bad_charge = {"resourceType": "ChargeItem", "id": "ci-bad", "subject": {"reference": f"Patient/{PATIENT}"}}
    server = loopback_server(lambda handler: handler.send_json(200, searchset([bad_charge])))
    prefetch = {k: v for k, v in full_prefetch(case).items() if k != "charges"}
    prefetch["procedures"] = searchset(resources(case, "Procedure", "Device", "Location", "Organization"))
    gatherer = make_gatherer(server.base_url)
    with pytest.raises(DataUnavailable) as caught:
        gatherer.gather(DISCHARGE, hook_request(DISCHARGE, prefetch=prefetch, fhir_server=server.base_url))
    assert caught.value.message.startswith("the FHIR server sent invalid FHIR for charges (Bundle entry 0: ChargeItem")


_ALL_TYPES = ("Patient", "Organization", "Location", "Encounter", "Procedure", "Device", "Coverage", "ChargeItem")
