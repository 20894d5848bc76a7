"""Parse FHIR R4 (and R5-shaped) resources once and resolve references between them.

The gathering layer feeds prefetch values and search results into a ``ResourcePool``; ``extract``
reads facts from it. R4 is the default release (contract section 3, parsed with
``fhir.resources.R4B``); a resource that R4B rejects is tried with the R5 models so R5-shaped
Procedures, Devices, Encounters, ChargeItems and Coverages are accepted (reference/fhir-modeling.md
1.6-1.7). Only the resource types the service reads are validated: validation costs 0.2-0.6 ms a
resource, about 30x ``json.loads`` (fhir-modeling.md 1.5).

Error messages never carry input values: pydantic errors hold the offending ``input``, which may be
patient data, so only error locations and types are kept.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pydantic
from fhir.resources.R4B import get_fhir_model_class as _r4b_model_class
from fhir.resources.R4B.resource import Resource as _R4BResource
from fhir_core.fhirabstractmodel import FHIRAbstractModel

R4B = "R4B"
R5 = "R5"

USED_TYPES = frozenset(
    {
        "Encounter",
        "Procedure",
        "Device",
        "Location",
        "Organization",
        "ChargeItem",
        "Coverage",
        "Patient",
        "ImagingStudy",
        "DocumentReference",
        "Consent",
        "PractitionerRole",
    }
)
"""Resource types the pool validates by default; other types are skipped without validation."""

_MAX_PROBLEMS = 8
_EXTENSION_KEYS = frozenset({"extension", "modifierExtension"})
_SCALARS = (str, int, float, bool, type(None))
_TYPE_NAME = re.compile(r"[A-Z][A-Za-z]{0,63}")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_SAFE_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_HISTORY = re.compile(r"/_history/[A-Za-z0-9\-.]{1,64}$")

_R5_HINTS: Mapping[str, frozenset[str]] = {
    "Procedure": frozenset(
        {
            "occurrenceDateTime",
            "occurrencePeriod",
            "occurrenceString",
            "occurrenceAge",
            "occurrenceRange",
            "occurrenceTiming",
            "used",
            "reason",
            "recorded",
            "reportedBoolean",
            "reportedReference",
            "focus",
            "supportingInfo",
        }
    ),
    "Device": frozenset({"name", "displayName", "availabilityStatus", "category", "conformsTo", "cycle"}),
    "Encounter": frozenset({"actualPeriod", "admission", "plannedStartDate", "plannedEndDate", "virtualService"}),
    "ChargeItem": frozenset({"encounter", "unitPriceComponent", "totalPriceComponent"}),
    "Coverage": frozenset({"insurer", "paymentBy", "kind", "insurancePlan"}),
    "Location": frozenset({"form", "characteristic", "virtualService"}),
    "DocumentReference": frozenset(
        {"attester", "basedOn", "modality", "event", "bodySite", "facilityType", "practiceSetting", "period"}
    ),
    "Consent": frozenset({"subject", "grantor", "grantee", "controller", "decision", "regulatoryBasis"}),
}
"""Keys that exist only in R5: R4B would reject a resource that has one, so R5 is tried first (saves a failed run)."""


_SUBJECT = {"reference": "Patient/warm-up"}
_CONCEPT = {"coding": [{"system": "http://snomed.info/sct", "code": "394902000"}]}
_WARM_UP_RESOURCES: tuple[Mapping[str, Any], ...] = (
    {"resourceType": "Patient", "id": "warm-up", "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"}},
    {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"code": "AMB"},
        "subject": _SUBJECT,
        "location": [{"location": {"reference": "Location/warm-up"}}],
        "serviceProvider": {"display": "x"},
    },
    {
        "resourceType": "Procedure",
        "status": "completed",
        "code": _CONCEPT,
        "subject": _SUBJECT,
        "extension": [
            {"url": "http://example.org/x", "extension": [{"url": "modality", "valueCodeableConcept": _CONCEPT}]}
        ],
        "performedPeriod": {"start": "2026-01-01"},
        "focalDevice": [{"manipulated": {"reference": "Device/warm-up"}}],
        "usedReference": [{"reference": "Device/warm-up"}],
        "location": {"reference": "Location/warm-up"},
    },
    {
        "resourceType": "Device",
        "deviceName": [{"name": "x", "type": "other"}],
        "type": _CONCEPT,
        "property": [{"type": _CONCEPT, "valueQuantity": [{"value": 1}]}],
    },
    {"resourceType": "Location", "name": "x", "type": [_CONCEPT], "identifier": [{"value": "x"}]},
    {"resourceType": "Organization", "name": "x", "identifier": [{"value": "x"}]},
    {
        "resourceType": "ChargeItem",
        "status": "billable",
        "code": _CONCEPT,
        "subject": _SUBJECT,
        "context": {"reference": "Encounter/warm-up"},
        "occurrenceDateTime": "2026-01-01",
        "extension": [{"url": "http://example.org/x", "valueCodeableConcept": _CONCEPT}],
    },
    {
        "resourceType": "Coverage",
        "status": "active",
        "type": _CONCEPT,
        "beneficiary": _SUBJECT,
        "payor": [{"reference": "Organization/warm-up"}],
    },
    {"resourceType": "ImagingStudy", "status": "available", "subject": _SUBJECT, "encounter": {"reference": "x"}},
    {
        "resourceType": "DocumentReference",
        "status": "current",
        "type": _CONCEPT,
        "context": {"encounter": [{"reference": "Encounter/warm-up"}]},
        "content": [{"attachment": {"contentType": "text/plain"}}],
    },
    {"resourceType": "Consent", "status": "active", "scope": _CONCEPT, "category": [_CONCEPT], "patient": _SUBJECT},
    {"resourceType": "PractitionerRole", "code": [_CONCEPT]},
)
"""One small R4 resource per used type, for ``warm_up`` (parsed with the R4B models only)."""


class InvalidResource(ValueError):
    """A resource that neither FHIR R4 (R4B models) nor R5 accepts, described without its values.

    ``problems`` are ``"location: error-type"`` strings from pydantic; the ``input`` of each
    pydantic error is dropped because it may be patient data (style.md: never leak PHI).
    """

    def __init__(self, message: str, resource_type: str | None = None, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.resource_type = resource_type
        self.problems = tuple(problems)

    def within(self, where: str) -> InvalidResource:
        """Return the same error prefixed with its position (``Bundle entry 3``), for the caller's message."""
        return InvalidResource(f"{where}: {self.message}", self.resource_type, self.problems)


