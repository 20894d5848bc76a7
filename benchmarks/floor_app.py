"""The floor: the least any correct answer to the benchmark's hook calls can cost on the same web stack.

A minimal Flask app, run under the same gunicorn configuration as brachy-cds (``serve_floor.py``).
It reads the same JSON body and makes only the FHIR calls no correct answer can avoid:

- the pages after a prefetched first page (the rest of the Procedures and ChargeItems), in parallel;
- with no prefetch at all (W3), the Procedure and ChargeItem searches of the encounter, in parallel;
- then the Devices the Procedures reference and the data lacks, in one ``Device?_id=`` search (R4 has
  no Procedure search parameter for devices), over one keep-alive ``requests.Session``.

It validates nothing, decides nothing and returns a fixed small ``cards`` response. Benchmark use only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urljoin

import requests
from flask import Flask, Response, request
from requests.adapters import HTTPAdapter

FHIR_JSON = "application/fhir+json"
TIMEOUT_SECONDS = 3.0
CARDS = json.dumps(
    {
        "cards": [
            {
                "uuid": "2f0b9a8e-1c55-4d4e-9a51-0c8c1f6a7b01",
                "summary": "Bill 77317-26: brachytherapy isodose plan",
                "indicator": "info",
                "source": {"label": "floor"},
            }
        ]
    },
    separators=(",", ":"),
)


def create_app() -> Flask:
    """Build the floor app: one keep-alive session and a small thread pool, as brachy-cds has."""
    app = Flask(__name__)
    session = requests.Session()
    session.trust_env = False
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=16, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="floor-fhir")

    def get(url: str, token: str | None) -> dict[str, Any]:
        headers = {"Accept": FHIR_JSON}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        response = session.get(url, headers=headers, timeout=TIMEOUT_SECONDS)
        response.raise_for_status()
        return response.json()

    def pages(first: dict[str, Any] | None, url: str | None, base: str, token: str | None) -> list[dict[str, Any]]:
        """Every page of a search: from a first page already in hand, or from the search URL."""
        bundles = [first] if first is not None else []
        next_url = url if first is None else _next(first, base)
        while next_url is not None and len(bundles) < 50:
            bundle = get(next_url, token)
            bundles.append(bundle)
            next_url = _next(bundle, base)
        return bundles

    @app.post("/cds-services/<service_id>")
    def hook(service_id: str) -> Response:
        body = json.loads(request.get_data())
        context = body["context"]
        base = body.get("fhirServer", "").rstrip("/")
        token = (body.get("fhirAuthorization") or {}).get("access_token")
        prefetch = body.get("prefetch") or {}
        procedures, charges = prefetch.get("procedures"), prefetch.get("charges")
        procedures_url = f"{base}/Procedure?encounter={context['encounterId']}"
        charges_url = f"{base}/ChargeItem?patient={context['patientId']}"
        procedure_chain = executor.submit(pages, procedures, None if procedures else procedures_url, base, token)
        charge_chain = executor.submit(pages, charges, None if charges else charges_url, base, token)
        procedure_pages = procedure_chain.result()
        charge_chain.result()
        found = list(_resources(procedure_pages))
        held = {f"Device/{r.get('id')}" for r in found if r.get("resourceType") == "Device"}
        wanted = sorted({ref for r in found if r.get("resourceType") == "Procedure" for ref in _device_refs(r)} - held)
        if wanted:
            ids = ",".join(ref.split("/", 1)[1] for ref in wanted)
            pages(None, f"{base}/Device?_id={ids}&_count={len(wanted)}", base, token)
        return Response(CARDS, 200, mimetype="application/json")

    @app.get("/healthz")
    def health() -> Response:
        return Response('{"status":"ok"}', 200, mimetype="application/json")

    return app


def _next(bundle: dict[str, Any], base: str) -> str | None:
    for link in bundle.get("link") or ():
        if link.get("relation") == "next":
            return urljoin(base + "/", link["url"])
    return None


def _resources(bundles: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for bundle in bundles:
        for entry in bundle.get("entry") or ():
            yield entry.get("resource") or {}


def _device_refs(procedure: dict[str, Any]) -> Iterable[str]:
    refs = [(focal.get("manipulated") or {}).get("reference") for focal in procedure.get("focalDevice") or ()]
    refs += [used.get("reference") for used in procedure.get("usedReference") or ()]
    return [ref for ref in refs if isinstance(ref, str) and ref.startswith("Device/")]
