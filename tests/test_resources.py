"""Tests for fhir_mappings.resources: parsing R4/R5, PHI-free errors, the pool and reference resolution."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pydantic
import pytest
from fhir.resources.R4B.patient import Patient as R4BPatient
from fhir.resources.R4B.procedure import Procedure as R4BProcedure

from fhir_mappings import resources
from fhir_mappings.resources import (
    USED_TYPES,
    InvalidResource,
    ResourcePool,
    as_reference,
    fhir_release,
    parse_resource,
    reference_id,
    reference_type,
)

FIXTURES = Path(__file__).parent / "fixtures" / "fhir"
URN_ENCOUNTER = "urn:uuid:5d9a1c3e-7f2b-4e8a-9c61-0b3f4a2d8e71"
URN_NEEDLE = "urn:uuid:9b7e4f21-6c3d-4a58-8e90-2f1d7c6b5a43"


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


def entry_resource(bundle: dict[str, Any], resource_id: str) -> dict[str, Any]:
    return next(e["resource"] for e in bundle["entry"] if e.get("resource", {}).get("id") == resource_id)


def pool_of(*names: str) -> ResourcePool:
    pool = ResourcePool()
    for name in names:
        pool.add(load(name))
    return pool


# parse_resource


def test_r4_procedure_parses_with_r4b():
    model = parse_resource(entry_resource(load("hdr-cervix-r4"), "proc-hdr-1"))

    assert isinstance(model, R4BProcedure)
    assert fhir_release(model) == "R4B"
    assert model.performedPeriod.start.isoformat() == "2026-03-02T09:00:00-05:00"


@pytest.mark.parametrize(
    ("resource_id", "module"),
    [
        ("enc-ldr", "fhir.resources.encounter"),
        ("loc-or-3", "fhir.resources.location"),
        ("proc-ldr", "fhir.resources.procedure"),
        ("seed-strand", "fhir.resources.device"),
        ("seed-loose", "fhir.resources.device"),
        ("ci-ldr-plan", "fhir.resources.chargeitem"),
        ("cov-ldr", "fhir.resources.coverage"),
    ],
)
def test_r5_shapes_are_parsed_with_r5_models(resource_id, module):
    model = parse_resource(entry_resource(load("ldr-prostate-r5"), resource_id))

    assert fhir_release(model) == "R5"
    assert type(model).__module__ == module


def test_r5_fallback_when_no_r5_only_key_gives_it_away():
    # category became 0..* in R5: R4B rejects the list, R5 accepts it.
    raw = {
        "resourceType": "Procedure",
        "id": "proc-cat",
        "status": "completed",
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "1287742003"}]}],
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "394902000"}]},
        "subject": {"reference": "Patient/p1"},
    }

    assert fhir_release(parse_resource(raw)) == "R5"


def test_shared_shape_stays_r4b_in_an_r5_bundle():
    assert fhir_release(parse_resource(entry_resource(load("ldr-prostate-r5"), "org-uni"))) == "R4B"


def test_invalid_resource_names_locations_and_types_but_no_values():
    raw = {
        "resourceType": "Procedure",
        "id": "proc-bad",
        "status": "completed",
        "subject": {"reference": 1234567},
        "performedDateTime": "Jane Doe born 1961-07-22",
        "note": [{"text": "MRN 00-998877"}],
        "Jane Doe's nickname": "Hedda",
    }

    with pytest.raises(InvalidResource) as caught:
        parse_resource(raw)

    assert caught.value.message == (
        "Procedure is not valid FHIR R4 or R5 (closest R4B: performedDateTime: value_error; "
        "subject.reference: string_type; <key>: extra_forbidden)"
    )
    assert caught.value.resource_type == "Procedure"
    assert caught.value.problems == (
        "performedDateTime: value_error",
        "subject.reference: string_type",
        "<key>: extra_forbidden",
    )
    text = str(caught.value)
    for secret in ("Jane", "1961", "1234567", "Hedda", "00-998877"):
        assert secret not in text


def test_invalid_resource_lists_at_most_eight_problems():
    raw = {"resourceType": "Device", **{f"unknown{n}": n for n in range(10)}}

    with pytest.raises(InvalidResource) as caught:
        parse_resource(raw)

    assert len(caught.value.problems) == 10
    assert caught.value.message.endswith("unknown7: extra_forbidden; ...)")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"id": "x", "status": "active"}, "resource without resourceType"),
        ({"resourceType": "Bogus", "id": "x"}, "unknown resourceType Bogus"),
        ({"resourceType": "Coding", "code": "x"}, "unknown resourceType Coding"),
        ({"resourceType": "Jane Doe"}, "resourceType is not a FHIR resource type name"),
        ({"resourceType": 7}, "resourceType is not a FHIR resource type name"),
        (["not", "an", "object"], "resource is not a JSON object"),
    ],
)
def test_resource_type_problems_raise_invalid_resource(raw, message):
    with pytest.raises(InvalidResource) as caught:
        parse_resource(raw)

    assert caught.value.message == message


def test_value_keys_inside_extensions_are_stripped_without_touching_the_input():
    raw = load("patient-extension-value-ext-r4")
    pristine = copy.deepcopy(raw)
    with pytest.raises(pydantic.ValidationError):
        R4BPatient.model_validate(raw)  # fhir.resources bug #204

    model = parse_resource(raw)

    assert raw == pristine
    assert [e.url for e in model.extension[0].extension] == ["ombCategory", "text"]
    assert model.extension[0].extension[1].valueString == "White"
    assert model.extension[1].valueCode == "F"
    assert model.gender__ext.id == "gender-element"  # a primitive's own _gender is legal and kept


# reference helpers


@pytest.mark.parametrize(
    ("reference", "expected_type", "expected_id"),
    [
        ("Device/dev-1", "Device", "dev-1"),
        ("Device/dev-1/_history/4", "Device", "dev-1"),
        ("https://ehr.example.org/fhir/Device/dev-1", "Device", "dev-1"),
        ("https://ehr.example.org/fhir/Device/dev-1/_history/4", "Device", "dev-1"),
        ("urn:uuid:0b3f4a2d-8e71-4e8a-9c61-5d9a1c3e7f2b", None, None),
        ("#mesh", None, None),
        ("Device?identifier=x", None, None),
        ("Device/a,b", None, None),
        ("fhir/Device/dev-1", None, None),
        ("", None, None),
        (None, None, None),
    ],
)
def test_reference_type_and_id(reference, expected_type, expected_id):
    assert (reference_type(reference), reference_id(reference)) == (expected_type, expected_id)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("ex-pat", "Patient/ex-pat"), ("Patient/ex-pat", "Patient/ex-pat"), ("urn:uuid:1-2", "urn:uuid:1-2")],
)
def test_as_reference_prefixes_bare_ids(value, expected):
    assert as_reference(value, "Patient") == expected


# ResourcePool


def test_pool_indexes_bundle_entries_in_insertion_order_and_skips_unused_types():
    pool = pool_of("hdr-cervix-r4")

    assert [pool.key_of(model) for model in pool.of_type("Procedure")] == [
        "Procedure/proc-hdr-1",
        "Procedure/proc-hdr-2",
        "Procedure/proc-hdr-void",
        "Procedure/proc-ct-sim",
    ]
    assert len(pool) == 20  # 21 entries, the Observation is skipped
    assert list(pool.of_type("Observation")) == []
    assert pool.resolve("Observation/obs-weight") is None


def test_pool_keeps_raw_json_and_full_url():
    pool = pool_of("hdr-cervix-r4")
    procedure = pool.resolve("Procedure/proc-hdr-2")

    assert pool.raw_of(procedure)["performedDateTime"] == "2026-03-09T09:30:00-05:00"
    assert pool.full_url_of(procedure) == "https://ehr.example.org/fhir/Procedure/proc-hdr-2"


@pytest.mark.parametrize(
    ("reference", "expected_key"),
    [
        ("Device/dev-abs", "Device/dev-abs"),
        ("https://ehr.example.org/fhir/Device/dev-abs", "Device/dev-abs"),
        ("https://mirror.example.net/fhir/Device/dev-abs", "Device/dev-abs"),
        ("Device/dev-hist/_history/3", "Device/dev-hist"),
        ("https://ehr.example.org/fhir/Device/dev-hist/_history/3", "Device/dev-hist"),
        (URN_NEEDLE, URN_NEEDLE),
        (URN_ENCOUNTER, URN_ENCOUNTER),
        ("urn:uuid:0e6f2b8d-3a41-4c9e-b7d2-6a5c1e9f3b20", "Procedure/proc-ref"),
        ("Procedure/proc-ref#mesh", "Procedure/proc-ref#mesh"),
    ],
)
def test_resolve_every_reference_form(reference, expected_key):
    pool = pool_of("reference-forms-r4")

    model = pool.resolve(reference)

    assert model is not None
    assert pool.key_of(model) == expected_key
    assert pool.key(reference) == expected_key


def test_resolve_contained_against_its_container():
    pool = pool_of("reference-forms-r4")
    procedure = pool.resolve("Procedure/proc-ref")

    mesh = pool.resolve("#mesh", container=procedure)

    assert mesh.type.coding[0].code == "1254768007"
    assert pool.resolve("#mesh", container="Procedure/proc-ref") is mesh
    assert pool.resolve("Procedure/proc-ref#mesh") is mesh
    assert pool.key_of(mesh) == "Procedure/proc-ref#mesh"
    assert pool.key("#mesh", container=procedure) == "Procedure/proc-ref#mesh"
    assert procedure.contained is None  # contained resources are parsed on their own


@pytest.mark.parametrize(
    ("reference", "container", "expected_key"),
    [
        ("Device/absent", None, "Device/absent"),
        ("https://other.example.com/fhir/Device/absent/_history/2", None, "Device/absent"),
        ("urn:uuid:00000000-0000-4000-8000-000000000000", None, "urn:uuid:00000000-0000-4000-8000-000000000000"),
        ("#gone", "Procedure/proc-ref", "Procedure/proc-ref#gone"),
        ("#ir192", "Procedure/proc-ref", "Procedure/proc-ref#ir192"),
        ("#mesh", None, "#mesh"),
        ("Device?identifier=abc", None, "Device?identifier=abc"),
    ],
)
def test_unresolvable_references_get_a_normalised_key(reference, container, expected_key):
    pool = pool_of("reference-forms-r4")

    assert pool.resolve(reference, container=container) is None
    assert pool.key(reference, container=container) == expected_key


@pytest.mark.parametrize("reference", [None, "", "#", "Device/nope", "#mesh"])
def test_resolve_returns_none_without_a_target(reference):
    assert pool_of("reference-forms-r4").resolve(reference) is None


def test_resources_without_id_are_keyed_by_full_url_or_position():
    pool = ResourcePool()
    pool.add(load("reference-forms-r4"))
    pool.add({"resourceType": "Device", "type": {"text": "spare applicator"}})

    assert pool.key_of(pool.resolve(URN_ENCOUNTER)) == URN_ENCOUNTER
    assert [pool.key_of(model) for model in pool.of_type("Device")] == [
        "Device/dev-abs",
        "Device/dev-hist",
        URN_NEEDLE,
        "Device (entry 5)",
    ]


def test_search_pages_are_merged_first_copy_wins():
    pool = pool_of("search-page-1", "search-page-2")

    assert [pool.key_of(model) for model in pool] == [
        "Procedure/proc-page-a",
        "Device/dev-page",
        "Procedure/proc-page-b",
    ]
    assert pool.resolve("Device/dev-page").status == "active"
    assert pool.resolve("Procedure/proc-deleted") is None
    assert list(pool.of_type("OperationOutcome")) == []


def test_each_resource_is_parsed_once(monkeypatch):
    calls: list[str] = []
    real_parse = resources.parse_resource

    def counting_parse(raw):
        calls.append(f"{raw['resourceType']}/{raw.get('id')}")
        return real_parse(raw)

    monkeypatch.setattr(resources, "parse_resource", counting_parse)
    pool = pool_of("search-page-1", "search-page-2", "search-page-2")
    for _ in range(3):
        pool.resolve("Device/dev-page")
        list(pool.of_type("Procedure"))

    assert calls == ["Procedure/proc-page-a", "Device/dev-page", "Procedure/proc-page-b"]


def test_single_operation_outcome_is_not_added():
    pool = ResourcePool()
    pool.add({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]})

    assert len(pool) == 0


def test_nested_bundles_are_flattened():
    batch_response = {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [
            {"resource": load("search-page-1"), "response": {"status": "200 OK"}},
            {"response": {"status": "404 Not Found"}},
        ],
    }
    pool = ResourcePool()
    pool.add(batch_response)

    assert [pool.key_of(model) for model in pool] == ["Procedure/proc-page-a", "Device/dev-page"]
    assert pool.resolve("https://ehr.example.org/fhir/Device/dev-page") is pool.resolve("Device/dev-page")


def test_a_bad_bundle_entry_adds_nothing_and_says_where():
    bundle = load("search-page-1")
    bundle["entry"][0]["resource"]["status"] = 5
    pool = ResourcePool()

    with pytest.raises(InvalidResource) as caught:
        pool.add(bundle)

    assert caught.value.message == (
        "Bundle entry 0: Procedure is not valid FHIR R4 or R5 (closest R4B: status: string_type)"
    )
    assert len(pool) == 0


def test_a_bad_contained_resource_is_reported_with_its_position():
    procedure = copy.deepcopy(entry_resource(load("reference-forms-r4"), "proc-ref"))
    procedure["contained"][0]["property"][0]["valueQuantity"] = "24"

    with pytest.raises(InvalidResource) as caught:
        ResourcePool().add(procedure)

    assert caught.value.message.startswith("resource: contained[0]: Device is not valid FHIR R4 or R5")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("Device/x", "resource is not a JSON object"),
        ({"resourceType": "Bundle", "entry": {"resource": {}}}, "resource: Bundle.entry is not a list"),
        ({"resourceType": "Bundle", "entry": ["x"]}, "Bundle entry 0 is not a JSON object"),
        (
            {"resourceType": "Bundle", "entry": [{"resource": {"id": "x"}}]},
            "Bundle entry 0: resource without resourceType",
        ),
        (
            {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": ["Device"]}}]},
            "Bundle entry 0: resourceType is not a FHIR resource type name",
        ),
    ],
)
def test_malformed_input_raises_invalid_resource(raw, message):
    with pytest.raises(InvalidResource) as caught:
        ResourcePool().add(raw)

    assert caught.value.message == message


def test_contained_entries_with_an_odd_resource_type_are_skipped():
    procedure = copy.deepcopy(entry_resource(load("reference-forms-r4"), "proc-ref"))
    procedure["contained"].append({"resourceType": {"not": "a name"}, "id": "odd"})
    pool = ResourcePool()
    pool.add(procedure)

    assert pool.resolve("Procedure/proc-ref#odd") is None
    assert pool.resolve("Procedure/proc-ref#mesh") is not None


def test_unused_types_are_skipped_even_when_invalid():
    pool = ResourcePool()
    pool.add({"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {"resourceType": "Observation"}}]})

    assert len(pool) == 0


def test_pool_types_can_be_widened():
    pool = ResourcePool(types=USED_TYPES | {"Observation"})
    pool.add(load("hdr-cervix-r4"))

    assert pool.resolve("Observation/obs-weight").valueQuantity.unit == "kg"


@pytest.mark.parametrize(
    ("reference", "container", "fhir_server", "expected"),
    [
        ("Device/dev-x", None, None, ("Device", "dev-x")),
        ("Device/dev-x/_history/2", None, None, ("Device", "dev-x")),
        ("https://ehr.example.org/fhir/Device/dev-x", "Device/dev-abs", None, ("Device", "dev-x")),
        ("https://ehr.example.org/fhir/Device/dev-x", None, None, None),
        ("https://ehr.example.org/fhir/Device/dev-x", None, "HTTPS://EHR.example.org/fhir/", ("Device", "dev-x")),
        ("https://other.example.com/fhir/Device/dev-x", "Device/dev-abs", "https://ehr.example.org/fhir", None),
        ("Device/dev-abs", None, None, None),
        ("urn:uuid:00000000-0000-4000-8000-000000000000", None, None, None),
        ("#gone", "Procedure/proc-ref", None, None),
        ("Device/a,b", None, None, None),
        (None, None, None, None),
    ],
)
def test_fetch_target(reference, container, fhir_server, expected):
    pool = pool_of("reference-forms-r4")

    assert pool.fetch_target(reference, container, fhir_server) == expected
