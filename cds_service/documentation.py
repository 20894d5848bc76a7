"""Check the documentation that supports the planning code against the encounter's FHIR evidence.

Pure like the coding core that calls it (style.md). The elements and the evidence that shows each
one are rule data (``fhir_mappings/rules/documentation.yaml``, from reference/billing.md section 5).
An element is *present* when any of its evidence alternatives is found, *missing* when every
alternative could be checked and none was found, and *unchecked* when an alternative's data
(ImagingStudy, DocumentReference, Consent) could be had neither from prefetch nor from fhirServer:
the service never calls something missing that it could not look for.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fhir_mappings.facts import EncounterFacts, ProcedureFact
from fhir_mappings.rules import DocumentationElement, Evidence, RuleSet

PRESENT = "present"
MISSING = "missing"
UNCHECKED = "unchecked"
NOT_EVIDENCE_DOC_STATUS = frozenset({"preliminary", "entered-in-error"})
"""DocumentReference.docStatus values that do not show a signed, final document."""
ALWAYS_CHECKED = frozenset({"Procedure", "Device"})
"""The data every decision rests on (a required prefetch or fetch): always looked at."""


@dataclass(frozen=True)
class ElementCheck:
    """The state of one documentation element for one encounter, with what was found."""

    element: DocumentationElement
    status: str
    """``present``, ``missing`` or ``unchecked``."""
    found: tuple[str, ...] = ()
    """References (``DocumentReference/x``) or short texts (``3 channels``) of the evidence found."""
    unchecked_types: tuple[str, ...] = ()
    """Resource types whose data was not available (status ``unchecked``)."""
    not_final: tuple[str, ...] = ()
    """DocumentReferences of the right type that are no evidence: docStatus preliminary or entered-in-error."""


def check_documentation(
    facts: EncounterFacts,
    procedures: Sequence[ProcedureFact],
    count_text: str | None,
    rules: RuleSet,
) -> tuple[ElementCheck, ...]:
    """Check every documentation element that has evidence; ``count_text`` is the count found, if any."""
    checks = []
    for element in rules.documentation:
        if not element.evidence:
            continue
        found: list[str] = []
        unchecked: list[str] = []
        for evidence in element.evidence:
            hits = _hits(evidence, facts, procedures, count_text)
            if hits:
                found.extend(hits)
            elif evidence.resource_type not in ALWAYS_CHECKED and evidence.resource_type not in facts.checked:
                unchecked.append(evidence.resource_type)
        not_final = tuple(
            d.ref
            for evidence in element.evidence
            if evidence.kind == "document-type"
            for d in facts.documents
            if _any(d.type_codes, evidence.code_pairs()) and d.doc_status in NOT_EVIDENCE_DOC_STATUS
        )
        if found:
            checks.append(ElementCheck(element, PRESENT, tuple(dict.fromkeys(found))))
        elif unchecked:
            checks.append(
                ElementCheck(element, UNCHECKED, unchecked_types=tuple(dict.fromkeys(unchecked)), not_final=not_final)
            )
        else:
            checks.append(ElementCheck(element, MISSING, not_final=not_final))
    return tuple(checks)


def _hits(
    evidence: Evidence, facts: EncounterFacts, procedures: Sequence[ProcedureFact], count_text: str | None
) -> list[str]:
    all_procedures = (*procedures, *facts.related_procedures)
    if evidence.kind == "count":
        return [count_text] if count_text else []
    if evidence.kind == "imaging-study":
        return [study.ref for study in facts.imaging_studies]
    if evidence.kind == "consent":
        return [consent.ref for consent in facts.consents]
    codes = evidence.code_pairs()
    if evidence.kind == "procedure-code":
        return [p.ref for p in all_procedures if _any(p.codes, codes)]
    if evidence.kind == "document-type":
        return [
            d.ref
            for d in facts.documents
            if _any(d.type_codes, codes) and d.doc_status not in NOT_EVIDENCE_DOC_STATUS
        ]
    if evidence.kind == "performer-function":
        return [
            performer.actor_ref or p.ref
            for p in all_procedures
            for performer in p.performers
            if _any(performer.function_codes, codes)
        ]
    raise ValueError(f"unknown evidence kind {evidence.kind!r}")  # the loader allows only known kinds


def _any(have: Iterable[tuple[str, str]], wanted: frozenset[tuple[str, str]]) -> bool:
    return any(code in wanted for code in have)