def parse_resource(raw: Mapping[str, Any]) -> FHIRAbstractModel:
    """Validate one FHIR resource, R4 first (R4B models), then R5; raise InvalidResource otherwise.

    R4 is what US EHRs send; R5 is accepted for the shapes contract section 3 names. The
    extension ``_value*`` keys that fhir.resources wrongly rejects (bug #204) are dropped first.
    ``fhir_release(model)`` tells which release parsed it.
    """
    resource_type = _resource_type(raw)
    return _validate(resource_type, _strip_extension_value_ext(raw) if _has_extension_value_ext(raw) else raw)


@functools.cache
def warm_up() -> None:
    """Parse one small R4 resource of each used type once, at start-up, not in the first hook call.

    fhir.resources builds its models lazily: the first parse in a new process costs ~0.2 s more
    than later ones (reference/fhir-modeling.md 1.5, recommendation 3). Cached: runs once a process.

    Only the R4B models are built here (~0.25 s). The R5 ones are left to the first R5-shaped
    resource a process meets, which then costs up to ~0.3 s more once (building them here doubled
    the warm-up and was a fifth of the cold start, benchmark W4): R4 is what EHRs send.
    """
    for raw in _WARM_UP_RESOURCES:
        parse_resource(raw)


def fhir_release(model: FHIRAbstractModel) -> str:
    """Return ``"R4B"`` or ``"R5"``: the fhir.resources release whose model parsed ``model``."""
    return R4B if type(model).__module__.startswith("fhir.resources.R4B.") else R5


