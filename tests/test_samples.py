"""The shipped sample patients (``cds_service/samples/``) and ``brachy-cds load-samples``.

- The files are what ``scripts/build_samples.py`` writes, valid FHIR R4 transaction Bundles of plain
  ``PUT Type/id`` entries whose references all resolve inside the Bundle (HAPI enforces that).
- Together they cover what issue 5 asks for: the three levels, every setting, every named payer, a
  missing count, a 77300 conflict, and the canonical cervix case.
- Each gives the cards its README row promises, from a full prefetch (no FHIR server involved).
- Loading into the real test FHIR server twice writes nothing the second time: same resource
  counts, same versionIds.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from fhir.resources.R4B.bundle import Bundle
from flask import Flask

from cds_service.cli import main
from cds_service.config import load_settings
from cds_service.discovery import find_service
from cds_service.kit.samples import SampleInfo, catalogue, load_samples, site_table_path
from tests.fhir_server import FhirTestServer
from tests.sample_cards import promised_cards, topic

REPO = Path(__file__).resolve().parents[1]
SAMPLES = catalogue()
NOW = dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC)
SERVICE_FOR_HOOK = {
    "encounter-discharge": "brachytherapy-planning-charge",
    "patient-view": "brachytherapy-planning-review",
}


def builder() -> Any:
    spec = importlib.util.spec_from_file_location("build_samples", REPO / "scripts" / "build_samples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def resources_of(info: SampleInfo) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in info.bundle()["entry"]]


def test_the_files_are_what_the_builder_writes(tmp_path: Path):
    build = builder()
    build.HERE = tmp_path
    build.main()
    shipped = REPO / "cds_service" / "samples"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in shipped.iterdir())
    for path in tmp_path.iterdir():
        assert path.read_text() == (shipped / path.name).read_text(), f"run scripts/build_samples.py ({path.name})"


def test_there_are_at_least_eight_samples_each_named_for_what_it_shows():
    assert len(SAMPLES) >= 8
    assert len({info.file for info in SAMPLES}) == len(SAMPLES)
    assert len({info.patient for info in SAMPLES}) == len(SAMPLES)
    for info in SAMPLES:
        assert info.file == info.name + ".json"
        assert info.patient.startswith("bcds-") and info.encounter == info.patient + "-enc"


def test_the_samples_cover_levels_settings_payers_and_problems():
    charges = {line for info in SAMPLES for card in info.expect["cards"] for lines in card["charges"] for line in lines}
    assert {line.split("-")[0] for line in charges} >= {"77316", "77317", "77318"}
    settings = {info.setting for info in SAMPLES}
    assert settings >= {
        "hospital outpatient (POS 22)",
        "off-campus hospital outpatient (POS 19)",
        "inpatient (POS 21)",
        "freestanding centre (POS 11), global",
        "freestanding centre (POS 11), split billing",
        "unknown",
    }
    assert {info.named_payer for info in SAMPLES} >= {
        "Medicare",
        "Aetna",
        "Blue Cross Blue Shield",
        "Cigna",
        "UnitedHealthcare",
    }
    topics = Counter(card["topic"] for info in SAMPLES for card in info.expect["cards"])
    assert topics["count-missing"] >= 1 and topics["bundling-conflict"] >= 1
    assert {"77318-26", "77318-TC"} <= charges and "77317" in charges
    assert any(not info.expect["cards"] for info in SAMPLES), "a sample whose charge is already right"


def test_the_canonical_sample_is_the_cervix_case_of_the_issue():
    info = SAMPLES[0]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for resource in resources_of(info):
        by_type.setdefault(resource["resourceType"], []).append(resource)
    patient = by_type["Patient"][0]
    assert patient["gender"] == "female"
    birth, day = dt.date.fromisoformat(patient["birthDate"]), dt.date.fromisoformat(info.date)
    assert (day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))) == 65
    procedures = {p["id"]: p for p in by_type["Procedure"]}
    brachy = procedures[f"{info.patient}-brachy"]
    assert brachy["reasonCode"][0]["coding"][0]["code"].startswith("C53")
    assert any(c["code"] == "394902000" for c in brachy["code"]["coding"])  # HDR
    types = [d["type"]["coding"][0]["code"] for d in by_type["Device"] if "type" in d]
    assert sorted(types) == ["1254776009", "1254777000", "1254777000"]  # tandem and two ovoids
    assert procedures[f"{info.patient}-ebrt"]["code"]["coding"][0]["code"] == "33195004"  # after external beam
    assert procedures[f"{info.patient}-anaesthesia"]["encounter"]["reference"] == f"Encounter/{info.encounter}"
    assert by_type["ImagingStudy"][0]["modality"][0]["code"] == "CT"
    assert by_type["Location"][0]["type"][0]["coding"][0]["code"] == "22"
    payers = [o["name"] for o in by_type["Organization"] if o["type"][0]["coding"][0]["code"] == "pay"]
    assert payers == ["Medicare Part B"]
    assert info.expect == {
        "cards": [
            {"topic": "charge-suggestion", "charges": [["77317-26"]], "recommended": True},
            {"topic": "payer-note", "charges": [], "payer": "Medicare"},
        ]
    }


@pytest.mark.parametrize("info", SAMPLES, ids=lambda info: info.name)
def test_a_sample_is_a_valid_r4_transaction_of_plain_puts_whose_references_resolve(info: SampleInfo):
    bundle = info.bundle()
    Bundle.model_validate(bundle)
    assert bundle["type"] == "transaction"
    keys = set()
    for entry in bundle["entry"]:
        resource = entry["resource"]
        key = f"{resource['resourceType']}/{resource['id']}"
        assert entry["request"] == {"method": "PUT", "url": key}  # no conditional create/update
        assert entry["fullUrl"].startswith("urn:uuid:")
        keys.add(key)
    assert len(keys) == len(bundle["entry"])
    for reference in references(bundle):
        assert reference in keys, f"{info.name}: {reference} is not in the Bundle"
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    assert patient["id"] == info.patient and patient["name"][0]["given"]  # the CDS Hooks sandbox shows given names


def references(node: Any) -> list[str]:
    if isinstance(node, list):
        return [ref for item in node for ref in references(item)]
    if not isinstance(node, dict):
        return []
    found = [node["reference"]] if isinstance(node.get("reference"), str) else []
    return found + [ref for key, value in node.items() if key != "reference" for ref in references(value)]


def test_a_resource_shared_by_samples_is_the_same_in_each():
    seen: dict[str, dict[str, Any]] = {}
    for info in SAMPLES:
        for resource in resources_of(info):
            key = f"{resource['resourceType']}/{resource['id']}"
            assert seen.setdefault(key, resource) == resource, key


def test_the_example_site_table_loads_and_names_the_split_billing_centre():
    settings = load_settings({"BRACHY_CDS_SITES": str(site_table_path())})
    (site,) = settings.sites
    assert (site.pos, site.billing) == ("11", "split")
    split = next(info for info in SAMPLES if info.needs_site_table)
    organizations = [r for r in resources_of(split) if r["resourceType"] == "Organization"]
    assert any(i["value"] == site.value for org in organizations for i in org.get("identifier", []))


# The promised cards, from prefetch alone (what an EHR that sends everything would get).


def full_prefetch(info: SampleInfo, hook: str) -> dict[str, Any]:
    """Every template of the service filled from the sample, Devices/Locations/Organizations riding along."""
    service = find_service(SERVICE_FOR_HOOK[hook])
    assert service is not None
    resources = resources_of(info)
    prefetch: dict[str, Any] = {}
    for template in service.prefetch:
        if template.resource_type == "Encounter":
            prefetch[template.key] = next(r for r in resources if r["resourceType"] == "Encounter")
            continue
        wanted = [r for r in resources if r["resourceType"] == template.resource_type]
        if template.resource_type == "Procedure":
            wanted += [r for r in resources if r["resourceType"] in ("Encounter", "Device", "Location", "Organization")]
        if template.resource_type == "Coverage":
            wanted += [r for r in resources if r["resourceType"] == "Organization"]
        prefetch[template.key] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [
                {"fullUrl": f"https://ehr.example.org/fhir/{r['resourceType']}/{r['id']}", "resource": r}
                for r in wanted
            ],
        }
    return prefetch


@pytest.fixture
def sample_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(
        {"BRACHY_CDS_SITES": str(site_table_path()), "BRACHY_CDS_LOOKBACK_DAYS": "3650"}, clock=NOW.timestamp
    )


@pytest.mark.parametrize("hook", ["encounter-discharge", "patient-view"])
def test_every_sample_gives_the_cards_its_readme_row_promises_from_prefetch(sample_app: Flask, hook: str):
    client = sample_app.test_client()  # a CheckedClient: every response is also checked for CDS Hooks conformance
    for info in SAMPLES:
        context = {"userId": "Practitioner/bcds-dr-nkemelu", "patientId": info.patient}
        if hook == "encounter-discharge":
            context["encounterId"] = info.encounter
        request = {"hook": hook, "hookInstance": f"sample-{info.patient}", "context": context,
                   "prefetch": full_prefetch(info, hook)}
        response = client.post(f"/cds-services/{SERVICE_FOR_HOOK[hook]}", json=request)
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
        for card in promised_cards(info, body):
            assert card["extension"]["org.brachy-cds"]["encounter"] == f"Encounter/{info.encounter}"


def test_without_the_site_table_the_split_sample_is_billed_global(make_app: Callable[..., Flask]):
    info = next(info for info in SAMPLES if info.needs_site_table)
    request = {
        "hook": "encounter-discharge",
        "hookInstance": "split-without-site-table",
        "context": {"userId": "Practitioner/x", "patientId": info.patient, "encounterId": info.encounter},
        "prefetch": full_prefetch(info, "encounter-discharge"),
    }
    body = make_app().test_client().post("/cds-services/brachytherapy-planning-charge", json=request).get_json()
    charge = next(card for card in body["cards"] if topic(card) == "charge-suggestion")
    resource = charge["suggestions"][0]["actions"][0]["resource"]
    assert resource["code"]["coding"][0]["code"] == "77318" and "extension" not in resource


# Loading into a real FHIR server.


def resource_state(server: FhirTestServer) -> dict[str, Any]:
    """Per sample resource type: the count on the server; per sample resource: its versionId."""
    wanted: dict[str, list[str]] = {}
    for info in SAMPLES:
        for resource in resources_of(info):
            wanted.setdefault(resource["resourceType"], []).append(resource["id"])
    counts, versions = {}, {}
    with requests.Session() as http:
        http.trust_env = False
        for resource_type, ids in sorted(wanted.items()):
            url = f"{server.base_url}/{resource_type}?_summary=count"
            counts[resource_type] = http.get(url, headers=server.auth_headers, timeout=10).json()["total"]
            for resource_id in sorted(set(ids)):
                url = f"{server.base_url}/{resource_type}/{resource_id}"
                read = http.get(url, headers=server.auth_headers, timeout=10)
                assert read.status_code == 200, f"{resource_type}/{resource_id}"
                versions[f"{resource_type}/{resource_id}"] = read.json()["meta"]["versionId"]
    return {"counts": counts, "versions": versions}


def test_load_samples_twice_leaves_the_same_resources_and_versions(fhir_server: FhirTestServer):
    runner = CliRunner()
    first = runner.invoke(main, ["load-samples", "--fhir-server", fhir_server.base_url, "--token", fhir_server.token])
    assert first.exit_code == 0, first.output
    after_first = resource_state(fhir_server)

    second = runner.invoke(main, ["load-samples", "--fhir-server", fhir_server.base_url, "--token", fhir_server.token])
    assert second.exit_code == 0, second.output
    assert resource_state(fhir_server) == after_first

    distinct = len(after_first["versions"])
    assert second.output.splitlines()[-1] == (
        f"{len(SAMPLES)} samples, {distinct} resources in {fhir_server.base_url}: 0 created, 0 updated, "
        f"{distinct} unchanged"
    )
    assert all(line.endswith("unchanged") for line in second.output.splitlines()[:-1])


def test_a_changed_resource_is_put_back_and_nothing_else(fhir_server: FhirTestServer):
    load_samples(fhir_server.base_url, fhir_server.token)
    info = SAMPLES[1]
    patient = next(r for r in resources_of(info) if r["resourceType"] == "Patient")
    edited = {**patient, "gender": "unknown"}
    url = f"{fhir_server.base_url}/Patient/{patient['id']}"
    with requests.Session() as http:
        http.trust_env = False
        assert http.put(url, json=edited, headers={**fhir_server.auth_headers, "Content-Type": "application/fhir+json"},
                        timeout=10).status_code == 200
        report = load_samples(fhir_server.base_url, fhir_server.token)
        assert (report.created, report.updated) == (0, 1)
        assert [load.updated for load in report.samples if load.updated] == [[f"Patient/{patient['id']}"]]
        assert http.get(url, headers=fhir_server.auth_headers, timeout=10).json()["gender"] == patient["gender"]


def test_load_samples_with_a_wrong_token_fails_in_one_line(fhir_server: FhirTestServer):
    result = CliRunner().invoke(main, ["load-samples", "--fhir-server", fhir_server.base_url, "--token", "wrong"])
    assert result.exit_code == 1
    assert "HTTP 401" in result.output and "Traceback" not in result.output


def test_load_samples_without_a_server_fails_in_one_line():
    from tests.fhir_server import free_port

    url = f"http://127.0.0.1:{free_port()}/fhir"
    result = CliRunner().invoke(main, ["load-samples", "--fhir-server", url])
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot reach the FHIR server")


def test_load_samples_refuses_a_url_that_is_not_http():
    result = CliRunner().invoke(main, ["load-samples", "--fhir-server", "ftp://example.org/fhir"])
    assert result.exit_code == 1
    assert "--fhir-server must be an absolute http(s) URL" in result.output


def test_load_samples_into_an_open_server_needs_no_token(open_fhir_server: FhirTestServer):
    report = load_samples(open_fhir_server.base_url)
    assert report.unchanged + report.created + report.updated == len(
        {f"{r['resourceType']}/{r['id']}" for info in SAMPLES for r in resources_of(info)}
    )
    assert load_samples(open_fhir_server.base_url).unchanged == report.unchanged + report.created + report.updated
