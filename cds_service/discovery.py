"""The service registry: one list of CDS services that both discovery and dispatch read.

CDS Hooks 2.0 "Discovery" (https://cds-hooks.hl7.org/2.0/#discovery): each service has ``hook``,
``id``, ``title``, ``description`` and ``prefetch`` templates. Templates use only 2.0 tokens
(``{{context.patientId}}``, ``{{context.encounterId}}``, user tokens) and the portable query subset
(read, type search, reference and token parameters): reference/cds-hooks.md P1-P3.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

TOKEN = re.compile(r"\{\{\s*([A-Za-z][A-Za-z0-9_.]*)\s*\}\}")
USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}


@dataclass(frozen=True)
class PrefetchTemplate:
    """A prefetch key, its FHIR query template, and whether the decision cannot be made without it."""

    key: str
    query: str
    required: bool
    resource_type: str

    def tokens(self) -> tuple[str, ...]:
        """Return the token names the template needs (``context.patientId``, ``userPractitionerId``)."""
        return tuple(match.group(1) for match in TOKEN.finditer(self.query))

    def render(self, context: Mapping[str, Any]) -> str | None:
        """Fill the tokens from the hook context; None when a token has no value (CDS Hooks P4)."""
        missing = False

        def substitute(match: re.Match[str]) -> str:
            nonlocal missing
            value = token_value(match.group(1), context)
            if value is None:
                missing = True
                return ""
            return quote(value, safe="")

        rendered = TOKEN.sub(substitute, self.query)
        return None if missing else rendered


def token_value(token: str, context: Mapping[str, Any]) -> str | None:
    """Resolve one prefetch token against the context; None when the context lacks it."""
    if token.startswith("context."):
        value = context.get(token.removeprefix("context."))
        return value if isinstance(value, str) and value else None
    if token in USER_TOKENS:
        user = context.get("userId")
        prefix = USER_TOKENS[token] + "/"
        if isinstance(user, str) and user.startswith(prefix) and len(user) > len(prefix):
            return user.removeprefix(prefix)
    return None


@dataclass(frozen=True)
class ServiceDefinition:
    """A CDS service as discovery describes it, plus how its hook call is judged."""

    id: str
    hook: str
    title: str
    description: str
    prefetch: tuple[PrefetchTemplate, ...]
    usage_requirements: str | None = None

    def discovery_entry(self) -> dict[str, Any]:
        """Render the service for ``GET /cds-services`` (no empty values, CDS Hooks G2)."""
        entry: dict[str, Any] = {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
        }
        if self.prefetch:
            entry["prefetch"] = {template.key: template.query for template in self.prefetch}
        if self.usage_requirements:
            entry["usageRequirements"] = self.usage_requirements
        return entry


_CHARGES = PrefetchTemplate("charges", "ChargeItem?patient={{context.patientId}}", True, "ChargeItem")
_COVERAGE = PrefetchTemplate(
    "coverage", "Coverage?patient={{context.patientId}}&status=active", False, "Coverage"
)
_CONSENT = PrefetchTemplate("consent", "Consent?patient={{context.patientId}}&status=active", False, "Consent")
"""Documentation evidence (optional, like every evidence key: missing means "not checked", never a 412)."""
_USAGE = (
    "Needs read access to Encounter, Procedure, Device, Location, Organization, ChargeItem and Coverage; "
    "ImagingStudy, DocumentReference, Consent and PractitionerRole are read when allowed, as documentation "
    "and teaching evidence. Devices and Locations that Procedures reference are fetched from fhirServer by id."
)

SERVICES: tuple[ServiceDefinition, ...] = (
    ServiceDefinition(
        id="brachytherapy-planning-charge",
        hook="encounter-discharge",
        title="Brachytherapy isodose planning charge",
        description=(
            "Suggests the brachytherapy isodose planning charge (CPT 77316, 77317 or 77318 with 26, TC or "
            "global billing) for the encounter, from its brachytherapy Procedures, linked Devices and setting, "
            "warns about missing counts, wrong, duplicate or bundled charges and missing documentation, and "
            "notes what the patient's payer requires."
        ),
        prefetch=(
            PrefetchTemplate("encounter", "Encounter/{{context.encounterId}}", True, "Encounter"),
            PrefetchTemplate("procedures", "Procedure?encounter={{context.encounterId}}", True, "Procedure"),
            _CHARGES,
            _COVERAGE,
            PrefetchTemplate("imaging", "ImagingStudy?encounter={{context.encounterId}}", False, "ImagingStudy"),
            PrefetchTemplate(
                "documents",
                "DocumentReference?encounter={{context.encounterId}}&status=current",
                False,
                "DocumentReference",
            ),
            _CONSENT,
        ),
        usage_requirements=_USAGE,
    ),
    ServiceDefinition(
        id="brachytherapy-planning-review",
        hook="patient-view",
        title="Brachytherapy planning charge review",
        description=(
            "Reviews the planning charges of the patient's brachytherapy encounters (the given encounter, or "
            "every one in the look-back window) and suggests the missing or corrected 77316-77318 charge."
        ),
        prefetch=(
            PrefetchTemplate("procedures", "Procedure?patient={{context.patientId}}", True, "Procedure"),
            _CHARGES,
            _COVERAGE,
            # patient-view uses patient-scoped tokens only (contract 5.5); facts keep the encounter's own.
            PrefetchTemplate("imaging", "ImagingStudy?patient={{context.patientId}}", False, "ImagingStudy"),
            PrefetchTemplate(
                "documents",
                "DocumentReference?patient={{context.patientId}}&status=current",
                False,
                "DocumentReference",
            ),
            _CONSENT,
        ),
        usage_requirements=_USAGE,
    ),
)


def find_service(service_id: str) -> ServiceDefinition | None:
    """Return the service with this id, or None."""
    for service in SERVICES:
        if service.id == service_id:
            return service
    return None
