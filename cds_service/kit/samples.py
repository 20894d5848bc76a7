"""The shipped sample patients and ``brachy-cds load-samples`` (contract section 1).

The samples are FHIR R4 transaction Bundles in ``cds_service/samples/`` (package data), listed with
what each shows and the cards the service gives in ``index.json``. Loading is idempotent on any
server: the loader first reads what the server already holds (one ``Type?_id=a,b,c`` search per
resource type), then PUTs only the resources that are missing or differ, one transaction per sample.
A second run therefore writes nothing, even on servers that make a new version for an identical PUT.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from cds_service.kit.http import KitError, base_url, fhir_headers, new_session, request_json, same_origin

IDS_PER_SEARCH = 40
MAX_PAGES = 50
IGNORED_ON_COMPARE = ("meta", "text")
"""Server-managed members (version, lastUpdated, generated narrative) that do not count as a change."""


@dataclass(frozen=True)
class SampleInfo:
    """One sample as ``index.json`` describes it."""

    name: str
    file: str
    title: str
    shows: str
    patient: str
    encounter: str
    date: str
    setting: str
    payer: str
    named_payer: str | None
    needs_site_table: bool
    expect: dict[str, Any]

    def bundle(self) -> dict[str, Any]:
        """The sample's transaction Bundle."""
        return json.loads(_folder().joinpath(self.file).read_text(encoding="utf-8"))


def _folder() -> Any:
    return resources.files("cds_service").joinpath("samples")


def catalogue() -> list[SampleInfo]:
    """Every shipped sample, in README order."""
    index = json.loads(_folder().joinpath("index.json").read_text(encoding="utf-8"))
    return [
        SampleInfo(
            name=item["name"],
            file=item["file"],
            title=item["title"],
            shows=item["shows"],
            patient=item["patient"],
            encounter=item["encounter"],
            date=item["date"],
            setting=item["setting"],
            payer=item["payer"],
            named_payer=item["namedPayer"],
            needs_site_table=item["needsSiteTable"],
            expect=item["expect"],
        )
        for item in index["samples"]
    ]


def expected_cards_text(expect: dict[str, Any]) -> str:
    """The cards a sample promises, in a few words (the README table's last column)."""
    parts = []
    for card in expect["cards"]:
        text = f"`{card['topic']}`"
        lines = [" + ".join(f"**{charge}**" for charge in line) for line in card.get("charges", [])]
        actions = [f"delete `{target}`" for target in card.get("deletes", [])]
        if len(lines) == 1:
            actions.append(f"add {lines[0]}")
        elif lines:
            choice = "one recommended" if card.get("recommended") else "none recommended"
            actions.append(" or ".join(lines) + f", {choice}")
        if card["topic"] == "payer-note":
            actions.append(card["payer"])
        if card["topic"] == "count-missing":
            actions.append("no charge")
        parts.append(text + (": " + ", ".join(actions) if actions else ""))
    return "; ".join(parts) if parts else "none (`cards: []`)"


def markdown_table(samples: list[SampleInfo]) -> str:
    """The README's sample table: who, what it shows, payer, and the cards it gives."""
    rows = [
        "| patient / encounter | what it shows | payer | cards |",
        "| --- | --- | --- | --- |",
    ]
    for info in samples:
        who = f"`{info.patient}` / `{info.encounter}`"
        rows.append(f"| {who} | {info.shows} | {info.payer} | {expected_cards_text(info.expect)} |")
    return "\n".join(rows) + "\n"


def site_table_path() -> Path:
    """The example site table shipped with the samples (``BRACHY_CDS_SITES``; contract 5.1)."""
    return Path(str(_folder().joinpath("sites.yaml")))


@dataclass
class SampleLoad:
    """What loading one sample did to each of its resources."""

    name: str
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def line(self) -> str:
        total = len(self.created) + len(self.updated) + len(self.unchanged)
        if not self.created and not self.updated:
            return f"{self.name}: {total} resources, unchanged"
        return (
            f"{self.name}: {total} resources, {len(self.created)} created, {len(self.updated)} updated, "
            f"{len(self.unchanged)} unchanged"
        )


@dataclass
class LoadReport:
    """The outcome of one ``load-samples`` run; counts are of distinct resources."""

    fhir_server: str
    samples: list[SampleLoad]
    created: int
    updated: int
    unchanged: int

    def summary(self) -> str:
        total = self.created + self.updated + self.unchanged
        return (
            f"{len(self.samples)} samples, {total} resources in {self.fhir_server}: {self.created} created, "
            f"{self.updated} updated, {self.unchanged} unchanged"
        )


