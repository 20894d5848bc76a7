"""Gather the FHIR data of one hook call: prefetch first, then the request's fhirServer, within one deadline.

CDS Hooks 2.0 "Prefetch" (reference/cds-hooks.md P4-P6): each template key of the service is either
absent, ``null`` (authoritative "no data"), a Bundle (possibly only a first page), an
OperationOutcome (the EHR could not run the query: fetch it ourselves) or a resource. What is
missing is fetched from ``fhirServer`` when contract 5.2 allows that server, with the bearer token
when given, in parallel through the shared executor. Then references the facts need (Devices of
the brachytherapy Procedures, Locations, Organizations, Encounters for patient-view) are resolved
by ``Type?_id=a,b,c`` searches, one per type and depth, at most three deep (contract 2: R4 has no
Procedure search parameter for devices).

Fetches are pipelined: a type is searched as soon as none of the data its references come from
(``extract.REFERENCE_SOURCES``) is still on its way, not when every fetch of a round has ended.
With no prefetch, the Device search leaves when the Procedures arrive, while the evidence searches
are still running; with full prefetch, the reference searches leave once the Encounter, Procedures
and Coverage are read, and the other prefetch values are validated while they run. Each answer is
validated as it arrives, while the others are still on their way (docs/performance.md, W1 and W3).

412 (``DataUnavailable``) when data the decision needs can be had neither way, or a fetch of it
failed; its message names the prefetch key or resource type and why, never an id or a value.
Optional keys (payer and documentation evidence) never cause a 412: when one can be had neither
way, its fetch fails or its data is invalid, a note says so and its resource type stays out of
``Gathered.checked``, so the documentation check calls that evidence unknown rather than missing.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
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
"""Depth of reference searches: data of depth n (0: prefetch) asks for depth n+1 (patient-view: Encounters, then
their Locations and Organizations), with one spare."""
MAX_IDS_PER_SEARCH = 50
"""Ids in one ``Type?_id=`` search, so the URL stays well under the 8 KB servers accept."""
CRITICAL_TYPES = frozenset({"Device"})
"""Types whose absence makes the decision impossible (channel/source counts): 412, not a note."""
OPTIONAL_REFERENCE_TYPES = frozenset({"PractitionerRole"})
"""Referenced types that are only evidence (a resident's role for GC): a failed fetch is a note, not a 412."""
NO_SERVER = "no allowed fhirServer was given"
_SOURCE_TYPES = frozenset().union(*extract.REFERENCE_SOURCES.values())
"""Resource types whose elements hold references the facts need (Encounter, Procedure, Coverage)."""
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_TYPE_NAME = re.compile(r"^[A-Z][A-Za-z]{0,63}$")


@dataclass
class Gathered:
    """The resources of one hook call, the encounters to judge, and PHI-free notes and timings."""

    pool: ResourcePool
    encounter_refs: list[str]
    notes: list[str] = field(default_factory=list)
    """What could not be had without making the decision impossible (e.g. "Location data was not available ...")."""
    checked: set[str] = field(default_factory=set)
    """Resource types of the prefetch templates whose data was had (from prefetch or fhirServer)."""
    fetch_count: int = 0
    """HTTP requests sent to fhirServer (every page counts; retries do not)."""
    rounds: int = 0
    """Depth of the deepest reference search sent (0: none; 1: references of prefetch data; 2: of those)."""
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
    required: bool = True
    """False for optional data: a failure or timeout is a note, not a 412."""
    checks: str | None = None
    """The resource type this job's success makes checked (prefetch templates only)."""
    depth: int = 0
    """0 for a prefetch key, n + 1 for a reference search asked for by data of depth n."""

    @property
    def produces(self) -> str:
        """The resource type the job brings (its template's, or the searched type): what waits for it."""
        return self.checks or self.what

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
        self.teaching_sites = any(site.teaching for site in settings.sites)
        """Only a teaching site needs the performers' PractitionerRoles (to recognise a resident for GC)."""

    def gather(self, service: ServiceDefinition, request: HookRequest, deadline: Deadline | None = None) -> Gathered:
        """Return the pool and the encounters to judge; raise DataUnavailable (412) or BadRequest (400).

        ``deadline`` is the hook call's time budget, counted from the request's arrival (the app
        starts it before the JWT check); without one, the budget starts now.
        """
        return _Gathering(self, service, request, deadline).run()


class _Gathering:
    """The state of one gathering: deadline, pool, what was attempted, counters."""

    def __init__(
        self, gatherer: Gatherer, service: ServiceDefinition, request: HookRequest, deadline: Deadline | None
    ) -> None:
        self.g = gatherer
        self.service = service
        self.request = request
        self.started = time.monotonic()
        self.deadline = deadline or Deadline(gatherer.settings.fhir_budget_seconds)
        self.pool = ResourcePool()
        self.server = request.fhir_server if gatherer.client.allowed(request.fhir_server) else None
        self.token = request.access_token if self.server else None
        self.notes: list[str] = []
        self.checked: set[str] = set()
        self.attempted: dict[str, set[str]] = {}
        self.fetch_count = 0
        self.fetch_seconds = 0.0
        self.rounds = 0
        self.pending: dict[Future[list[dict[str, Any]]], _Job] = {}
        self.prefetch_read = False
        """True once every prefetch value is in the pool (fetches of missing keys may still be running)."""
        self.depth_of: dict[str, int] = {}
        """For each resource type fetched, the depth of the deepest fetch of it that has answered."""
        self.patient_ref = f"Patient/{request.patient_id}"
        self.encounter_refs: list[str] | None = (
            [f"Encounter/{request.encounter_id}"] if request.encounter_id else None
        )
        """None until known: patient-view without encounterId finds them once every prefetch key is had."""
        self.stopped_at_depth = False
        if request.fhir_server and not self.server:
            log.warning(
                "fhirServer is not allowed; it will not be contacted",
                extra={"fields": {"hookInstance": request.hook_instance, "service": service.id}},
            )

    def run(self) -> Gathered:
        # Prefetch keys that hold references go first: once they are read (or on their way), the
        # reference searches can leave while the other keys are still being validated or fetched.
        first = [t for t in self.service.prefetch if t.resource_type in _SOURCE_TYPES]
        later = [t for t in self.service.prefetch if t.resource_type not in _SOURCE_TYPES]
        try:
            for template in first:
                self._submit(self._prefetch(template))
            self._dispatch()
            for template in later:
                self._submit(self._prefetch(template))
            self.prefetch_read = True
            self._drive()
        finally:
            for future in self.pending:
                future.cancel()
        if self.stopped_at_depth:
            log.info(
                "reference resolution stopped at the deepest round",
                extra={"fields": {"hookInstance": self.request.hook_instance, "rounds": self.rounds}},
            )
        gathered = Gathered(
            pool=self.pool,
            encounter_refs=self.encounter_refs or [],
            notes=list(dict.fromkeys(self.notes)),
            checked=set(self.checked),
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
                self.checked.add(template.resource_type)
                return []
            resource_type = value.get("resourceType")
            if resource_type == "Bundle":
                if not self._add_prefetch(template, value):
                    return []
                if next_link(value) is None:
                    self.checked.add(template.resource_type)
                    return []
                if self.server is None:
                    self._unavailable(template, "is only the first page of a paged search")
                    return []
                server, token, deadline = self.server, self.token, self.deadline
                return [
                    _Job(
                        key,
                        lambda: self.g.client.next_pages(server, value, token, deadline),
                        required=template.required,
                        checks=template.resource_type,
                    )
                ]
            if resource_type == template.resource_type:
                if self._add_prefetch(template, value):
                    self.checked.add(template.resource_type)
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

            return [
                _Job(
                    key,
                    read,
                    read_url=f"{server.rstrip('/')}/{query}",
                    required=template.required,
                    checks=template.resource_type,
                )
            ]
        return [
            _Job(
                key,
                lambda: self.g.client.search(server, query, token, deadline),
                required=template.required,
                checks=template.resource_type,
            )
        ]

    def _add_prefetch(self, template: PrefetchTemplate, value: dict[str, Any]) -> bool:
        """Add a prefetch value; invalid FHIR is a 400 for a required key and a note for an optional one."""
        try:
            self.pool.add(value)
        except InvalidResource as exc:
            if template.required:
                raise BadRequest(f"prefetch '{template.key}': {exc.message}") from None
            self.notes.append(
                f"{template.resource_type} data was not available: prefetch '{template.key}' is not valid FHIR"
                f" ({exc.message})"
            )
            return False
        return True

    def _unavailable(self, template: PrefetchTemplate, why: str, *, server: bool = True) -> None:
        """412 for a required key; a note for an optional one (its evidence is then simply missing)."""
        message = f"prefetch '{template.key}' {why}" + (f" and {NO_SERVER}" if server else "")
        if template.required:
            raise DataUnavailable(message, code="prefetch-missing")
        self.notes.append(f"{template.resource_type} data was not available: {message}")

    # Reference resolution

    def _dispatch(self) -> None:
        """Search what the encounters' facts reference but the pool lacks, for each type whose sources are all in.

        A type waits while a fetch that may bring more of its references is running (its source types,
        ``extract.REFERENCE_SOURCES``; every fetch for a type not listed there), so each type is searched
        once per depth with every id at once.
        """
        if self.server is None and not self.prefetch_read:
            return  # nothing can be fetched: every prefetch key is judged first, as the messages then say
        if self.encounter_refs is None:
            if not self.prefetch_read or self.pending:
                return
            since = self.g.today() - dt.timedelta(days=self.g.settings.lookback_days)
            self.encounter_refs = extract.patient_encounter_refs(
                self.pool, self.patient_ref, self.g.rules, since=since
            )
        wanted: dict[str, set[str]] = {}
        for encounter_ref in self.encounter_refs:
            missing = extract.missing_references(
                self.pool,
                encounter_ref,
                self.g.rules,
                patient_ref=self.patient_ref,
                fhir_server=self.server,
                performer_roles=self.g.teaching_sites,
            )
            for resource_type, ids in missing.items():
                fresh = {i for i in ids if _FHIR_ID.match(i)} - self.attempted.get(resource_type, set())
                if fresh:
                    wanted.setdefault(resource_type, set()).update(fresh)
        # A type also waits for a source type searched now (patient-view: the Encounters before their Organizations).
        wanted = {
            resource_type: ids
            for resource_type, ids in wanted.items()
            if not self._sources_pending(resource_type, set(wanted) - {resource_type})
        }
        if not wanted:
            return
        if self.server is None:
            for resource_type, ids in wanted.items():
                self._attempt(resource_type, *ids)
            self._references_unavailable(wanted)
            return
        jobs = []
        for resource_type in sorted(wanted, key=lambda t: (t not in CRITICAL_TYPES, t)):
            depth = 1 + self._source_depth(resource_type)
            if depth > self.g.max_rounds:
                self.stopped_at_depth = True
                continue
            self.rounds = max(self.rounds, depth)
            ids = sorted(wanted[resource_type])
            for start in range(0, len(ids), MAX_IDS_PER_SEARCH):
                chunk = ids[start : start + MAX_IDS_PER_SEARCH]
                self._attempt(resource_type, *chunk)
                query = f"{resource_type}?_id={','.join(chunk)}&_count={len(chunk)}"
                required = resource_type not in OPTIONAL_REFERENCE_TYPES
                search = self._search_job(self.server, query)
                jobs.append(_Job(resource_type, search, required=required, depth=depth))
        self._submit(jobs)

    def _source_depth(self, resource_type: str) -> int:
        """The depth of the data a type's references come from: 0 for prefetch data, n for data of a depth-n search."""
        sources = extract.REFERENCE_SOURCES.get(resource_type, self.depth_of.keys())
        return max((self.depth_of.get(source, 0) for source in sources), default=0)

    def _sources_pending(self, resource_type: str, also_wanted: set[str]) -> bool:
        """Tell whether data that may hold more references of this type is on its way or about to be searched."""
        sources = extract.REFERENCE_SOURCES.get(resource_type)
        if sources is None:
            return bool(self.pending) or not self.prefetch_read or bool(also_wanted)
        # Every prefetch key of a source type is read before the first dispatch (``run``): only fetches are left.
        return bool(sources & also_wanted) or any(job.produces in sources for job in self.pending.values())

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

    def _submit(self, jobs: Iterable[_Job]) -> None:
        for job in jobs:
            self.pending[self.g.executor.submit(job.call)] = job

    def _drive(self) -> None:
        """Take each fetch's answer as it arrives, send the searches it makes possible, until none is running.

        A required fetch that fails, or is still running at the deadline, is a 412; an optional one
        is a note, and the other fetches' results are used.
        """
        if not self.pending:
            self._dispatch()
        while self.pending:
            started = time.monotonic()
            try:
                done, _ = wait(self.pending, timeout=self.deadline.remaining(), return_when=FIRST_COMPLETED)
            finally:
                self.fetch_seconds += time.monotonic() - started
            if not done:
                self._deadline_passed()  # only optional fetches were left: searches they held back may go now
            answered = {self.pending[future].produces for future in done}
            for future in done:
                self._complete(future, self.pending.pop(future))
            # Only data of a source type, or the last fetch ending, can make a search possible (and
            # finding what is missing costs 0.3-0.4 ms a time).
            if not self.pending or answered & _SOURCE_TYPES:
                self._dispatch()

    def _deadline_passed(self) -> None:
        if any(job.required for job in self.pending.values()):
            self.fetch_count += len(self.pending)
            raise self._timeout()
        for future, job in list(self.pending.items()):
            future.cancel()
            self.fetch_count += 1
            self._optional_failed(job, "did not answer within the time budget")
        self.pending.clear()

    def _complete(self, future: Future[list[dict[str, Any]]], job: _Job) -> None:
        exc = future.exception()
        if exc is not None:
            self.fetch_count += 1
            if job.required or not isinstance(exc, FhirError):
                # A required fetch failed (412), or a bug (not missing data: never hidden behind a note).
                self.fetch_count += len(self.pending)
                raise self._failure(future)
            self._optional_failed(job, exc.message)
            return
        results = future.result()
        self.fetch_count += job.requests(results)
        self.depth_of[job.produces] = max(self.depth_of.get(job.produces, 0), job.depth)
        if all(self._add_fetched(job, result) for result in results) and job.checks:
            self.checked.add(job.checks)

    def _optional_failed(self, job: _Job, why: str) -> None:
        self.notes.append(f"{job.checks or job.what} data was not available: fetching {job.what} failed ({why})")
        log.info(
            "optional data not available",
            extra={"fields": {"hookInstance": self.request.hook_instance, "what": job.what}},
        )

    def _add_fetched(self, job: _Job, result: dict[str, Any]) -> bool:
        try:
            self.pool.add(result, full_url=job.read_url)
        except InvalidResource as exc:
            message = f"the FHIR server sent invalid FHIR for {job.what} ({exc.message})"
            if job.required:
                raise DataUnavailable(message, code="fhir-bad-response") from None
            self._optional_failed(job, message)
            return False
        return True

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
