"""Write the rule set as the Markdown tables of the README section "Rules and their sources".

``brachy-cds rules --markdown`` prints them; ``tests/test_rules.py`` checks that the README holds
exactly this text, so the README cannot drift from the rule files.
"""

from __future__ import annotations

from fhir_mappings.rules import Evidence, RuleSet

EVIDENCE_TEXT = {
    "count": "the channel/source count the level was chosen from (Device count property or linked applicator/seed "
    "Devices)",
    "imaging-study": "an `ImagingStudy` of the encounter (`ImagingStudy.encounter`; status not cancelled or "
    "entered-in-error)",
    "procedure-code": "a `Procedure` of the encounter (completed or in-progress) coded",
    "consent": "an active `Consent` of the patient (R4 `patient`, R5 `subject`)",
    "document-type": "a `DocumentReference` of the encounter (R4 `context.encounter`, R5 `context`), status "
    "`current`, docStatus not `preliminary`/`entered-in-error`, `type` coded",
    "performer-function": "a `Procedure.performer` of the encounter whose `function` is coded",
}


def rules_table(rules: RuleSet) -> str:
    """One row per rule: id, version, grade, effective date, file, what it says and its sources."""
    lines = [
        "| id | version | grade | effective | file | rule | sources |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for rule in rules.rules:
        sources = " ".join(f"[{number}]({url})" for number, url in enumerate(rule.sources, start=1))
        title = rule.title.replace("|", "/")
        lines.append(
            f"| `{rule.id}` | {rule.version} | {rule.grade} | {rule.effective} | {rule.file} | {title} | {sources} |"
        )
    return "\n".join(lines)


def evidence_table(rules: RuleSet) -> str:
    """One row per documentation element: grade and the FHIR evidence that shows it (any one suffices)."""
    lines = [
        "| element | rule | grade | when missing | FHIR evidence (any one) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for element in rules.documentation:
        if element.evidence:
            evidence = "; or ".join(_evidence(item) for item in element.evidence)
            effect = "documentation-gap card" if element.gap == "warning" else "verify note"
            if element.gap_basis:
                effect += f" ({element.gap_basis})"
        else:
            evidence = f"not checked: {element.not_checked}"
            effect = "-"
        grade = rules.grade(element.rule_id)
        lines.append(f"| {element.element} | `{element.rule_id}` | {grade} | {effect} | {evidence} |")
    return "\n".join(lines)


def _evidence(item: Evidence) -> str:
    text = EVIDENCE_TEXT[item.kind]
    if item.codes:
        parts = []
        for system in dict.fromkeys(entry.system for entry in item.codes):
            codes = ", ".join(f"`{entry.code}` ({entry.label})" for entry in item.codes if entry.system == system)
            parts.append(f"{codes} in `{system}`")
        text += " " + ", or ".join(parts)
    return text
