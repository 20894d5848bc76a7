"""The documentation check: present, missing or not checked, from the FHIR evidence in documentation.yaml."""

from __future__ import annotations

from cds_service.documentation import MISSING, PRESENT, UNCHECKED, check_documentation
from fhir_mappings.facts import (
    ConsentFact,
    DocumentFact,
    EncounterFacts,
    ImagingStudyFact,
    PerformerFact,
    ProcedureFact,
)
from fhir_mappings.rules import load_rules

RULES = load_rules()
DOC = "https://brachy-cds.org/fhir/CodeSystem/brachytherapy-documentation"
ROLE = "https://brachy-cds.org/fhir/CodeSystem/brachytherapy-role"
SCT = "http://snomed.info/sct"
HDR = ProcedureFact("Procedure/hdr", "HDR", "completed", "afterloading", "2026-10-14", "Encounter/e1")
EVIDENCE_TYPES = ("ImagingStudy", "DocumentReference", "Consent")


def facts(**kwargs) -> EncounterFacts:
    base = {"encounter_ref": "Encounter/e1", "patient_ref": "Patient/p1", "procedures": (HDR,)}
    base.update(kwargs)
    return EncounterFacts(**base)


def states(encounter: EncounterFacts, count: str | None = "3 channels, implied") -> dict[str, str]:
    checks = check_documentation(encounter, encounter.procedures, count, RULES)
    return {check.element.rule_id.removeprefix("documentation-"): check.status for check in checks}


def test_only_elements_with_evidence_are_checked():
    assert list(states(facts(checked=EVIDENCE_TYPES))) == ["count", "plan-approval", "dosimetry-record", "imaging",
                                                           "consent"]


def test_everything_checked_and_absent_is_missing_except_the_count():
    assert states(facts(checked=EVIDENCE_TYPES)) == {
        "count": PRESENT,
        "plan-approval": MISSING,
        "dosimetry-record": MISSING,
        "imaging": MISSING,
        "consent": MISSING,
    }
    assert states(facts(checked=EVIDENCE_TYPES), count=None)["count"] == MISSING


def test_evidence_that_could_not_be_had_is_unchecked_not_missing():
    assert states(facts()) == {
        "count": PRESENT,
        "plan-approval": UNCHECKED,  # no DocumentReference data, no performer evidence
        "dosimetry-record": UNCHECKED,
        "imaging": UNCHECKED,  # no ImagingStudy data, no imaging Procedure
        "consent": UNCHECKED,
    }


def test_complete_evidence_from_resources():
    encounter = facts(
        checked=EVIDENCE_TYPES,
        imaging_studies=(ImagingStudyFact("ImagingStudy/ct", "CT pelvis", "available"),),
        documents=(
            DocumentFact("DocumentReference/a", "Approval", ((DOC, "plan-approval"),), "final"),
            DocumentFact("DocumentReference/d", "Dosimetry", ((DOC, "dosimetry-record"),)),
        ),
        consents=(ConsentFact("Consent/c", "Consent"),),
    )
    checks = {c.element.rule_id: c for c in check_documentation(encounter, encounter.procedures, "3 channels", RULES)}
    assert {rule_id: check.status for rule_id, check in checks.items()} == dict.fromkeys(checks, PRESENT)
    assert checks["documentation-plan-approval"].found == ("DocumentReference/a",)
    assert checks["documentation-imaging"].found == ("ImagingStudy/ct",)


def test_a_preliminary_document_is_no_evidence():
    encounter = facts(
        checked=EVIDENCE_TYPES,
        documents=(DocumentFact("DocumentReference/a", "Approval", ((DOC, "plan-approval"),), "preliminary"),),
    )
    [approval] = [c for c in check_documentation(encounter, encounter.procedures, None, RULES)
                  if c.element.rule_id == "documentation-plan-approval"]
    assert (approval.status, approval.not_final) == (MISSING, ("DocumentReference/a",))


def test_performer_functions_and_imaging_procedures_are_evidence_without_the_optional_data():
    hdr = ProcedureFact(
        "Procedure/hdr", "HDR", "completed", "afterloading", "2026-10-14", "Encounter/e1",
        performers=(PerformerFact("Practitioner/ro", ((ROLE, "plan-approver"),)),
                    PerformerFact(None, ((ROLE, "dosimetrist"),))),
    )
    ct = ProcedureFact("Procedure/ct", "CT", "completed", None, "2026-10-14", "Encounter/e1",
                       codes=((SCT, "77477000"),))
    encounter = facts(procedures=(hdr,), related_procedures=(ct,))
    assert states(encounter) == {
        "count": PRESENT,
        "plan-approval": PRESENT,
        "dosimetry-record": PRESENT,  # the performer without an actor is named by its Procedure
        "imaging": PRESENT,
        "consent": UNCHECKED,
    }
