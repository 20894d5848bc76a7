"""Read the facts of a brachytherapy encounter out of a ResourcePool, for R4 and R5-shaped resources.

This module decides nothing about billing (no level, modifier or setting choice: style.md, "fhir_mappings
has one job"). It selects the data contract sections 3 and 5.3 name, copies it into the frozen
dataclasses of ``facts`` and notes what it could not find. Texts copied from FHIR (labels, names) are
kept raw; the cards layer escapes them (contract 5.5).

R4 and R5 differ in the elements read here (reference/fhir-modeling.md 1.6): Procedure
``performed[x]``/``usedReference`` vs ``occurrence[x]``/``used``, Device ``deviceName``/one ``type``
vs ``name``/a list of ``type``, Encounter ``class`` one Coding vs a list, ChargeItem ``context`` vs
``encounter``, Coverage ``payor`` vs ``insurer`` + ``paymentBy``, DocumentReference
``context.encounter`` vs a ``context`` list, Consent ``patient`` vs ``subject``. Fields missing from a
release's model are read with ``getattr(..., None)``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from fhir_core.fhirabstractmodel import FHIRAbstractModel

from fhir_mappings.facts import (
    ChargeFact,
    ConsentFact,
    CoverageFact,
    DeviceFact,
    DocumentFact,
    EncounterFacts,
    Identifier,
    ImagingStudyFact,
    LocationFact,
    OrganizationFact,
    PerformerFact,
    ProcedureFact,
)
from fhir_mappings.resources import ResourcePool, as_reference, reference_type
from fhir_mappings.rules import RuleSet

IN_SCOPE_STATUSES = frozenset({"completed", "in-progress"})
"""Procedure statuses that count as brachytherapy done (contract 3.1); not-done, entered-in-error... do not."""
IMAGING_STUDY_VOID = frozenset({"cancelled", "entered-in-error"})
"""ImagingStudy statuses that are no evidence of imaging."""
DOCUMENT_STATUS = "current"
"""The DocumentReference status that counts as evidence (superseded and entered-in-error do not)."""

_MCODE_PARTS = ("modality", "technique")
Code = tuple[str, str]
_Link = tuple[Any, FHIRAbstractModel]
"""A FHIR Reference model and the resource that holds it (needed for ``#contained`` references)."""


def is_brachytherapy(procedure: FHIRAbstractModel, rules: RuleSet) -> bool:
    """Tell whether a Procedure is in-scope brachytherapy: status completed/in-progress and a brachytherapy code.

    Codes come from Procedure.code and the mCODE modality-and-technique extension (contract 3.1).
    Electronic brachytherapy counts here; the coding core gives it no 77316-77318 suggestion.
    """
    if procedure.status not in IN_SCOPE_STATUSES:
        return False
    return any(
        code in rules.procedure_codes or code in rules.electronic_codes for code in procedure_codes(procedure, rules)
    )


def procedure_codes(procedure: FHIRAbstractModel, rules: RuleSet) -> tuple[Code, ...]:
    """Return the (system, code) pairs of Procedure.code and the mCODE modality/technique sub-extensions.

    mCODE carries the modality (HDR, LDR...) and technique (interstitial...) in an extension
    rather than in ``code`` (fhir-modeling.md 2.3); both say whether a Procedure is brachytherapy.
    """
    codings = list(_codings(procedure.code))
    url = rules.systems["mcode_modality_extension"]
    for extension in procedure.extension or ():
        if extension.url != url:
            continue
        for part in extension.extension or ():
            if part.url in _MCODE_PARTS:
                codings.extend(_codings(part.valueCodeableConcept))
    return _code_pairs(codings)


def procedure_device_refs(procedure: FHIRAbstractModel, pool: ResourcePool) -> list[str]:
    """Return the keys of the Devices a Procedure links, focalDevice first, then usedReference / used.

    That is the element order of the Procedure definition in R4 and R5. Only Device targets count:
    R4 ``usedReference`` may also name a Medication or Substance. A ``focalDevice.manipulated`` is
    a Device by definition, so an unresolvable one (``urn:uuid``, ``#id``) still counts.
    """
    return list(
        dict.fromkeys(pool.key(reference.reference, holder) for reference, holder in _device_links(procedure, pool))
    )


def encounter_facts(
    pool: ResourcePool, encounter_ref: str, patient_ref: str, rules: RuleSet, checked: Iterable[str] = ()
) -> EncounterFacts:
    """Collect everything the coding core needs about one encounter, and notes on what is missing.

    ``encounter_ref`` and ``patient_ref`` may be bare ids (CDS Hooks context) or references in any
    form the pool resolves. Without the Encounter itself the facts still hold its Procedures,
    Devices, charges and coverages, plus a note. ``checked`` names the resource types whose data was
    had (the gathering layer knows): evidence of other types is unknown, not absent.
    """
    encounter_key = pool.key(as_reference(encounter_ref, "Encounter"))
    patient_key = pool.key(as_reference(patient_ref, "Patient"))
    encounter = _typed(pool.resolve(encounter_key), "Encounter")
    procedures = _encounter_procedures(pool, encounter_key, rules)
    devices, device_notes = _device_facts(pool, _distinct_device_links(procedures, pool), rules)
    locations, location_notes = _location_facts(pool, _location_links(encounter, procedures), rules)
    provider, provider_notes = _service_provider(pool, encounter)
    coverages, coverage_notes = _coverage_facts(pool, patient_key)
    encounter_notes = [] if encounter is not None else [f"{encounter_key} was not available"]
    notes = encounter_notes + device_notes + location_notes + provider_notes + coverage_notes
    return EncounterFacts(
        encounter_ref=encounter_key,
        patient_ref=patient_key,
        encounter_class=_class_codes(encounter),
        procedures=tuple(_procedure_fact(pool, procedure, rules) for procedure in procedures),
        devices=devices,
        locations=locations,
        service_provider=provider,
        charges=_charge_facts(pool, encounter_key, rules),
        coverages=coverages,
        missing=tuple(dict.fromkeys(notes)),
        related_procedures=tuple(
            _procedure_fact(pool, procedure, rules) for procedure in _related_procedures(pool, encounter_key, rules)
        ),
        imaging_studies=_imaging_study_facts(pool, encounter_key),
        documents=_document_facts(pool, encounter_key),
        consents=_consent_facts(pool, patient_key),
        checked=tuple(sorted(set(checked))),
    )


def patient_encounter_refs(pool: ResourcePool, patient_ref: str, rules: RuleSet, since: dt.date) -> list[str]:
    """Return the patient's brachytherapy encounters whose earliest brachytherapy Procedure is on or after ``since``.

    Used by patient-view without encounterId (contract 2, 5.3). The date is the one written in
    ``performed[x]``/``occurrence[x]`` (a partial date counts as its first day). An encounter whose
    Procedures carry no date falls back to its own period start. Ordered by that date, then by
    first appearance in the pool.
    """
    patient_key = pool.key(as_reference(patient_ref, "Patient"))
    earliest: dict[str, dt.date | None] = {}
    for procedure in pool.of_type("Procedure"):
        if _reference_key(pool, procedure.subject, procedure) != patient_key:
            continue
        encounter_key = _reference_key(pool, procedure.encounter, procedure)
        if encounter_key is None or not is_brachytherapy(procedure, rules):
            continue
        days = [earliest.get(encounter_key), _date_of(_procedure_start(pool.raw_of(procedure)))]
        earliest[encounter_key] = min((day for day in days if day is not None), default=None)
    dated = [(day or _encounter_start(pool, key), key) for key, day in earliest.items()]
    in_window = [(day, position, key) for position, (day, key) in enumerate(dated) if day and day >= since]
    return [key for _, _, key in sorted(in_window)]


REFERENCE_SOURCES: Mapping[str, frozenset[str]] = {
    "Encounter": frozenset({"Encounter"}),
    "Device": frozenset({"Procedure"}),
    "Location": frozenset({"Encounter", "Procedure"}),
    "Organization": frozenset({"Encounter", "Coverage"}),
    "PractitionerRole": frozenset({"Procedure"}),
}
"""For each type ``missing_references`` asks for, the resource types whose elements hold those references.

The Encounter itself comes from the hook context (a pending read of it may still bring it), Devices from
the Procedures' ``focalDevice``/``usedReference``/``used``, Locations from the Encounter and the Procedures,
Organizations from the Encounter's ``serviceProvider`` and the Coverages' payors, PractitionerRoles from the
Procedures' performers. The gathering layer searches a type as soon as no data of its source types is still
on its way, so each type is still searched once, by every id at once (contract 2: ``Device?_id=a,b,c``).
"""


def missing_references(
    pool: ResourcePool,
    encounter_ref: str,
    rules: RuleSet,
    *,
    patient_ref: str | None = None,
    fhir_server: str | None = None,
    performer_roles: bool = False,
) -> dict[str, set[str]]:
    """Return, by resource type, the ids the facts need that are not in the pool and can be read by id.

    The gathering layer fetches them in one search per type (``Device?_id=a,b``: R4 has no
    Procedure search parameter for devices, contract 2). Covers the Encounter, the Devices linked to
    its brachytherapy Procedures, its Locations, its serviceProvider and the payors of active
    Coverages (of ``patient_ref`` when given); with ``performer_roles``, also the PractitionerRoles
    that perform those Procedures (only a teaching site needs them, to recognise a resident).
    Contained and ``urn:`` references are never fetchable.
    """
    encounter_key = pool.key(as_reference(encounter_ref, "Encounter"))
    encounter = _typed(pool.resolve(encounter_key), "Encounter")
    procedures = _encounter_procedures(pool, encounter_key, rules)
    wanted: list[tuple[str, str | None, FHIRAbstractModel | None]] = [
        ("Encounter", as_reference(encounter_ref, "Encounter"), None)
    ]
    wanted += [
        ("Device", reference.reference, holder)
        for procedure in procedures
        for reference, holder in _device_links(procedure, pool)
    ]
    wanted += [
        ("Location", _written(reference), holder) for reference, holder in _location_links(encounter, procedures)
    ]
    if encounter is not None and encounter.serviceProvider is not None:
        wanted.append(("Organization", _written(encounter.serviceProvider), encounter))
    patient_key = pool.key(as_reference(patient_ref, "Patient")) if patient_ref else None
    wanted += [
        ("Organization", _written(reference), coverage)
        for coverage in _active_coverages(pool, patient_key)
        for reference in _payor_links(coverage)
    ]
    if performer_roles:
        wanted += [
            ("PractitionerRole", _written(performer.actor), procedure)
            for procedure in procedures
            for performer in procedure.performer or ()
            if performer.actor is not None
        ]
    found: dict[str, set[str]] = {}
    for resource_type, written, holder in wanted:
        target = pool.fetch_target(written, holder, fhir_server)
        if target is not None and target[0] == resource_type:
            found.setdefault(resource_type, set()).add(target[1])
    return found


# Procedures


def _encounter_procedures(pool: ResourcePool, encounter_key: str, rules: RuleSet) -> list[FHIRAbstractModel]:
    return [
        procedure
        for procedure in pool.of_type("Procedure")
        if _reference_key(pool, procedure.encounter, procedure) == encounter_key and is_brachytherapy(procedure, rules)
    ]


def _related_procedures(pool: ResourcePool, encounter_key: str, rules: RuleSet) -> list[FHIRAbstractModel]:
    """The encounter's Procedures that are done but not brachytherapy (imaging, planning...): documentation evidence."""
    return [
        procedure
        for procedure in pool.of_type("Procedure")
        if procedure.status in IN_SCOPE_STATUSES
        and _reference_key(pool, procedure.encounter, procedure) == encounter_key
        and not is_brachytherapy(procedure, rules)
    ]


def _performers(pool: ResourcePool, procedure: FHIRAbstractModel) -> tuple[PerformerFact, ...]:
    """Return Procedure.performer entries: function codes, and the actor's PractitionerRole.code when it resolves."""
    facts = []
    for performer in procedure.performer or ():
        actor = performer.actor
        written = _written(actor)
        target = _typed(pool.resolve(written, procedure), "PractitionerRole") if written else None
        role_codes = (
            _code_pairs(coding for concept in target.code or () for coding in _codings(concept)) if target else ()
        )
        facts.append(
            PerformerFact(
                actor_ref=pool.key(written, procedure) if written else None,
                function_codes=_code_pairs(_codings(performer.function)),
                role_codes=role_codes,
            )
        )
    return tuple(facts)


def _procedure_fact(pool: ResourcePool, procedure: FHIRAbstractModel, rules: RuleSet) -> ProcedureFact:
    ref = pool.key_of(procedure)
    codes = procedure_codes(procedure, rules)
    return ProcedureFact(
        ref=ref,
        label=_concept_label(procedure.code) or ref,
        status=procedure.status,
        delivery=_delivery(codes, rules),
        start=_procedure_start(pool.raw_of(procedure)),
        encounter_ref=_reference_key(pool, procedure.encounter, procedure),
        device_refs=tuple(procedure_device_refs(procedure, pool)),
        location_ref=_reference_key(pool, procedure.location, procedure),
        codes=codes,
        performers=_performers(pool, procedure),
    )


def _delivery(codes: Iterable[Code], rules: RuleSet) -> str | None:
    """Return the delivery type the codes imply; None when none does or when they disagree.

    Electronic brachytherapy wins (it is out of scope for 77316-77318 whatever else is coded).
    Codes that disagree (an HDR code next to a seed CPT code) are not settled here: the coding
    core then goes by the linked Devices.
    """
    codes = tuple(codes)
    if any(code in rules.electronic_codes for code in codes):
        return "electronic"
    deliveries = {rules.procedure_codes[code].delivery for code in codes if code in rules.procedure_codes}
    deliveries.discard(None)
    return deliveries.pop() if len(deliveries) == 1 else None


def _procedure_start(raw: Mapping[str, Any]) -> str | None:
    """Return performed[x] (R4) / occurrence[x] (R5) as written: dateTime, else Period.start.

    Read from the JSON because the models turn dates into datetime objects; at most one of these
    choice elements can be present in a valid resource.
    """
    for name in ("performedDateTime", "occurrenceDateTime"):
        if isinstance(raw.get(name), str):
            return raw[name]
    for name in ("performedPeriod", "occurrencePeriod"):
        period = raw.get(name)
        if isinstance(period, Mapping) and isinstance(period.get("start"), str):
            return period["start"]
    return None


def _date_of(text: str | None) -> dt.date | None:
    """Return the calendar date a FHIR date/dateTime is written for; a partial date gives its first day."""
    if not text:
        return None
    pieces = [*text[:10].split("-"), "1", "1"][:3]
    try:
        year, month, day = (int(piece) for piece in pieces)
        return dt.date(year, month, day)
    except ValueError:
        return None


def _encounter_start(pool: ResourcePool, encounter_key: str) -> dt.date | None:
    encounter = _typed(pool.resolve(encounter_key), "Encounter")
    if encounter is None:
        return None
    raw = pool.raw_of(encounter)
    period = raw.get("period") or raw.get("actualPeriod") or {}
    return _date_of(period.get("start")) if isinstance(period, Mapping) else None


# Devices


def _device_links(procedure: FHIRAbstractModel, pool: ResourcePool) -> list[_Link]:
    candidates = [(focal.manipulated, True) for focal in procedure.focalDevice or ()]
    candidates += [(reference, False) for reference in getattr(procedure, "usedReference", None) or ()]
    candidates += [(used.reference, False) for used in getattr(procedure, "used", None) or ()]
    return [
        (reference, procedure)
        for reference, assume_device in candidates
        if _written(reference) and _targets(pool, reference, procedure, "Device", assume_device)
    ]


def _distinct_device_links(procedures: Sequence[FHIRAbstractModel], pool: ResourcePool) -> dict[str, _Link]:
    links: dict[str, _Link] = {}
    for procedure in procedures:
        for reference, holder in _device_links(procedure, pool):
            links.setdefault(pool.key(reference.reference, holder), (reference, holder))
    return links


def _device_facts(
    pool: ResourcePool, links: Mapping[str, _Link], rules: RuleSet
) -> tuple[tuple[DeviceFact, ...], list[str]]:
    facts: list[DeviceFact] = []
    notes: list[str] = []
    for key, (reference, holder) in links.items():
        device = _typed(pool.resolve(reference.reference, holder), "Device")
        if device is None:
            notes.append(f"{key} was not available")
            continue
        fact, count_notes = _device_fact(device, key, rules)
        facts.append(fact)
        notes.extend(count_notes)
    return tuple(facts), notes


def _device_fact(device: FHIRAbstractModel, key: str, rules: RuleSet) -> tuple[DeviceFact, list[str]]:
    types = _as_list(device.type)
    codes = _code_pairs(coding for concept in types for coding in _codings(concept))
    type_label = next((label for label in map(_concept_label, types) if label), None)
    counts, notes = _explicit_counts(device, key, rules)
    fact = DeviceFact(
        ref=key,
        label=_device_name(device) or type_label or device.id or key,
        kind=_device_kind(codes, rules),
        type_label=type_label,
        explicit_channels=counts.get("channels"),
        explicit_sources=counts.get("sources"),
    )
    return fact, notes


def _device_kind(codes: Sequence[Code], rules: RuleSet) -> str | None:
    if any(code in rules.applicator_types for code in codes):
        return "applicator"
    if any(code in rules.seed_types for code in codes):
        return "seed"
    return None


def _device_name(device: FHIRAbstractModel) -> str | None:
    names = [name.name for name in getattr(device, "deviceName", None) or ()]
    names += [name.value for name in getattr(device, "name", None) or ()]
    return next((name for name in names if name), None)


def _explicit_counts(device: FHIRAbstractModel, key: str, rules: RuleSet) -> tuple[dict[str, int], list[str]]:
    """Sum the device's channels-used / sources count properties; note values that are not whole numbers >= 0.

    Contract 3.2: R4 ``valueQuantity`` is a list, R5 has one ``valueQuantity`` or a ``valueInteger``.
    A Device may carry several count properties (or values); they add up.
    """
    system = rules.systems["count_property"]
    kinds = {code: kind for kind, code in rules.count_codes.items()}
    totals: dict[str, int] = {}
    notes: list[str] = []
    for prop in device.property or ():
        code = next((c.code for c in _codings(prop.type) if c.system == system and c.code in kinds), None)
        if code is None:
            continue
        values = _property_numbers(prop)
        if not values:
            notes.append(f"{key}: the {code} count has no value")
        for value in values:
            whole = _whole_number(value)
            if whole is None:
                notes.append(f"{key}: the {code} count {value} is not a whole number of 0 or more; ignored")
            else:
                totals[kinds[code]] = totals.get(kinds[code], 0) + whole
    return totals, notes


def _property_numbers(prop: Any) -> list[Any]:
    values = [
        quantity.value for quantity in _as_list(getattr(prop, "valueQuantity", None)) if quantity.value is not None
    ]
    integer = getattr(prop, "valueInteger", None)
    return values + ([integer] if integer is not None else [])


def _whole_number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    if not number.is_finite() or number < 0 or number != number.to_integral_value():
        return None
    return int(number)


# Setting: locations, service provider, encounter class


def _location_links(encounter: FHIRAbstractModel | None, procedures: Sequence[FHIRAbstractModel]) -> list[_Link]:
    links = [(item.location, encounter) for item in encounter.location or ()] if encounter is not None else []
    links += [(procedure.location, procedure) for procedure in procedures]
    return [(reference, holder) for reference, holder in links if reference is not None]


def _location_facts(
    pool: ResourcePool, links: Sequence[_Link], rules: RuleSet
) -> tuple[tuple[LocationFact, ...], list[str]]:
    """Return the resolved Locations in decision order (contract 5.3), deduplicated, and notes on the others.

    An unresolved reference that carries an ``identifier`` still gives a LocationFact: the site
    table is keyed by identifiers (contract 5.1).
    """
    facts: dict[str, LocationFact] = {}
    notes: list[str] = []
    for reference, holder in links:
        written = _written(reference)
        key = pool.key(written, holder) if written else _identifier_ref("Location", reference)
        if key is None or key in facts:
            continue
        location = _typed(pool.resolve(written, holder), "Location")
        if location is not None:
            facts[key] = _location_fact(location, key, rules)
        elif reference.identifier is not None and reference.identifier.value:
            identifiers = _identifiers([reference.identifier])
            facts[key] = LocationFact(ref=key, label=reference.display or key, identifiers=identifiers)
        else:
            notes.append(f"{key} was not available")
    return tuple(facts.values()), notes


def _location_fact(location: FHIRAbstractModel, key: str, rules: RuleSet) -> LocationFact:
    codes = _code_pairs(coding for concept in location.type or () for coding in _codings(concept))
    return LocationFact(
        ref=key,
        label=location.name or key,
        identifiers=_identifiers(location.identifier),
        pos_codes=tuple(code for system, code in codes if system == rules.systems["pos"]),
        role_codes=tuple(code for system, code in codes if system == rules.systems["role_code"]),
    )


def _service_provider(
    pool: ResourcePool, encounter: FHIRAbstractModel | None
) -> tuple[OrganizationFact | None, list[str]]:
    if encounter is None or encounter.serviceProvider is None:
        return None, []
    return _organization(pool, encounter.serviceProvider, encounter, display_suffices=False)


def _class_codes(encounter: FHIRAbstractModel | None) -> tuple[str, ...]:
    if encounter is None or encounter.class_fhir is None:
        return ()
    if isinstance(encounter.class_fhir, list):
        return tuple(
            dict.fromkeys(
                code
                for _, code in _code_pairs(coding for concept in encounter.class_fhir for coding in _codings(concept))
            )
        )
    return (encounter.class_fhir.code,) if encounter.class_fhir.code else ()


# Organizations and coverage


def _organization(
    pool: ResourcePool, reference: Any, holder: FHIRAbstractModel, *, display_suffices: bool
) -> tuple[OrganizationFact | None, list[str]]:
    """Return the Organization a reference names, from the resource when resolved, else from the reference.

    An unresolved reference still yields a fact from its ``identifier`` (the site table needs
    only that) or, for payors, its ``display`` (payer notes go by name, contract 5.3). A reference
    to a Patient or RelatedPerson (self-pay) gives nothing.
    """
    written = _written(reference)
    key = pool.key(written, holder) if written else None
    target = pool.resolve(written, holder)
    if target is not None:
        if type(target).get_resource_type() != "Organization":
            return None, []
        return OrganizationFact(
            ref=key or pool.key_of(target),
            label=target.name or reference.display or key,
            identifiers=_identifiers(target.identifier),
        ), []
    named = reference_type(written) or reference.type
    if named not in (None, "Organization"):
        return None, []
    identifiers = _identifiers([reference.identifier]) if reference.identifier is not None else ()
    if identifiers or (display_suffices and reference.display):
        ref = key or _identifier_ref("Organization", reference) or "Organization (display only)"
        return OrganizationFact(ref=ref, label=reference.display or identifiers[0][1], identifiers=identifiers), []
    return None, [f"{key} was not available"] if key else []


def _active_coverages(pool: ResourcePool, patient_key: str | None) -> list[FHIRAbstractModel]:
    return [
        coverage
        for coverage in pool.of_type("Coverage")
        if coverage.status == "active"
        and (patient_key is None or _reference_key(pool, coverage.beneficiary, coverage) == patient_key)
    ]


def _payor_links(coverage: FHIRAbstractModel) -> list[Any]:
    references = list(getattr(coverage, "payor", None) or ())
    insurer = getattr(coverage, "insurer", None)
    references += [insurer] if insurer is not None else []
    references += [payment.party for payment in getattr(coverage, "paymentBy", None) or () if payment.party]
    return references


def _coverage_facts(pool: ResourcePool, patient_key: str) -> tuple[tuple[CoverageFact, ...], list[str]]:
    facts: list[CoverageFact] = []
    notes: list[str] = []
    for coverage in _active_coverages(pool, patient_key):
        payors: dict[str, OrganizationFact] = {}
        for reference in _payor_links(coverage):
            payor, payor_notes = _organization(pool, reference, coverage, display_suffices=True)
            notes.extend(payor_notes)
            if payor is not None:
                payors.setdefault(payor.ref, payor)
        order = getattr(coverage, "order", None)
        facts.append(
            CoverageFact(
                ref=pool.key_of(coverage),
                payors=tuple(payors.values()),
                type_codes=_code_pairs(_codings(coverage.type)),
                order=order if isinstance(order, int) else None,
            )
        )
    return tuple(facts), notes


# Documentation evidence


def _imaging_study_facts(pool: ResourcePool, encounter_key: str) -> tuple[ImagingStudyFact, ...]:
    return tuple(
        ImagingStudyFact(ref=pool.key_of(study), label=study.description or pool.key_of(study), status=study.status)
        for study in pool.of_type("ImagingStudy")
        if study.status not in IMAGING_STUDY_VOID and _reference_key(pool, study.encounter, study) == encounter_key
    )


def _document_facts(pool: ResourcePool, encounter_key: str) -> tuple[DocumentFact, ...]:
    """Return the encounter's current DocumentReferences: R4 ``context.encounter``, R5 a ``context`` list."""
    facts = []
    for document in pool.of_type("DocumentReference"):
        if document.status != DOCUMENT_STATUS:
            continue
        context = document.context
        if isinstance(context, list):
            links = context
        else:
            links = list(getattr(context, "encounter", None) or ()) if context is not None else []
        if not any(_reference_key(pool, link, document) == encounter_key for link in links):
            continue
        ref = pool.key_of(document)
        facts.append(
            DocumentFact(
                ref=ref,
                label=document.description or _concept_label(document.type) or ref,
                type_codes=_code_pairs(_codings(document.type)),
                doc_status=document.docStatus,
            )
        )
    return tuple(facts)


def _consent_facts(pool: ResourcePool, patient_key: str) -> tuple[ConsentFact, ...]:
    """Return the patient's active Consents: R4 ``patient``, R5 ``subject``."""
    facts = []
    for consent in pool.of_type("Consent"):
        holder = getattr(consent, "patient", None) or getattr(consent, "subject", None)
        if consent.status != "active" or _reference_key(pool, holder, consent) != patient_key:
            continue
        ref = pool.key_of(consent)
        label = next((label for label in map(_concept_label, consent.category or ()) if label), None)
        facts.append(ConsentFact(ref=ref, label=label or ref))
    return tuple(facts)


# Charges


def _charge_facts(pool: ResourcePool, encounter_key: str, rules: RuleSet) -> tuple[ChargeFact, ...]:
    """Return the encounter's ChargeItems that are not entered-in-error (contract 3.4, 5.3).

    R4 names the encounter in ``context``, R5 in ``encounter``. Modifiers come from the
    chargeitem-modifier extension first, then from a CPT expression code such as ``77317:26``.
    """
    facts = []
    for item in pool.of_type("ChargeItem"):
        target = getattr(item, "context", None) or getattr(item, "encounter", None)
        if item.status == "entered-in-error" or _reference_key(pool, target, item) != encounter_key:
            continue
        expression = next((c.code for c in _codings(item.code) if c.system == rules.systems["cpt"] and c.code), None)
        code, *expression_modifiers = expression.split(":") if expression else [None]
        modifiers = _extension_modifiers(item, rules) + [m for m in expression_modifiers if m]
        raw = pool.raw_of(item)
        period = raw.get("occurrencePeriod")
        occurrence = raw.get("occurrenceDateTime") or (period.get("start") if isinstance(period, Mapping) else None)
        quantity = item.quantity.value if item.quantity is not None else None
        facts.append(
            ChargeFact(
                ref=pool.key_of(item),
                status=item.status,
                code=code or None,
                modifiers=tuple(dict.fromkeys(modifiers)),
                occurrence=occurrence if isinstance(occurrence, str) else None,
                quantity=_whole_number(quantity) if quantity is not None else None,
            )
        )
    return tuple(facts)


def _extension_modifiers(item: FHIRAbstractModel, rules: RuleSet) -> list[str]:
    url = rules.systems["modifier_extension"]
    modifiers = []
    for extension in item.extension or ():
        if extension.url == url:
            code = next((c.code for c in _codings(extension.valueCodeableConcept) if c.code), None)
            modifiers += [code] if code else []
    return modifiers


# Small helpers over FHIR datatypes


def _typed(model: FHIRAbstractModel | None, resource_type: str) -> FHIRAbstractModel | None:
    return model if model is not None and type(model).get_resource_type() == resource_type else None


def _written(reference: Any) -> str | None:
    return reference.reference if reference is not None and reference.reference else None


def _reference_key(pool: ResourcePool, reference: Any, holder: FHIRAbstractModel) -> str | None:
    written = _written(reference)
    return pool.key(written, holder) if written else None


def _targets(pool: ResourcePool, reference: Any, holder: FHIRAbstractModel, resource_type: str, assume: bool) -> bool:
    """Tell whether a reference points to ``resource_type``: by the resolved resource, its text or ``type``."""
    target = pool.resolve(reference.reference, holder)
    if target is not None:
        return type(target).get_resource_type() == resource_type
    named = reference_type(reference.reference) or reference.type
    return named == resource_type if named else assume


def _identifier_ref(resource_type: str, reference: Any) -> str | None:
    identifier = reference.identifier
    if identifier is None or not identifier.value:
        return None
    system = f"{identifier.system}|" if identifier.system else ""
    return f"{resource_type}?identifier={system}{identifier.value}"


def _identifiers(identifiers: Iterable[Any] | None) -> tuple[Identifier, ...]:
    return tuple((item.system or "", item.value) for item in identifiers or () if item.value)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _codings(concept: Any) -> list[Any]:
    return list(concept.coding or ()) if concept is not None else []


def _code_pairs(codings: Iterable[Any]) -> tuple[Code, ...]:
    return tuple(dict.fromkeys((coding.system or "", coding.code) for coding in codings if coding.code))


def _concept_label(concept: Any) -> str | None:
    if concept is None:
        return None
    return concept.text or next((coding.display for coding in _codings(concept) if coding.display), None)
