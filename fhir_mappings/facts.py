"""Small immutable facts that fhir_mappings extracts from FHIR and the coding core consumes.

Nothing here imports fhir.resources, Flask or requests: the decision core (``cds_service.coding``)
depends on this module only, which keeps it pure (style.md, "a pure decision core").

References are normalised to ``"Type/id"`` when the resource has an id; a contained resource to its
container's key plus ``"#cid"`` (``"Procedure/p1#seed"``); otherwise to the fullUrl or raw reference
string (``"urn:uuid:..."``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

Identifier = tuple[str, str]
"""(system, value) of a FHIR Identifier; system is "" when absent."""
Code = tuple[str, str]
"""(system, code) of a FHIR Coding; system is "" when absent."""


@dataclass(frozen=True)
class PerformerFact:
    """A Procedure.performer: who took part, in which function (billing.md 2.3 GC; documentation evidence)."""

    actor_ref: str | None
    function_codes: tuple[Code, ...] = ()
    """Procedure.performer.function codes."""
    role_codes: tuple[Code, ...] = ()
    """PractitionerRole.code codes when the actor is a PractitionerRole that could be read."""


@dataclass(frozen=True)
class DeviceFact:
    """A Device linked to a brachytherapy Procedure of the encounter (contract 3.2)."""

    ref: str
    label: str
    kind: str | None = None
    """``"applicator"`` (one implied channel), ``"seed"`` (one implied source) or None."""
    type_label: str | None = None
    explicit_channels: int | None = None
    """Sum of this Device's ``channels-used`` count properties, None when it has none."""
    explicit_sources: int | None = None
    """Sum of this Device's ``sources`` count properties, None when it has none."""


@dataclass(frozen=True)
class ProcedureFact:
    """A brachytherapy Procedure of the encounter with status completed or in-progress (contract 3.1)."""

    ref: str
    label: str
    status: str
    delivery: str | None
    """From the Procedure's codes: ``"afterloading"``, ``"manual"``, ``"electronic"`` or None (codes do not say)."""
    start: str | None
    """Earliest date or dateTime of performed[x] / occurrence[x], as written in FHIR."""
    encounter_ref: str | None
    device_refs: tuple[str, ...] = ()
    """Linked Devices (focalDevice.manipulated, usedReference / used, contained), in document order."""
    location_ref: str | None = None
    codes: tuple[tuple[str, str], ...] = ()
    """(system, code) of Procedure.code and the mCODE modality/technique extension."""
    performers: tuple[PerformerFact, ...] = ()


@dataclass(frozen=True)
class LocationFact:
    """A Location that may decide the setting (contract 3.3, 5.3)."""

    ref: str
    label: str
    identifiers: tuple[Identifier, ...] = ()
    pos_codes: tuple[str, ...] = ()
    """CMS Place of Service codes among Location.type."""
    role_codes: tuple[str, ...] = ()
    """v3 RoleCode codes among Location.type (HOSP, HU, ...)."""


@dataclass(frozen=True)
class OrganizationFact:
    """An Organization: the Encounter's serviceProvider or a Coverage payor."""

    ref: str
    label: str
    identifiers: tuple[Identifier, ...] = ()


@dataclass(frozen=True)
class ChargeFact:
    """An existing ChargeItem of the encounter that is not entered-in-error (contract 3.4, 5.3)."""

    ref: str
    """``"ChargeItem/{id}"``: the resourceId a delete action names."""
    status: str
    code: str | None
    """The CPT code without modifiers (``77317`` from ``77317:26``), None when it has no CPT coding."""
    modifiers: tuple[str, ...] = ()
    """Modifiers in claim order, from the chargeitem-modifier extension and the CPT expression."""
    occurrence: str | None = None
    quantity: int | None = None
    """ChargeItem.quantity.value when it is a whole number; None when absent (one unit)."""


@dataclass(frozen=True)
class CoverageFact:
    """An active Coverage of the patient and its payor Organizations (contract 3.4)."""

    ref: str
    payors: tuple[OrganizationFact, ...] = ()
    type_codes: tuple[tuple[str, str], ...] = ()
    order: int | None = None
    """Coverage.order (1 = primary); None when absent."""


@dataclass(frozen=True)
class ImagingStudyFact:
    """An ImagingStudy of the encounter that is not cancelled or entered-in-error (documentation evidence)."""

    ref: str
    label: str
    status: str


@dataclass(frozen=True)
class DocumentFact:
    """A DocumentReference of the encounter with status current (documentation evidence)."""

    ref: str
    label: str
    type_codes: tuple[Code, ...] = ()
    doc_status: str | None = None


@dataclass(frozen=True)
class ConsentFact:
    """An active Consent of the patient (documentation evidence, contract 3.4)."""

    ref: str
    label: str


@dataclass(frozen=True)
class EncounterFacts:
    """Everything the coding core needs about one encounter, plus what could not be found."""

    encounter_ref: str
    patient_ref: str
    encounter_class: tuple[str, ...] = ()
    """Encounter.class codes (R4 one Coding, R5 a list of CodeableConcepts)."""
    procedures: tuple[ProcedureFact, ...] = ()
    """The encounter's in-scope brachytherapy Procedures, in document order."""
    devices: tuple[DeviceFact, ...] = ()
    """Distinct resolved Devices linked to those Procedures, first link first."""
    locations: tuple[LocationFact, ...] = ()
    """Resolved Locations in decision order: Encounter.location entries, then the Procedures' location."""
    service_provider: OrganizationFact | None = None
    charges: tuple[ChargeFact, ...] = ()
    coverages: tuple[CoverageFact, ...] = ()
    missing: tuple[str, ...] = field(default=())
    """Human-readable notes on references that could not be resolved (no patient identifiers)."""
    related_procedures: tuple[ProcedureFact, ...] = ()
    """The encounter's other Procedures (completed or in-progress): imaging, planning, ... (documentation evidence)."""
    imaging_studies: tuple[ImagingStudyFact, ...] = ()
    documents: tuple[DocumentFact, ...] = ()
    consents: tuple[ConsentFact, ...] = ()
    checked: tuple[str, ...] = ()
    """Resource types whose data was had (prefetch or fhirServer): evidence of these types that is absent is
    missing; evidence of other types is unknown. The Procedures and Devices the decision rests on always count."""
