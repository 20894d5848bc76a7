"""Tests for fhir_mappings.extract: facts of a brachytherapy encounter from R4 and R5-shaped FHIR."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_mappings.extract import (
    encounter_facts,
    is_brachytherapy,
    missing_references,
    patient_encounter_refs,
    procedure_codes,
    procedure_device_refs,
)
from fhir_mappings.facts import (
    ChargeFact,
    ConsentFact,
    CoverageFact,
    DeviceFact,
    DocumentFact,
    EncounterFacts,
    ImagingStudyFact,
    LocationFact,
    OrganizationFact,
    PerformerFact,
    ProcedureFact,
)
from fhir_mappings.resources import InvalidResource, ResourcePool, parse_resource
from fhir_mappings.rules import load_rules

FIXTURES = Path(__file__).parent / "fixtures" / "fhir"
SCT = "http://snomed.info/sct"
CPT = "http://www.ama-assn.org/go/cpt"
NPI = "http://hl7.org/fhir/sid/us-npi"
URN_ENCOUNTER = "urn:uuid:5d9a1c3e-7f2b-4e8a-9c61-0b3f4a2d8e71"
URN_NEEDLE = "urn:uuid:9b7e4f21-6c3d-4a58-8e90-2f1d7c6b5a43"


@pytest.fixture(scope="module")
def rules():
    return load_rules()


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


def entry_resource(bundle: dict[str, Any], resource_id: str) -> dict[str, Any]:
    return next(e["resource"] for e in bundle["entry"] if e.get("resource", {}).get("id") == resource_id)


def pool_of(*items: str | dict[str, Any]) -> ResourcePool:
    pool = ResourcePool()
    for item in items:
        pool.add(load(item) if isinstance(item, str) else item)
    return pool


HDR_TANDEM = DeviceFact(
    ref="Device/dev-tandem", label="Fletcher tandem 4 cm", kind="applicator", type_label="Brachytherapy tandem"
)
HDR_RING = DeviceFact(
    ref="Device/dev-ring", label="Brachytherapy ring", kind="applicator", type_label="Brachytherapy ring"
)
HDR_AFTERLOADER = DeviceFact(
    ref="Device/dev-afterloader",
    label="ACME Turbo3000 Afterloader",
    kind=None,
    type_label="HDR remote afterloader",
    explicit_channels=2,
)
HDR_PROCEDURE_1 = ProcedureFact(
    ref="Procedure/proc-hdr-1",
    label="HDR cervix, fraction 1",
    status="completed",
    delivery="afterloading",
    start="2026-03-02T09:00:00-05:00",
    encounter_ref="Encounter/enc-hdr",
    device_refs=("Device/dev-tandem", "Device/dev-ring", "Device/dev-afterloader"),
    location_ref="Location/loc-hdr-suite",
    codes=((SCT, "1255724003"), (SCT, "394902000"), (SCT, "384692006")),
)
HDR_PROCEDURE_2 = ProcedureFact(
    ref="Procedure/proc-hdr-2",
    label="High dose brachytherapy",
    status="completed",
    delivery="afterloading",
    start="2026-03-09T09:30:00-05:00",
    encounter_ref="Encounter/enc-hdr",
    device_refs=("Device/dev-tandem", "Device/dev-ring", "Device/dev-cylinder", "Device/dev-afterloader"),
    location_ref="Location/loc-hdr-suite",
    codes=((SCT, "394902000"), (CPT, "77771")),
)
HDR_SUITE = LocationFact(
    ref="Location/loc-hdr-suite",
    label="Riverside General, Radiation Oncology HDR suite",
    identifiers=(("https://ehr.example.org/location-id", "RAD-HDR-1"),),
    pos_codes=("22",),
    role_codes=("HU",),
)
HDR_CHARGES = (
    ChargeFact(
        ref="ChargeItem/ci-plan",
        status="billable",
        code="77317",
        modifiers=("GC", "26"),
        occurrence="2026-03-02",
        quantity=1,
    ),
    ChargeFact(
        ref="ChargeItem/ci-77300",
        status="billed",
        code="77300",
        modifiers=("26",),
        occurrence="2026-03-01",
        quantity=1,
    ),
)
HDR_CT_SIMULATION = ProcedureFact(
    ref="Procedure/proc-ct-sim",
    label="Computerized axial tomography",
    status="completed",
    delivery=None,
    start="2026-03-02T08:30:00-05:00",
    encounter_ref="Encounter/enc-hdr",
    codes=((SCT, "77477000"),),
)
"""The CT done in the encounter: not brachytherapy, but imaging evidence for the documentation check."""
HDR_COVERAGES = (
    CoverageFact(
        ref="Coverage/cov-medicare",
        payors=(
            OrganizationFact(
                ref="Organization/org-cms",
                label="Centers for Medicare & Medicaid Services",
                identifiers=(("https://ehr.example.org/payer-id", "MCR-IL"),),
            ),
        ),
        type_codes=(("https://nahdo.org/sopt", "1"),),
    ),
    CoverageFact(
        ref="Coverage/cov-secondary",
        payors=(OrganizationFact(ref="Organization (display only)", label="Blue Cross Blue Shield of Illinois"),),
    ),
)


def test_r4_hdr_encounter_facts(rules):
    facts = encounter_facts(pool_of("hdr-cervix-r4"), "enc-hdr", "pat-hdr", rules)

    assert facts == EncounterFacts(
        encounter_ref="Encounter/enc-hdr",
        patient_ref="Patient/pat-hdr",
        encounter_class=("AMB",),
        procedures=(HDR_PROCEDURE_1, HDR_PROCEDURE_2),
        devices=(HDR_TANDEM, HDR_RING, HDR_AFTERLOADER),
        locations=(HDR_SUITE,),
        service_provider=OrganizationFact(
            ref="Organization/org-hosp", label="Riverside General Hospital", identifiers=((NPI, "1234567893"),)
        ),
        charges=HDR_CHARGES,
        coverages=HDR_COVERAGES,
        missing=("Device/dev-cylinder was not available",),
        related_procedures=(HDR_CT_SIMULATION,),
    )


def test_references_in_any_form_give_the_same_facts(rules):
    pool = pool_of("hdr-cervix-r4")

    assert encounter_facts(
        pool, "https://ehr.example.org/fhir/Encounter/enc-hdr", "Patient/pat-hdr", rules
    ) == encounter_facts(pool, "enc-hdr", "pat-hdr", rules)


def test_r5_ldr_encounter_facts(rules):
    facts = encounter_facts(pool_of("ldr-prostate-r5"), "Encounter/enc-ldr", "Patient/pat-ldr", rules)

    assert facts == EncounterFacts(
        encounter_ref="Encounter/enc-ldr",
        patient_ref="Patient/pat-ldr",
        encounter_class=("IMP",),
        procedures=(
            ProcedureFact(
                ref="Procedure/proc-ldr",
                label="LDR prostate seed implant",
                status="completed",
                delivery="manual",
                start="2026-04-20T08:15:00+02:00",
                encounter_ref="Encounter/enc-ldr",
                device_refs=("Device/seed-loose", "Device/seed-strand"),
                codes=((SCT, "169359004"), (CPT, "77778")),
            ),
        ),
        devices=(
            DeviceFact(
                ref="Device/seed-loose",
                label="Loose brachytherapy seed",
                kind="seed",
                type_label="Loose brachytherapy seed",
                explicit_sources=12,
            ),
            DeviceFact(
                ref="Device/seed-strand",
                label="I-125 stranded seeds",
                kind="seed",
                type_label="Stranded brachytherapy seed",
                explicit_sources=60,
            ),
        ),
        locations=(LocationFact(ref="Location/loc-or-3", label="University Hospital, OR 3", pos_codes=("21",)),),
        service_provider=OrganizationFact(
            ref="Organization/org-uni", label="University Hospital", identifiers=((NPI, "1245319599"),)
        ),
        charges=(
            ChargeFact(
                ref="ChargeItem/ci-ldr-plan",
                status="billable",
                code="77318",
                modifiers=("26",),
                occurrence="2026-04-20",
                quantity=1,
            ),
        ),
        coverages=(
            CoverageFact(
                ref="Coverage/cov-ldr",
                payors=(
                    OrganizationFact(ref="Organization/org-aetna", label="Aetna Medicare Advantage"),
                    OrganizationFact(ref="Organization/org-employer", label="Contoso Ltd."),
                ),
                type_codes=(("https://nahdo.org/sopt", "511"),),
            ),
        ),
    )


def test_contained_urn_absolute_and_history_references(rules):
    facts = encounter_facts(pool_of("reference-forms-r4"), URN_ENCOUNTER, "pat-ref", rules)

    assert facts == EncounterFacts(
        encounter_ref=URN_ENCOUNTER,
        patient_ref="Patient/pat-ref",
        encounter_class=("AMB",),
        procedures=(
            ProcedureFact(
                ref="Procedure/proc-ref",
                label="Brachytherapy",
                status="in-progress",
                delivery=None,
                start="2026-05-04",
                encounter_ref=URN_ENCOUNTER,
                device_refs=(
                    "Procedure/proc-ref#mesh",
                    "Device/dev-abs",
                    "Device/dev-hist",
                    URN_NEEDLE,
                    "Procedure/proc-ref#gone",
                ),
                codes=((SCT, "152198000"),),
            ),
        ),
        devices=(
            DeviceFact(
                ref="Procedure/proc-ref#mesh",
                label="Brachytherapy seed in mesh",
                kind="seed",
                type_label="Brachytherapy seed in mesh",
                explicit_sources=24,
            ),
            DeviceFact(
                ref="Device/dev-abs",
                label="Brachytherapy channel",
                kind="applicator",
                type_label="Brachytherapy channel",
            ),
            DeviceFact(
                ref="Device/dev-hist",
                label="Brachytherapy needle",
                kind="applicator",
                type_label="Brachytherapy needle",
            ),
            DeviceFact(
                ref=URN_NEEDLE, label="Interstitial needle 20 cm", kind="applicator", type_label="Brachytherapy needle"
            ),
        ),
        missing=("Procedure/proc-ref#gone was not available",),
    )


def test_electronic_brachytherapy_location_order_and_identifier_only_provider(rules):
    facts = encounter_facts(pool_of("ebt-skin-r4"), "enc-ebt", "pat-ebt", rules)

    assert facts == EncounterFacts(
        encounter_ref="Encounter/enc-ebt",
        patient_ref="Patient/pat-ebt",
        encounter_class=("AMB",),
        procedures=(
            ProcedureFact(
                ref="Procedure/proc-ebt-1",
                label="High dose rate electronic brachytherapy",
                status="completed",
                delivery="electronic",
                start="2026-06-01T14:00:00Z",
                encounter_ref="Encounter/enc-ebt",
                location_ref="Location/loc-skin-room",
                codes=((SCT, "438629002"), (CPT, "0394T")),
            ),
            ProcedureFact(
                ref="Procedure/proc-ebt-2",
                label="eBx skin, fraction 2",
                status="in-progress",
                delivery="electronic",
                start="2026-06-01T15:00:00Z",
                encounter_ref="Encounter/enc-ebt",
                location_ref="Location/loc-clinic",
                codes=((CPT, "0394T"),),
            ),
        ),
        locations=(
            LocationFact(
                ref="Location/loc-clinic",
                label="Lakeside Cancer Center, main clinic",
                identifiers=(("https://ehr.example.org/location-id", "LCC-MAIN"),),
                pos_codes=("11",),
            ),
            LocationFact(ref="Location/loc-skin-room", label="Skin brachytherapy room"),
        ),
        service_provider=OrganizationFact(
            ref=f"Organization?identifier={NPI}|1144221847",
            label="Lakeside Cancer Center",
            identifiers=((NPI, "1144221847"),),
        ),
        missing=("Location/loc-gone was not available",),
    )


def test_explicit_counts_are_summed_and_bad_values_noted(rules):
    facts = encounter_facts(pool_of("device-counts-r4"), "enc-counts", "pat-counts", rules)

    assert facts.devices == (
        DeviceFact(ref="Device/dev-listed", label="Template, plan A", explicit_channels=6),
        DeviceFact(ref="Device/dev-two-props", label="dev-two-props", explicit_channels=5, explicit_sources=1),
        DeviceFact(ref="Device/dev-half", label="dev-half"),
        DeviceFact(ref="Device/dev-negative", label="dev-negative", explicit_sources=5),
        DeviceFact(ref="Device/dev-no-value", label="dev-no-value"),
        DeviceFact(ref="Device/dev-decimal-whole", label="dev-decimal-whole", explicit_channels=8),
    )
    assert facts.missing == (
        "Encounter/enc-counts was not available",
        "Device/dev-half: the channels-used count 2.5 is not a whole number of 0 or more; ignored",
        "Device/dev-negative: the sources count -3 is not a whole number of 0 or more; ignored",
        "Device/dev-no-value: the channels-used count has no value",
    )


def test_facts_without_the_encounter_come_from_its_procedures(rules):
    bundle = load("hdr-cervix-r4")
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"]["resourceType"] != "Encounter"]

    facts = encounter_facts(pool_of(bundle), "enc-hdr", "pat-hdr", rules)

    assert facts == EncounterFacts(
        encounter_ref="Encounter/enc-hdr",
        patient_ref="Patient/pat-hdr",
        procedures=(HDR_PROCEDURE_1, HDR_PROCEDURE_2),
        devices=(HDR_TANDEM, HDR_RING, HDR_AFTERLOADER),
        locations=(HDR_SUITE,),
        charges=HDR_CHARGES,
        coverages=HDR_COVERAGES,
        missing=("Encounter/enc-hdr was not available", "Device/dev-cylinder was not available"),
        related_procedures=(HDR_CT_SIMULATION,),
    )


def test_worked_example_before_and_after_the_device_search(rules):
    prefetch = load("example-encounter-discharge-request")["prefetch"]
    pool = pool_of(*prefetch.values())

    assert missing_references(pool, "ex-enc", rules, patient_ref="ex-pat") == {
        "Device": {"ex-afterloader", *(f"ex-cath-{n}" for n in range(1, 9))},
        "Location": {"ex-loc"},
        "Organization": {"ex-center", "ex-payer"},
    }

    pool.add(load("example-devices-fetched"))
    facts = encounter_facts(pool, "ex-enc", "ex-pat", rules)

    catheters = tuple(
        DeviceFact(
            ref=f"Device/ex-cath-{n}",
            label="Brachytherapy catheter",
            kind="applicator",
            type_label="Brachytherapy catheter",
        )
        for n in range(1, 9)
    )
    assert facts == EncounterFacts(
        encounter_ref="Encounter/ex-enc",
        patient_ref="Patient/ex-pat",
        encounter_class=("AMB",),
        procedures=(
            ProcedureFact(
                ref="Procedure/ex-hdr-breast",
                label="High dose brachytherapy",
                status="completed",
                delivery="afterloading",
                start="2026-10-14T10:05:00Z",
                encounter_ref="Encounter/ex-enc",
                device_refs=(*(f"Device/ex-cath-{n}" for n in range(1, 9)), "Device/ex-afterloader"),
                codes=((SCT, "394902000"), (SCT, "113120007")),
            ),
        ),
        devices=(
            *catheters,
            DeviceFact(
                ref="Device/ex-afterloader", label="HDR remote afterloader", type_label="HDR remote afterloader"
            ),
        ),
        coverages=(
            CoverageFact(
                ref="Coverage/ex-cov",
                payors=(OrganizationFact(ref="Organization/ex-payer", label="Evergreen Health Plan"),),
            ),
        ),
        missing=("Location/ex-loc was not available", "Organization/ex-center was not available"),
    )


# is_brachytherapy and procedure links


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("completed", True),
        ("in-progress", True),
        ("not-done", False),
        ("entered-in-error", False),
        ("preparation", False),
        ("on-hold", False),
        ("stopped", False),
        ("unknown", False),
    ],
)
def test_only_completed_or_in_progress_procedures_count(rules, status, expected):
    raw = copy.deepcopy(entry_resource(load("hdr-cervix-r4"), "proc-hdr-2"))
    raw["status"] = status

    assert is_brachytherapy(parse_resource(raw), rules) is expected


@pytest.mark.parametrize(
    ("fixture", "resource_id", "expected"),
    [
        ("hdr-cervix-r4", "proc-hdr-1", True),  # mCODE modality extension only
        ("hdr-cervix-r4", "proc-ct-sim", False),
        ("ebt-skin-r4", "proc-ebt-2", True),  # electronic is found; the core gives it no planning code
        ("ldr-prostate-r5", "proc-ldr", True),
        ("patient-history-r4", "proc-month", True),  # CPT 77778 alone
    ],
)
def test_brachytherapy_codes(rules, fixture, resource_id, expected):
    assert is_brachytherapy(parse_resource(entry_resource(load(fixture), resource_id)), rules) is expected


def test_mcode_extension_with_another_url_does_not_count(rules):
    raw = copy.deepcopy(entry_resource(load("hdr-cervix-r4"), "proc-hdr-1"))
    raw["extension"][0]["url"] = "http://example.org/StructureDefinition/local-modality"

    procedure = parse_resource(raw)

    assert procedure_codes(procedure, rules) == ((SCT, "1255724003"),)
    assert not is_brachytherapy(procedure, rules)


def test_codes_that_disagree_leave_the_delivery_open(rules):
    bundle = load("hdr-cervix-r4")
    procedure = entry_resource(bundle, "proc-hdr-2")
    procedure["code"]["coding"].append({"system": CPT, "code": "77778"})

    facts = encounter_facts(pool_of(bundle), "enc-hdr", "pat-hdr", rules)

    assert [p.delivery for p in facts.procedures] == ["afterloading", None]


def test_device_refs_keep_devices_only_focal_devices_first(rules):
    pool = pool_of("reference-forms-r4", "hdr-cervix-r4")

    assert procedure_device_refs(pool.resolve("Procedure/proc-hdr-1"), pool) == [
        "Device/dev-tandem",
        "Device/dev-ring",
        "Device/dev-afterloader",  # Substance/sub-ir192 is not a Device
    ]
    assert procedure_device_refs(pool.resolve("Procedure/proc-ref"), pool) == [
        "Procedure/proc-ref#mesh",
        "Device/dev-abs",
        "Device/dev-hist",
        URN_NEEDLE,
        "Procedure/proc-ref#gone",  # contained Medication #ir192 is left out
    ]


def test_r5_used_ignores_concepts_and_typed_non_device_references(rules):
    procedure = copy.deepcopy(entry_resource(load("ldr-prostate-r5"), "proc-ldr"))
    procedure["used"].append(
        {
            "reference": {
                "reference": "urn:uuid:4c1d2e3f-0000-4000-8000-000000000001",
                "type": "BiologicallyDerivedProduct",
            }
        }
    )
    procedure["used"].append(
        {"reference": {"reference": "urn:uuid:4c1d2e3f-0000-4000-8000-000000000002", "type": "Device"}}
    )
    pool = pool_of(procedure)

    assert procedure_device_refs(pool.resolve("Procedure/proc-ldr"), pool) == [
        "Device/seed-loose",
        "Device/seed-strand",
        "urn:uuid:4c1d2e3f-0000-4000-8000-000000000002",
    ]


# patient-view without encounterId


def test_patient_encounters_in_the_look_back_window(rules):
    pool = pool_of("patient-history-r4")

    assert patient_encounter_refs(pool, "pat-hist", rules, since=dt.date(2026, 2, 1)) == [
        "Encounter/enc-edge",  # 2026-02-01, the first day of the window
        "Encounter/enc-r5",  # R5 occurrenceDateTime 2026-02-10 (local date as written)
        "Encounter/enc-two",  # earliest of its two procedures: 2026-02-25
        "Encounter/enc-month",  # "2026-03" counts as 2026-03-01
        "Encounter/enc-nodate",  # no procedure date: the Encounter's period start 2026-03-10
    ]


def test_an_encounter_whose_first_procedure_is_before_the_window_is_left_out(rules):
    pool = pool_of("patient-history-r4")

    assert patient_encounter_refs(pool, "Patient/pat-hist", rules, since=dt.date(2026, 2, 26)) == [
        "Encounter/enc-month",
        "Encounter/enc-nodate",
    ]


# missing_references


def test_missing_references_of_a_complete_pool_are_only_what_is_absent(rules):
    assert missing_references(pool_of("hdr-cervix-r4"), "enc-hdr", rules, patient_ref="pat-hdr") == {
        "Device": {"dev-cylinder"},
    }


def test_missing_references_cover_encounter_locations_and_payors(rules):
    assert missing_references(pool_of("ebt-skin-r4"), "enc-ebt", rules) == {"Location": {"loc-gone"}}
    assert missing_references(pool_of("ldr-prostate-r5"), "enc-ldr", rules) == {"Organization": {"org-aetna"}}
    assert missing_references(pool_of("device-counts-r4"), "enc-counts", rules) == {"Encounter": {"enc-counts"}}


def test_contained_and_urn_references_are_never_fetched(rules):
    assert missing_references(pool_of("reference-forms-r4"), URN_ENCOUNTER, rules) == {}


def test_absolute_references_are_fetched_only_from_the_same_server(rules):
    procedure = copy.deepcopy(entry_resource(load("search-page-1"), "proc-page-a"))
    procedure["focalDevice"] = [
        {"manipulated": {"reference": "https://ehr.example.org/fhir/Device/dev-same"}},
        {"manipulated": {"reference": "https://elsewhere.example.com/fhir/Device/dev-foreign"}},
    ]
    pool = pool_of(procedure)

    assert missing_references(pool, "enc-page", rules) == {"Encounter": {"enc-page"}}
    assert missing_references(pool, "enc-page", rules, fhir_server="https://ehr.example.org/fhir") == {
        "Encounter": {"enc-page"},
        "Device": {"dev-same"},
    }


# robustness: client data never makes extraction crash (contract 2: no client input gives a 5xx)


@settings(max_examples=60, deadline=None)
@given(reference=st.text(max_size=40), number=st.one_of(st.integers(), st.floats(allow_nan=False)))
def test_odd_references_and_counts_give_facts_or_invalid_resource(rules, reference, number):
    bundle = load("hdr-cervix-r4")
    encounter = entry_resource(bundle, "enc-hdr")
    encounter["serviceProvider"]["reference"] = reference
    encounter["location"][0]["location"]["reference"] = reference
    entry_resource(bundle, "proc-hdr-2")["focalDevice"][0]["manipulated"]["reference"] = reference
    entry_resource(bundle, "ci-plan")["context"]["reference"] = reference
    entry_resource(bundle, "cov-medicare")["payor"][0]["reference"] = reference
    entry_resource(bundle, "dev-afterloader")["property"][0]["valueQuantity"][0]["value"] = number
    try:
        pool = pool_of(bundle)
    except InvalidResource:
        return

    facts = encounter_facts(pool, "enc-hdr", "pat-hdr", rules)
    missing = missing_references(
        pool, "enc-hdr", rules, patient_ref="pat-hdr", fhir_server="https://ehr.example.org/fhir"
    )

    assert facts.encounter_ref == "Encounter/enc-hdr"
    assert all(isinstance(ids, set) for ids in missing.values())


# Documentation and teaching evidence (issue 3)

DOC_TYPE = "https://brachy-cds.org/fhir/CodeSystem/brachytherapy-documentation"
ROLE_CS = "https://brachy-cds.org/fhir/CodeSystem/brachytherapy-role"
NUCC = "http://nucc.org/provider-taxonomy"
SUBJECT = {"reference": "Patient/pat-ev"}


def evidence_bundle() -> dict[str, Any]:
    """An HDR encounter with R4 and R5-shaped evidence, and evidence of another encounter and patient."""
    def doc(doc_id: str, context: Any, status: str = "current", doc_status: str | None = "final") -> dict[str, Any]:
        resource = {"resourceType": "DocumentReference", "id": doc_id, "status": status,
                    "type": {"coding": [{"system": DOC_TYPE, "code": "plan-approval"}], "text": "Plan approval"},
                    "subject": SUBJECT, "context": context,
                    "content": [{"attachment": {"contentType": "application/pdf"}}]}
        if doc_status:
            resource["docStatus"] = doc_status
        return resource

    resources = [
        {"resourceType": "Encounter", "id": "enc-ev", "status": "finished", "class": {"code": "AMB"},
         "subject": SUBJECT},
        {"resourceType": "Procedure", "id": "hdr-ev", "status": "completed", "subject": SUBJECT,
         "code": {"coding": [{"system": SCT, "code": "394902000"}]}, "encounter": {"reference": "Encounter/enc-ev"},
         "performedDateTime": "2026-10-14",
         "performer": [
             {"function": {"coding": [{"system": ROLE_CS, "code": "resident"}]},
              "actor": {"reference": "Practitioner/res"}},
             {"actor": {"reference": "PractitionerRole/role-res"}},
             {"actor": {"reference": "PractitionerRole/role-elsewhere"}},
         ]},
        {"resourceType": "Procedure", "id": "ct-ev", "status": "completed", "subject": SUBJECT,
         "code": {"coding": [{"system": SCT, "code": "77477000"}], "text": "CT"},
         "encounter": {"reference": "Encounter/enc-ev"}},
        {"resourceType": "Procedure", "id": "ct-cancelled", "status": "not-done", "subject": SUBJECT,
         "code": {"coding": [{"system": SCT, "code": "77477000"}]}, "encounter": {"reference": "Encounter/enc-ev"}},
        {"resourceType": "PractitionerRole", "id": "role-res", "code": [{"coding": [{"system": NUCC,
                                                                                     "code": "390200000X"}]}]},
        {"resourceType": "ImagingStudy", "id": "img-ev", "status": "available", "subject": SUBJECT,
         "encounter": {"reference": "Encounter/enc-ev"}, "description": "CT pelvis"},
        {"resourceType": "ImagingStudy", "id": "img-void", "status": "entered-in-error", "subject": SUBJECT,
         "encounter": {"reference": "Encounter/enc-ev"}},
        {"resourceType": "ImagingStudy", "id": "img-other", "status": "available", "subject": SUBJECT,
         "encounter": {"reference": "Encounter/enc-other"}},
        doc("doc-r4", {"encounter": [{"reference": "Encounter/enc-ev"}]}),
        doc("doc-r5", [{"reference": "Encounter/enc-ev"}], doc_status=None),
        doc("doc-superseded", {"encounter": [{"reference": "Encounter/enc-ev"}]}, status="superseded"),
        doc("doc-other", {"encounter": [{"reference": "Encounter/enc-other"}]}),
        {"resourceType": "Consent", "id": "consent-r4", "status": "active", "patient": SUBJECT,
         "scope": {"coding": [{"code": "treatment"}]}, "category": [{"text": "Treatment consent"}]},
        {"resourceType": "Consent", "id": "consent-r5", "status": "active", "subject": SUBJECT},
        {"resourceType": "Consent", "id": "consent-draft", "status": "draft", "subject": SUBJECT},
        {"resourceType": "Consent", "id": "consent-other", "status": "active", "subject": {"reference": "Patient/x"}},
        {"resourceType": "Coverage", "id": "cov-ev", "status": "active", "order": 2, "beneficiary": SUBJECT,
         "payor": [{"display": "Cigna"}]},
        {"resourceType": "ChargeItem", "id": "ci-ev", "status": "billable", "subject": SUBJECT,
         "code": {"coding": [{"system": CPT, "code": "77317"}]}, "context": {"reference": "Encounter/enc-ev"},
         "quantity": {"value": 2}},
    ]
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def test_documentation_and_teaching_evidence_of_the_encounter(rules):
    facts = encounter_facts(pool_of(evidence_bundle()), "enc-ev", "pat-ev", rules, checked=["Consent", "Consent"])

    assert facts.checked == ("Consent",)
    assert facts.procedures[0].performers == (
        PerformerFact("Practitioner/res", function_codes=((ROLE_CS, "resident"),)),
        PerformerFact("PractitionerRole/role-res", role_codes=((NUCC, "390200000X"),)),
        PerformerFact("PractitionerRole/role-elsewhere"),
    )
    assert [(p.ref, p.codes) for p in facts.related_procedures] == [("Procedure/ct-ev", ((SCT, "77477000"),))]
    assert facts.imaging_studies == (ImagingStudyFact("ImagingStudy/img-ev", "CT pelvis", "available"),)
    assert facts.documents == (
        DocumentFact("DocumentReference/doc-r4", "Plan approval", ((DOC_TYPE, "plan-approval"),), "final"),
        DocumentFact("DocumentReference/doc-r5", "Plan approval", ((DOC_TYPE, "plan-approval"),), None),
    )
    assert facts.consents == (
        ConsentFact("Consent/consent-r4", "Treatment consent"),
        ConsentFact("Consent/consent-r5", "Consent/consent-r5"),
    )
    assert [(c.ref, c.order) for c in facts.coverages] == [("Coverage/cov-ev", 2)]
    assert [(c.ref, c.quantity) for c in facts.charges] == [("ChargeItem/ci-ev", 2)]


def test_performer_practitioner_roles_are_fetched_only_when_asked(rules):
    pool = pool_of(evidence_bundle())
    assert "PractitionerRole" not in missing_references(pool, "enc-ev", rules, patient_ref="pat-ev")
    assert missing_references(pool, "enc-ev", rules, patient_ref="pat-ev", performer_roles=True)[
        "PractitionerRole"
    ] == {"role-elsewhere"}