def load_samples(
    fhir_server: str,
    token: str | None = None,
    *,
    session: requests.Session | None = None,
    echo: Callable[[str], None] = lambda _line: None,
) -> LoadReport:
    """Put every sample into ``fhir_server``, writing only what is missing or different; raise KitError on failure."""
    server = base_url(fhir_server, "--fhir-server")
    owned = session is None
    http = session or new_session()
    try:
        items = [(info, info.bundle()) for info in catalogue()]
        wanted = _distinct_resources(items)
        current = _read_current(http, server, token, wanted)
        written: set[str] = set()
        loads = []
        for info, bundle in items:
            load = SampleLoad(info.name)
            entries = []
            for entry in bundle["entry"]:
                key = entry["request"]["url"]
                if key in written or _same(current.get(key), entry["resource"]):
                    load.unchanged.append(key)
                    continue
                (load.updated if key in current else load.created).append(key)
                entries.append(entry)
                written.add(key)
            if entries:
                _transaction(http, server, token, info.name, entries)
            echo(load.line())
            loads.append(load)
        created = sum(len(load.created) for load in loads)
        updated = sum(len(load.updated) for load in loads)
        return LoadReport(server, loads, created, updated, len(wanted) - created - updated)
    finally:
        if owned:
            http.close()


def _distinct_resources(items: list[tuple[SampleInfo, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Every resource by ``Type/id``; a resource shared by samples must be the same in each."""
    wanted: dict[str, dict[str, Any]] = {}
    for info, bundle in items:
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
            raise KitError(f"sample {info.name} is not a transaction Bundle")
        for entry in bundle["entry"]:
            resource, request = entry["resource"], entry["request"]
            key = f"{resource['resourceType']}/{resource['id']}"
            if request != {"method": "PUT", "url": key}:
                raise KitError(f"sample {info.name}: entry {key} is not a plain PUT {key}")
            if key in wanted and wanted[key] != resource:
                raise KitError(f"sample {info.name}: {key} differs from the same resource in another sample")
            wanted[key] = resource
    return wanted


def _read_current(
    http: requests.Session, server: str, token: str | None, wanted: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Fetch what the server holds under the samples' ids: one ``_id`` search per type and chunk."""
    by_type: dict[str, list[str]] = {}
    for key in wanted:
        resource_type, resource_id = key.split("/", 1)
        by_type.setdefault(resource_type, []).append(resource_id)
    current: dict[str, dict[str, Any]] = {}
    for resource_type, ids in sorted(by_type.items()):
        for start in range(0, len(ids), IDS_PER_SEARCH):
            chunk = ids[start : start + IDS_PER_SEARCH]
            url = f"{server}/{resource_type}?_id={quote(','.join(chunk), safe=',')}&_count={len(chunk)}"
            for resource in _search(http, server, url, token):
                if resource.get("resourceType") == resource_type and resource.get("id") in chunk:
                    current[f"{resource_type}/{resource['id']}"] = resource
    return current


def _search(http: requests.Session, server: str, url: str, token: str | None) -> Iterator[dict[str, Any]]:
    """Yield the resources of a search, following ``next`` links on the same server."""
    for _ in range(MAX_PAGES):
        bundle = _get_json(http, url, token)
        for entry in bundle.get("entry") or []:
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                yield entry["resource"]
        links = [link.get("url") for link in bundle.get("link") or [] if link.get("relation") == "next"]
        if not links or not isinstance(links[0], str):
            return
        url = links[0] if "://" in links[0] else f"{server}/{links[0].lstrip('/')}"
        if not same_origin(url, server):
            raise KitError(f"the FHIR server's next link leaves {server}; stopped")
    raise KitError(f"a search on {server} has more than {MAX_PAGES} pages; stopped")


def _get_json(http: requests.Session, url: str, token: str | None) -> dict[str, Any]:
    body = request_json(
        http,
        "GET",
        url,
        headers=fhir_headers(token),
        failed=f"reading {url} failed",
        not_json=f"reading {url} failed: the answer is not JSON",
        unreachable=_unreachable,
    )
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise KitError(f"reading {url} failed: the answer is not a Bundle")
    return body


def _unreachable(exc: requests.RequestException) -> str:
    return f"cannot reach the FHIR server ({exc.__class__.__name__}: {exc})"


def _same(stored: dict[str, Any] | None, sample: dict[str, Any]) -> bool:
    """True when the server's copy equals the sample once server-managed members are set aside."""
    if stored is None:
        return False

    def strip(resource: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in resource.items() if key not in IGNORED_ON_COMPARE}

    if strip(stored) != strip(sample):
        return False
    return "text" not in sample or stored.get("text") == sample["text"]


def _transaction(
    http: requests.Session, server: str, token: str | None, name: str, entries: list[dict[str, Any]]
) -> None:
    """POST one transaction of PUT entries; every entry must come back 200 or 201."""
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    body = request_json(
        http,
        "POST",
        server,
        json=bundle,
        headers=fhir_headers(token, content=True),
        failed=f"loading sample {name} failed",
        not_json=f"loading sample {name} failed: the answer is not JSON",
        unreachable=_unreachable,
    )
    answers = body.get("entry") if isinstance(body, dict) else None
    if not isinstance(answers, list) or len(answers) != len(entries):
        raise KitError(f"loading sample {name} failed: the transaction response does not answer every entry")
    for entry, answer in zip(entries, answers, strict=True):
        status = str(((answer or {}).get("response") or {}).get("status", ""))
        if not status.startswith(("200", "201")):
            raise KitError(f"loading sample {name} failed: {entry['request']['url']} answered {status or 'nothing'}")
