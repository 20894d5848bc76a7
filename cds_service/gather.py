"""Gather the FHIR data of one hook call: prefetch first, then the request's fhirServer, within one deadline.

CDS Hooks 2.0 "Prefetch" (reference/cds-hooks.md P4-P6): each template key of the service is either
absent, ``null`` (authoritative "no data"), a Bundle (possibly only a first page), an
OperationOutcome (the EHR could not run the query: fetch it ourselves) or a resource. What is
missing is fetched from ``fhirServer`` when contract 5.2 allows that server, with the bearer token
when given, in parallel through the shared executor. Then references the facts need (Devices of
the brachytherapy Procedures, Locations, Organizations, Encounters for patient-view) are resolved
in at most three rounds, one ``Type?_id=a,b,c`` search per type (contract 2: R4 has no Procedure
search parameter for devices).

412 (``DataUnavailable``) when data the decision needs can be had neither way, or a fetch of it
failed; its message names the prefetch key or resource type and why, never an id or a value.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, Executor, Future, wait
from dataclasses import dataclass, field
from typing import Any

from cds_service.config import Settings
from cds_service.discovery import PrefetchTemplate, ServiceDefinition, token_value
from cds_service.errors import BadRequest, DataUnavailable
from cds_service.fhir_client import Deadline, FhirClient, FhirError, FhirTimeout, next_link
from cds_service.hooks import HookRequest
from fhir_mappings import extract
from fhir_mappings.resources import InvalidResource, ResourcePool
from fhir_mappings.rules import RuleSet

log = logging.getLogger("brachy_cds.gather")

MAX_ROUNDS = 3
"""Reference-resolution rounds: Procedures -> Devices/Locations -> Organizations, with one spare."""
MAX_IDS_PER_SEARCH = 50
"""Ids in one ``Type?_id=`` search, so the URL stays well under the 8 KB servers accept."""
CRITICAL_TYPES = frozenset({"Device"})
"""Types whose absence makes the decision impossible (channel/source counts): 412, not a note."""
NO_SERVER = "no allowed fhirServer was given"
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_TYPE_NAME = re.compile(r"^[A-Z][A-Za-z]{0,63}$")


@dataclass
class Gathered:
    """The resources of one hook call, the encounters to judge, and PHI-free notes and timings."""

    pool: ResourcePool
    encounter_refs: list[str]
    notes: list[str] = field(default_factory=list)
    """What could not be had without making the decision impossible (e.g. "Location data was not available ...")."""
    fetch_count: int = 0
    """HTTP requests sent to fhirServer (every page counts; retries do not)."""
    rounds: int = 0
    """Reference-resolution rounds that fetched something."""
    fetch_ms: float = 0.0
    """Wall time spent waiting for fhirServer."""
    elapsed_ms: float = 0.0
    """Wall time of the whole gathering, prefetch checks and parsing included."""


@dataclass
class _Job:
    """One fetch: ``call`` runs on the executor and returns the resources or Bundles it got."""

    what: str
    """The prefetch key or resource type, for messages."""
    call: Callable[[], list[dict[str, Any]]]
    read_url: str | None = None
    """For a read: the resource's absolute URL (its fullUrl in the pool); None for a search."""

    def requests(self, results: list[dict[str, Any]]) -> int:
        """HTTP requests the job made: one for a read, one per page for a search."""
        return 1 if self.read_url is not None else max(1, len(results))


class Gatherer:
    """Build a ``Gathered`` for each hook call; long-lived and shared by all requests of the app."""

    def __init__(
        self,
        settings: Settings,
        rules: RuleSet,
        client: FhirClient,
        executor: Executor,
        *,
        today: Callable[[], dt.date] = dt.date.today,
        max_rounds: int = MAX_ROUNDS,
    ) -> None:
        self.settings = settings
        self.rules = rules
        self.client = client
        self.executor = executor
        self.today = today
        self.max_rounds = max_rounds

    def gather(self, service: ServiceDefinition, request: HookRequest) -> Gathered:
        """Return the pool and the encounters to judge; raise DataUnavailable (412) or BadRequest (400)."""
        return _Gathering(self, service, request).run()