def as_reference(value: str, resource_type: str) -> str:
    """Return ``Type/id`` for a bare id (CDS Hooks context ``patientId`` is one), else ``value`` unchanged."""
    return f"{resource_type}/{value}" if _ID.fullmatch(value) else value


def reference_type(reference: str | None) -> str | None:
    """Return the resource type a literal reference names (``Device/x``, ``http://.../Device/x``), else None."""
    parts = _split_reference(reference)
    return parts[1] if parts else None


def reference_id(reference: str | None) -> str | None:
    """Return the logical id a literal reference names (``Device/x`` -> ``x``), else None."""
    parts = _split_reference(reference)
    return parts[2] if parts else None


@dataclass(eq=False)
class _Entry:
    model: FHIRAbstractModel
    raw: Mapping[str, Any]
    key: str
    full_url: str | None
    contained: dict[str, _Entry] = field(default_factory=dict)


class ResourcePool:
    """Hold every resource of one hook call, parsed once, indexed for reference resolution.

    Resources come from prefetch and from FHIR searches (Bundles, possibly several pages). Each
    is indexed under ``Type/id``, under its absolute or ``urn:uuid:``/``urn:oid:`` fullUrl, and its
    contained resources under ``Type/id#cid``. The first copy of a resource wins: a later copy
    with the same ``Type/id`` or fullUrl is ignored without being parsed again.

    Contained resources are parsed separately from their container (so one R5-shaped contained
    Device does not fail an R4 Procedure); the container's model therefore has no ``contained``:
    resolve ``#id`` through ``resolve(ref, container=model)``.
    """

    def __init__(self, types: frozenset[str] = USED_TYPES) -> None:
        self._types = types
        self._entries: list[_Entry] = []
        self._by_key: dict[str, _Entry] = {}
        self._by_url: dict[str, _Entry] = {}
        self._by_model: dict[int, _Entry] = {}
        self._by_type: dict[str, list[_Entry]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[FHIRAbstractModel]:
        return (entry.model for entry in self._entries)

    def add(self, raw: Mapping[str, Any], full_url: str | None = None) -> None:
        """Add a resource or every entry resource of a Bundle; raise InvalidResource, adding nothing, on a bad one.

        Bundle entries without ``resource``, OperationOutcomes (search ``outcome`` entries) and
        resource types outside ``types`` are skipped. Nested Bundles (a batch-response) are
        flattened. All entries are parsed before any is indexed, so a failure leaves the pool as it was.
        """
        pending: list[tuple[Mapping[str, Any], str | None, str]] = []
        _collect(raw, full_url, pending, "resource")
        parsed = [(self._parse(item, where), url) for item, url, where in pending if not self._holds(item, url)]
        for entry, url in parsed:
            if entry is not None:
                self._index(entry, url)

    def resolve(
        self, reference: str | None, container: FHIRAbstractModel | str | None = None
    ) -> FHIRAbstractModel | None:
        """Return the parsed resource a reference points to, or None when it is not in the pool.

        Handles ``Type/id``, ``Type/id/_history/n``, absolute URLs (by fullUrl, else by their
        trailing ``Type/id``), ``urn:uuid:``/``urn:oid:`` fullUrls, ``#id`` against ``container``
        (a model of the pool or its key) and the pool's own ``Type/id#cid`` keys.
        """
        entry = self._lookup(reference, container)
        return entry.model if entry is not None else None

    def key(self, reference: str, container: FHIRAbstractModel | str | None = None) -> str:
        """Normalise a reference to ``"Type/id"``: the key facts use, or the raw string when it cannot.

        A resolvable reference gets its resource's key, so ``urn:uuid:...``, absolute URLs and
        ``Type/id`` of one resource compare equal. ``#cid`` becomes ``Container/id#cid`` when the
        container is known: two Procedures may each contain a different ``#seed``.
        """
        entry = self._lookup(reference, container)
        if entry is not None:
            return entry.key
        if reference.startswith("#"):
            outer = self._container_entry(container)
            return f"{outer.key}{reference}" if outer is not None and len(reference) > 1 else reference
        parts = _split_reference(reference)
        return f"{parts[1]}/{parts[2]}" if parts else reference

    def key_of(self, model: FHIRAbstractModel) -> str:
        """Return the key of a model held by the pool (``Type/id``, else its fullUrl); KeyError otherwise."""
        return self._by_model[id(model)].key

    def raw_of(self, model: FHIRAbstractModel) -> Mapping[str, Any]:
        """Return the JSON a pool model was parsed from: dates as written, which models turn into datetimes."""
        return self._by_model[id(model)].raw

    def full_url_of(self, model: FHIRAbstractModel) -> str | None:
        """Return the Bundle fullUrl a pool model came with, or None."""
        return self._by_model[id(model)].full_url

    def of_type(self, resource_type: str) -> Iterator[FHIRAbstractModel]:
        """Iterate the pool's top-level resources of one type in insertion order (contained ones excluded)."""
        return (entry.model for entry in self._by_type.get(resource_type, ()))

    def fetch_target(
        self,
        reference: str | None,
        container: FHIRAbstractModel | str | None = None,
        fhir_server: str | None = None,
    ) -> tuple[str, str] | None:
        """Return ``(type, id)`` of a reference that is not in the pool but can be read from the FHIR server.

        Relative references can; absolute ones only when their base is ``fhir_server`` or the
        base of the container's fullUrl (the server that sent the container). Contained and
        ``urn:`` references cannot: they live only inside the data that was sent.
        """
        if not reference or self._lookup(reference, container) is not None:
            return None
        parts = _split_reference(reference)
        if parts is None:
            return None
        base, resource_type, logical_id = parts
        if base is None:
            return resource_type, logical_id
        outer = self._container_entry(container)
        bases = {_normal_base(fhir_server), _normal_base(_base_of(outer.full_url if outer else None))}
        return (resource_type, logical_id) if _normal_base(base) in bases - {None} else None

    def _lookup(self, reference: str | None, container: FHIRAbstractModel | str | None) -> _Entry | None:
        if not reference:
            return None
        if reference.startswith("#"):
            outer = self._container_entry(container)
            return outer.contained.get(reference[1:]) if outer is not None else None
        if "#" in reference:
            base, _, local = reference.partition("#")
            outer = self._lookup(base, None)
            return outer.contained.get(local) if outer is not None else None
        entry = self._by_url.get(reference)
        if entry is not None:
            return entry
        parts = _split_reference(reference)
        return self._by_key.get(f"{parts[1]}/{parts[2]}") if parts else None

    def _container_entry(self, container: FHIRAbstractModel | str | None) -> _Entry | None:
        if container is None:
            return None
        if isinstance(container, str):
            return self._lookup(container, None)
        return self._by_model.get(id(container))

    def _uses(self, resource_type: Any) -> bool:
        return isinstance(resource_type, str) and resource_type in self._types

    def _holds(self, raw: Mapping[str, Any], full_url: str | None) -> bool:
        """Tell whether the pool already has this resource (same fullUrl or ``Type/id``): skip parsing it again."""
        if full_url is not None and full_url in self._by_url:
            return True
        logical_id = raw.get("id")
        return isinstance(logical_id, str) and f"{raw.get('resourceType')}/{logical_id}" in self._by_key

    def _parse(self, raw: Mapping[str, Any], where: str) -> _Entry | None:
        resource_type = raw.get("resourceType")
        if not self._uses(resource_type):
            if not isinstance(resource_type, str):
                raise InvalidResource(f"{where}: {_resource_type_problem(resource_type)}")
            return None
        try:
            model = parse_resource(_without_contained(raw))
            contained = self._parse_contained(raw)
        except InvalidResource as exc:
            raise exc.within(where) from None
        logical_id = raw.get("id")
        key = f"{resource_type}/{logical_id}" if isinstance(logical_id, str) else ""
        return _Entry(model=model, raw=raw, key=key, full_url=None, contained=contained)

    def _parse_contained(self, raw: Mapping[str, Any]) -> dict[str, _Entry]:
        items = raw.get("contained")
        if not isinstance(items, list):
            return {}
        parsed = {}
        for position, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise InvalidResource(f"contained[{position}] is not a JSON object")
            local_id = item.get("id")
            if not self._uses(item.get("resourceType")) or not isinstance(local_id, str):
                continue
            try:
                model = parse_resource(_without_contained(item))
            except InvalidResource as exc:
                raise exc.within(f"contained[{position}]") from None
            parsed.setdefault(local_id, _Entry(model=model, raw=item, key="", full_url=None))
        return parsed

    def _index(self, entry: _Entry, full_url: str | None) -> None:
        if (entry.key and entry.key in self._by_key) or (full_url is not None and full_url in self._by_url):
            return
        resource_type = type(entry.model).get_resource_type()
        entry.full_url = full_url
        entry.key = entry.key or full_url or f"{resource_type} (entry {len(self._entries)})"
        self._entries.append(entry)
        self._by_type.setdefault(resource_type, []).append(entry)
        self._by_model[id(entry.model)] = entry
        for local_id, item in entry.contained.items():
            item.key = f"{entry.key}#{local_id}"
            self._by_model[id(item.model)] = item
        if entry.key.startswith(f"{resource_type}/"):
            self._by_key[entry.key] = entry
        if full_url is not None:
            self._by_url[full_url] = entry


def _collect(raw: Any, full_url: Any, pending: list[tuple[Mapping[str, Any], str | None, str]], where: str) -> None:
    if not isinstance(raw, Mapping):
        raise InvalidResource(f"{where} is not a JSON object")
    resource_type = raw.get("resourceType")
    if resource_type == "OperationOutcome":
        return
    if resource_type != "Bundle":
        pending.append((raw, full_url if isinstance(full_url, str) and full_url else None, where))
        return
    entries = raw.get("entry") or []
    if not isinstance(entries, list):
        raise InvalidResource(f"{where}: Bundle.entry is not a list")
    for position, item in enumerate(entries):
        here = f"Bundle entry {position}" if where == "resource" else f"{where}, entry {position}"
        if not isinstance(item, Mapping):
            raise InvalidResource(f"{here} is not a JSON object")
        if item.get("resource") is not None:
            _collect(item["resource"], item.get("fullUrl"), pending, here)


def _resource_type(raw: Any) -> str:
    if not isinstance(raw, Mapping):
        raise InvalidResource("resource is not a JSON object")
    resource_type = raw.get("resourceType")
    if not isinstance(resource_type, str) or not _TYPE_NAME.fullmatch(resource_type):
        raise InvalidResource(_resource_type_problem(resource_type))
    return resource_type


def _resource_type_problem(resource_type: Any) -> str:
    if resource_type is None:
        return "resource without resourceType"
    return "resourceType is not a FHIR resource type name"


@functools.cache
def _model_class(release: str, resource_type: str) -> type[FHIRAbstractModel] | None:
    """Return the resource model of ``resource_type`` in ``release``, or None when it has none.

    The R5 models are imported only here, on the first resource R4B rejects or that has an R5 shape:
    importing a model builds it (see ``warm_up``), and most processes never see R5 input. Cached:
    the lookup is a module import and a subclass check, asked for every resource parsed.
    """
    if release == R4B:
        lookup, base = _r4b_model_class, _R4BResource
    else:
        from fhir.resources import get_fhir_model_class as lookup
        from fhir.resources.resource import Resource as base
    try:
        klass = lookup(resource_type)
    except ValueError:
        return None
    return klass if issubclass(klass, base) else None


def _validate(resource_type: str, raw: Mapping[str, Any]) -> FHIRAbstractModel:
    failures: list[tuple[str, list[str]]] = []
    for release in (R5, R4B) if _prefers_r5(resource_type, raw) else (R4B, R5):
        klass = _model_class(release, resource_type)
        if klass is None:
            continue
        try:
            return klass.model_validate(raw)
        except pydantic.ValidationError as exc:
            failures.append((release, [_problem(error) for error in exc.errors(include_input=False)]))
    if not failures:
        raise InvalidResource(f"unknown resourceType {resource_type}", resource_type)
    release, problems = min(failures, key=lambda failure: (len(failure[1]), failure[0] != R4B))
    shown = "; ".join(problems[:_MAX_PROBLEMS]) + ("; ..." if len(problems) > _MAX_PROBLEMS else "")
    raise InvalidResource(
        f"{resource_type} is not valid FHIR R4 or R5 (closest {release}: {shown})", resource_type, problems
    )


def _prefers_r5(resource_type: str, raw: Mapping[str, Any]) -> bool:
    """Tell whether the resource has an R5-only shape, so that R4B would reject it and R5 goes first."""
    if _R5_HINTS.get(resource_type, frozenset()).intersection(raw):
        return True
    list_in_r5 = {"Encounter": "class", "Device": "type", "DocumentReference": "context"}.get(resource_type)
    return list_in_r5 is not None and isinstance(raw.get(list_in_r5), list)


def _problem(error: Mapping[str, Any]) -> str:
    location = "".join(_location_part(part) for part in error.get("loc", ())).lstrip(".")
    return f"{location or '(resource)'}: {error.get('type', 'invalid')}"


def _location_part(part: Any) -> str:
    if isinstance(part, int):
        return f"[{part}]"
    text = str(part)
    return f".{text}" if _SAFE_FIELD.fullmatch(text) else ".<key>"


def _has_extension_value_ext(node: Any, in_extension: bool = False) -> bool:
    """Tell whether an Extension object below ``node`` has a ``_value*`` key: a read-only scan, no copies.

    Almost no resource has one, and the scan costs a third of ``_strip_extension_value_ext``'s copying
    walk (docs/performance.md: it was 3-4 % of a hook call's CPU).
    """
    if isinstance(node, list):
        return any(_has_extension_value_ext(item, in_extension) for item in node if not isinstance(item, _SCALARS))
    if not isinstance(node, Mapping):
        return False
    for key, value in node.items():
        if in_extension and key.startswith("_value"):
            return True
        if not isinstance(value, _SCALARS) and _has_extension_value_ext(value, key in _EXTENSION_KEYS):
            return True
    return False


def _strip_extension_value_ext(node: Any, in_extension: bool = False) -> Any:
    """Drop ``_value*`` keys of Extension objects, copying only what changes (fhir.resources bug #204)."""
    if isinstance(node, list):
        items = [_strip_extension_value_ext(item, in_extension) for item in node]
        return node if all(new is old for new, old in zip(items, node, strict=True)) else items
    if not isinstance(node, Mapping):
        return node
    result: dict[str, Any] = {}
    changed = False
    for key, value in node.items():
        if in_extension and key.startswith("_value"):
            changed = True
            continue
        new = _strip_extension_value_ext(value, key in _EXTENSION_KEYS)
        changed = changed or new is not value
        result[key] = new
    return result if changed else node


def _without_contained(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    return {k: v for k, v in raw.items() if k != "contained"} if "contained" in raw else raw


@functools.lru_cache(maxsize=1024)
def _split_reference(reference: str | None) -> tuple[str | None, str, str] | None:
    """Split ``[base/]Type/id[/_history/v]`` into (base or None, Type, id); None for other forms.

    Cached: a hook call splits the same few references hundreds of times (docs/performance.md).
    """
    if not reference or reference.startswith(("#", "urn:")) or "?" in reference or "#" in reference:
        return None
    path = _HISTORY.sub("", reference)
    pieces = path.rsplit("/", 2)
    if len(pieces) == 2:
        base, (resource_type, logical_id) = None, pieces
    elif len(pieces) == 3 and "://" in pieces[0]:
        base, resource_type, logical_id = pieces
    else:
        return None
    if not _TYPE_NAME.fullmatch(resource_type) or not _ID.fullmatch(logical_id):
        return None
    return base, resource_type, logical_id


def _base_of(full_url: str | None) -> str | None:
    parts = _split_reference(full_url)
    return parts[0] if parts else None


def _normal_base(url: str | None) -> str | None:
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path.rstrip('/')}"
