"""Build the benchmark workloads: FHIR data for the test server and the hook request bodies.

W1 is the canonical HDR tandem-and-ovoid encounter (``tests/fixtures/integration/hdr-tandem-ovoid.json``)
with its documentation evidence (planning CT, consent, plan approval, dosimetry record); W2 a large
encounter built with the scenario helpers (5 brachytherapy Procedures, 40 Devices, 3 ChargeItems).
Their prefetch is what an EHR would send: each of the service's own discovery templates run against
the FHIR server, so a template added to ``discovery.py`` is benchmarked too. W3 is W1 with no
prefetch at all, so everything is fetched (through a delay proxy).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from cds_service.discovery import find_service
from tests.fixtures.scenarios import build

REPO = Path(__file__).resolve().parents[1]
SERVICE_ID = "brachytherapy-planning-charge"
HOOK_PATH = f"/cds-services/{SERVICE_ID}"
W1_FIXTURE = REPO / "tests" / "fixtures" / "integration" / "hdr-tandem-ovoid.json"
W1_CONTEXT = {"userId": "Practitioner/prac-bench", "patientId": "pat-int-1", "encounterId": "enc-int-hdr"}
W2_CONTEXT = {"userId": "Practitioner/prac-bench", "patientId": "w2-pat", "encounterId": "w2-enc"}
W2_PAGE_SIZE = 2
"""The EHR's page size for W2's prefetch searches: 5 Procedures come as 3 pages, 3 ChargeItems as 2."""
FHIR_JSON = "application/fhir+json"
DOCUMENTATION_TYPE = "https://brachy-cds.org/fhir/CodeSystem/brachytherapy-documentation"


def w1_resources() -> list[dict[str, Any]]:
    """The canonical HDR tandem-and-ovoid encounter (12 resources, 4 Devices) and its documentation evidence."""
    bundle = json.loads(W1_FIXTURE.read_text(encoding="utf-8"))
    return [entry["resource"] for entry in bundle["entry"]] + w1_evidence()


def w1_evidence() -> list[dict[str, Any]]:
    """What a documented HDR fraction also has: planning CT, consent, signed plan approval, dosimetry record."""
    patient, encounter = {"reference": "Patient/pat-int-1"}, {"reference": "Encounter/enc-int-hdr"}

    def document(doc_id: str, code: str, title: str) -> dict[str, Any]:
        return {
            "resourceType": "DocumentReference",
            "id": doc_id,
            "status": "current",
            "docStatus": "final",
            "type": {"coding": [{"system": DOCUMENTATION_TYPE, "code": code}], "text": title},
            "subject": patient,
            "date": "2026-03-02T11:30:00Z",
            "content": [{"attachment": {"contentType": "application/pdf", "title": title}}],
            "context": {"encounter": [encounter]},
        }

    return [
        {
            "resourceType": "ImagingStudy",
            "id": "img-int-hdr",
            "status": "available",
            "subject": patient,
            "encounter": encounter,
            "started": "2026-03-02T09:10:00Z",
            "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}],
            "description": "CT pelvis, applicator position",
        },
        {
            "resourceType": "Consent",
            "id": "consent-int-hdr",
            "status": "active",
            "scope": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "treatment"}]
            },
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": patient,
            "dateTime": "2026-02-20T10:00:00Z",
        },
        document("doc-int-plan", "plan-approval", "HDR plan approval, fraction 1"),
        document("doc-int-dosimetry", "dosimetry-record", "HDR dosimetry record, fraction 1"),
    ]


def w2_resources() -> list[dict[str, Any]]:
    """A large HDR interstitial encounter: 5 Procedures over 39 needles and one afterloader, 3 charges."""
    needles = [build.device(f"w2-needle-{n:02d}", build.NEEDLE, f"Needle {n}") for n in range(1, 40)]
    afterloader = build.device("w2-afterloader", None, "HDR afterloader")
    procedures = [
        build.procedure(
            f"w2-proc-{p}",
            [build.HDR, build.INTERSTITIAL],
            focal=[f"Device/{d['id']}" for d in needles[p * 8 : p * 8 + 8]],
            used=["Device/w2-afterloader"],
            eid="w2-enc",
            pid="w2-pat",
            performed=f"2026-10-14T{9 + p:02d}:00:00Z",
            text=f"HDR interstitial template, needle group {p + 1}",
        )
        for p in range(5)
    ]
    charges = [build.charge(f"w2-ci-{code}", code, eid="w2-enc", pid="w2-pat") for code in ("77300", "77290", "77370")]
    coverage = {
        "resourceType": "Coverage",
        "id": "w2-cov",
        "status": "active",
        "beneficiary": {"reference": "Patient/w2-pat"},
        "payor": [{"reference": "Organization/w2-payer"}],
    }
    return [
        build.patient("w2-pat"),
        build.encounter("w2-enc", "w2-pat", locations=("w2-loc",), provider="w2-org"),
        build.location("w2-loc", "HDR suite", pos="22"),
        build.organization("w2-org"),
        build.organization("w2-payer", "Centers for Medicare & Medicaid Services", npi=None),
        *procedures,
        afterloader,
        *needles,
        *charges,
        coverage,
    ]


def prefetch_from_templates(
    session: requests.Session,
    base_url: str,
    token: str,
    context: Mapping[str, Any],
    *,
    page_size: int | None = None,
) -> dict[str, Any]:
    """Run each discovery template of the service against ``base_url``, as the EHR would for prefetch.

    With ``page_size`` every search returns only its first page (with a ``next`` link when there is more).
    """
    service = find_service(SERVICE_ID)
    assert service is not None
    prefetch: dict[str, Any] = {}
    for template in service.prefetch:
        query = template.render(context)
        if query is None:
            continue
        if page_size and "?" in query:
            query += f"&_count={page_size}"
        response = session.get(
            f"{base_url}/{query}", headers={"Authorization": f"Bearer {token}", "Accept": FHIR_JSON}, timeout=30
        )
        if response.status_code == 404:
            prefetch[template.key] = None
            continue
        response.raise_for_status()
        prefetch[template.key] = response.json()
    return prefetch


def hook_body(
    context: Mapping[str, Any], fhir_server: str, token: str, prefetch: Mapping[str, Any] | None
) -> dict[str, Any]:
    """An ``encounter-discharge`` call with ``fhirServer`` and its bearer token (and prefetch when given)."""
    body: dict[str, Any] = {
        "hook": "encounter-discharge",
        "hookInstance": "7c1e5a70-3b7e-4c1e-9a55-6f0d2b9e4a10",
        "context": dict(context),
        "fhirServer": fhir_server,
        "fhirAuthorization": {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "brachy-cds",
        },
    }
    if prefetch is not None:
        body["prefetch"] = dict(prefetch)
    return body


def request_bodies(fhir_base: str, delayed_base: str, token: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The hook bodies of W1-W3 (W1 and W2 data already stored at ``fhir_base``) and a few facts about them.

    W1 and W2 carry the prefetch the EHR builds from the service's templates; W3 has none and names
    ``delayed_base`` (the delay proxy) as its ``fhirServer``.
    """
    with requests.Session() as session:
        session.trust_env = False
        w1 = prefetch_from_templates(session, fhir_base, token, W1_CONTEXT)
        w2 = prefetch_from_templates(session, fhir_base, token, W2_CONTEXT, page_size=W2_PAGE_SIZE)
    bodies = {
        "W1": hook_body(W1_CONTEXT, fhir_base, token, w1),
        "W2": hook_body(W2_CONTEXT, fhir_base, token, w2),
        "W3": hook_body(W1_CONTEXT, delayed_base, token, None),
    }
    facts = {
        "prefetch keys": sorted(w1),
        "W1 prefetched resources": count_resources(w1),
        "W2 prefetched resources (first pages)": count_resources(w2),
    }
    return bodies, facts


def count_resources(prefetch: Mapping[str, Any]) -> int:
    """Resources in a prefetch object (a Bundle counts its entries, a resource counts one)."""
    total = 0
    for value in prefetch.values():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            total += len(value.get("entry") or [])
        elif value is not None:
            total += 1
    return total