class _Gathering:
    """The state of one gathering: deadline, pool, what was attempted, counters."""

    def __init__(self, gatherer: Gatherer, service: ServiceDefinition, request: HookRequest) -> None:
        self.g = gatherer
        self.service = service
        self.request = request
        self.started = time.monotonic()
        self.deadline = Deadline(gatherer.settings.fhir_budget_seconds)
        self.pool = ResourcePool()
        self.server = request.fhir_server if gatherer.client.allowed(request.fhir_server) else None
        self.token = request.access_token if self.server else None
        self.notes: list[str] = []
        self.attempted: dict[str, set[str]] = {}
        self.fetch_count = 0
        self.fetch_seconds = 0.0
        self.rounds = 0
        if request.fhir_server and not self.server:
            log.warning(
                "fhirServer is not allowed; it will not be contacted",
                extra={"fields": {"hookInstance": request.hook_instance, "service": service.id}},
            )

    def run(self) -> Gathered:
        jobs = [job for template in self.service.prefetch for job in self._prefetch(template)]
        self._fetch(jobs)
        patient_ref = f"Patient/{self.request.patient_id}"
        if self.request.encounter_id:
            encounter_refs = [f"Encounter/{self.request.encounter_id}"]
        else:
            since = self.g.today() - dt.timedelta(days=self.g.settings.lookback_days)
            encounter_refs = extract.patient_encounter_refs(self.pool, patient_ref, self.g.rules, since=since)
        self._resolve(encounter_refs, patient_ref)
        gathered = Gathered(
            pool=self.pool,
            encounter_refs=encounter_refs,
            notes=list(dict.fromkeys(self.notes)),
            fetch_count=self.fetch_count,
            rounds=self.rounds,
            fetch_ms=round(self.fetch_seconds * 1000, 1),
            elapsed_ms=round((time.monotonic() - self.started) * 1000, 1),
        )
        log.info(
            "fhir data gathered",
            extra={
                "fields": {
                    "hookInstance": self.request.hook_instance,
                    "service": self.service.id,
                    "fetches": gathered.fetch_count,
                    "rounds": gathered.rounds,
                    "resources": len(self.pool),
                    "fetchMs": gathered.fetch_ms,
                    "ms": gathered.elapsed_ms,
                }
            },
        )
        return gathered

    # Prefetch

    def _prefetch(self, template: PrefetchTemplate) -> list[_Job]:
        """Classify one template key (CDS Hooks P4/P5, contract 5.5) and return the fetches it needs."""
        key = template.key
        query = template.render(self.request.context)
        if query is None:
            # The context lacks a token the template needs: a value sent for the key is ignored
            # (the sandbox sends empty Bundles for such keys), and the query cannot be run either.
            lacking = [t for t in template.tokens() if token_value(t, self.request.context) is None]
            self._unavailable(template, f"needs {', '.join(lacking)}, which the request context lacks", server=False)
            return []
        prefetch = self.request.prefetch or {}
        is_read = "?" not in query
        if key in prefetch:
            value = prefetch[key]
            if value is None:
                if is_read:
                    self._attempt(*query.split("/", 1))  # authoritative "not found": never fetched
                return []
            resource_type = value.get("resourceType")
            if resource_type == "Bundle":
                self._add_prefetch(key, value)
                if next_link(value) is None:
                    return []
                if self.server is None:
                    self._unavailable(template, "is only the first page of a paged search")
                    return []
                server, token, deadline = self.server, self.token, self.deadline
                return [_Job(key, lambda: self.g.client.next_pages(server, value, token, deadline))]
            if resource_type == template.resource_type:
                self._add_prefetch(key, value)
                return []
            # An OperationOutcome (the EHR could not run the query) or a resource of another type:
            # the key does not hold what the template asks for, so fetch it as if it were absent.
            log.info(
                "prefetch value replaced by a fetch",
                extra={
                    "fields": {"hookInstance": self.request.hook_instance, "key": key, "got": _type_name(resource_type)}
                },
            )
        if self.server is None:
            self._unavailable(template, "is missing")
            return []
        server, token, deadline = self.server, self.token, self.deadline
        if is_read:
            resource_type, logical_id = query.split("/", 1)
            self._attempt(resource_type, logical_id)

            def read() -> list[dict[str, Any]]:
                resource = self.g.client.read(server, query, token, deadline)
                return [resource] if resource is not None else []

            return [_Job(key, read, read_url=f"{server.rstrip('/')}/{query}")]
        return [_Job(key, lambda: self.g.client.search(server, query, token, deadline))]

    def _add_prefetch(self, key: str, value: dict[str, Any]) -> None:
        try:
            self.pool.add(value)
        except InvalidResource as exc:
            raise BadRequest(f"prefetch '{key}': {exc.message}") from None

    def _unavailable(self, template: PrefetchTemplate, why: str, *, server: bool = True) -> None:
        """412 for a required key; a note for an optional one (its evidence is then simply missing)."""
        message = f"prefetch '{template.key}' {why}" + (f" and {NO_SERVER}" if server else "")
        if template.required:
            raise DataUnavailable(message, code="prefetch-missing")
        self.notes.append(f"{template.resource_type} data was not available: {message}")

    # Reference resolution

    def _resolve(self, encounter_refs: Iterable[str], patient_ref: str) -> None:
        """Fetch what the facts of each encounter reference but the pool lacks, one search per type a round."""
        encounter_refs = list(encounter_refs)
        for _ in range(self.g.max_rounds):
            wanted: dict[str, set[str]] = {}
            for encounter_ref in encounter_refs:
                missing = extract.missing_references(
                    self.pool, encounter_ref, self.g.rules, patient_ref=patient_ref, fhir_server=self.server
                )
                for resource_type, ids in missing.items():
                    fresh = {i for i in ids if _FHIR_ID.match(i)} - self.attempted.get(resource_type, set())
                    if fresh:
                        wanted.setdefault(resource_type, set()).update(fresh)
            if not wanted:
                return
            if self.server is None:
                self._references_unavailable(wanted)
                return
            jobs = []
            for resource_type in sorted(wanted):
                ids = sorted(wanted[resource_type])
                for start in range(0, len(ids), MAX_IDS_PER_SEARCH):
                    chunk = ids[start : start + MAX_IDS_PER_SEARCH]
                    self._attempt(resource_type, *chunk)
                    query = f"{resource_type}?_id={','.join(chunk)}&_count={len(chunk)}"
                    jobs.append(_Job(resource_type, self._search_job(self.server, query)))
            self.rounds += 1
            self._fetch(jobs)
        log.info(
            "reference resolution stopped after the last round",
            extra={"fields": {"hookInstance": self.request.hook_instance, "rounds": self.rounds}},
        )

    def _search_job(self, server: str, query: str) -> Callable[[], list[dict[str, Any]]]:
        token, deadline = self.token, self.deadline
        return lambda: self.g.client.search(server, query, token, deadline)

    def _references_unavailable(self, wanted: dict[str, set[str]]) -> None:
        for resource_type in sorted(wanted):
            if resource_type in CRITICAL_TYPES:
                raise DataUnavailable(
                    f"{resource_type} resources referenced by the brachytherapy Procedures are not in prefetch"
                    f" and {NO_SERVER}",
                    code="prefetch-missing",
                )
            self.notes.append(f"{resource_type} data was not available: not in prefetch and {NO_SERVER}")

    def _attempt(self, resource_type: str, *ids: str) -> None:
        self.attempted.setdefault(resource_type, set()).update(ids)

    # Running fetches

    def _fetch(self, jobs: list[_Job]) -> None:
        """Run the jobs in parallel within the deadline; add their results to the pool or raise 412."""
        if not jobs:
            return
        started = time.monotonic()
        futures: list[tuple[Future[list[dict[str, Any]]], _Job]] = [
            (self.g.executor.submit(job.call), job) for job in jobs
        ]
        try:
            done, pending = wait(
                [f for f, _ in futures], timeout=self.deadline.remaining(), return_when=FIRST_EXCEPTION
            )
        finally:
            self.fetch_seconds += time.monotonic() - started
        failed = [(f, job) for f, job in futures if f in done and f.exception() is not None]
        if failed or pending:
            for future in pending:
                future.cancel()
            self.fetch_count += len(done) + len(pending)
            if failed:
                raise self._failure(failed[0][0])
            raise self._timeout()
        for future, job in futures:
            results = future.result()
            self.fetch_count += job.requests(results)
            for result in results:
                self._add_fetched(job, result)

    def _add_fetched(self, job: _Job, result: dict[str, Any]) -> None:
        try:
            self.pool.add(result, full_url=job.read_url)
        except InvalidResource as exc:
            raise DataUnavailable(
                f"the FHIR server sent invalid FHIR for {job.what} ({exc.message})", code="fhir-bad-response"
            ) from None

    def _failure(self, future: Future[list[dict[str, Any]]]) -> Exception:
        exc = future.exception()
        if isinstance(exc, FhirTimeout):
            return self._timeout()
        if isinstance(exc, FhirError):
            return DataUnavailable(exc.message, code=f"fhir-{exc.kind}")
        return exc if exc is not None else RuntimeError("a fetch failed without an exception")

    def _timeout(self) -> DataUnavailable:
        budget = self.g.settings.fhir_budget_seconds
        shown = f"{budget:.1f}" if round(budget, 1) == budget else f"{budget:g}"
        return DataUnavailable(f"FHIR data could not be gathered within {shown} s", code="fhir-timeout")


def _type_name(value: Any) -> str:
    """A resourceType fit for a log line: a FHIR type name, else a placeholder (never caller text)."""
    return value if isinstance(value, str) and _TYPE_NAME.match(value) else "(not a FHIR type)"
