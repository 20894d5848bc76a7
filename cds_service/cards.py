"""Render a coding Decision as CDS Hooks 2.0 cards.

CDS Hooks 2.0 "Card" (https://cds-hooks.hl7.org/2.0/#card-attributes): summary under 140
characters, ``uuid`` on every card and suggestion, ``selectionBehavior`` whenever there are
suggestions, no null or empty values; actions are lowercase with a description. Contract section 4
fixes the topics and the ChargeItem shape; 5.4 says which card carries the charge. Text taken from
FHIR is escaped before it goes into Markdown (EHRs render raw HTML in ``detail``: contract 5.5).

Every card's detail ends with the rules it applied, each linked to its first source with its version
and grade, and the card extension ``org.brachy-cds`` lists their ids with the rule-set version, so a
billing manager can tell which rules produced an old suggestion. Findings of rules graded L or U
appear as "verify" lines, never as a warning of their own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cds_service import coding
from cds_service.coding import ChargeLine, ChargeOption, Count, Decision, Setting
from cds_service.documentation import MISSING, UNCHECKED, ElementCheck
from cds_service.payers import PayerMatch
from fhir_mappings.facts import ChargeFact, DeviceFact
from fhir_mappings.rules import LOW_GRADES, Evidence, RuleSet

SOURCE_LABEL = "brachy-cds"
EXTENSION_KEY = "org.brachy-cds"

TOPIC_DISPLAY = {
    coding.CHARGE_SUGGESTION: "Planning charge suggestion",
    coding.COUNT_MISSING: "Channel or source count missing",
    coding.COUNT_CONFLICT: "Channel or source count conflict",
    coding.CHARGE_MISMATCH: "Planning charge mismatch",
    coding.BUNDLING_CONFLICT: "Bundled dosimetry charge",
    coding.DOCUMENTATION_GAP: "Supporting documentation missing",
    coding.PAYER_NOTE: "Payer note",
}
INDICATOR = {
    coding.CHARGE_SUGGESTION: "info",
    coding.COUNT_MISSING: "warning",
    coding.COUNT_CONFLICT: "warning",
    coding.CHARGE_MISMATCH: "warning",
    coding.BUNDLING_CONFLICT: "warning",
    coding.DOCUMENTATION_GAP: "warning",
    coding.PAYER_NOTE: "info",
}
OVERRIDE_REASONS = {
    "billed-elsewhere": "Planning billed by another entity",
    "count-differs": "Documented channel/source count differs",
    "setting-differs": "Place of service differs from the record",
    "plan-reused": "No new plan: an earlier plan was reused",
    "existing-correct": "Existing charge is correct",
    "separate-dosimetry": "77300 is for separate, unrelated dosimetry",
    "count-elsewhere": "Count is documented outside the EHR data",
    "separate-plans": "Separate plans were made for this date",
    "documented-elsewhere": "Documentation is in a record the service cannot see",
}
TOPIC_OVERRIDES = {
    coding.CHARGE_SUGGESTION: ("billed-elsewhere", "count-differs", "setting-differs", "plan-reused"),
    coding.COUNT_CONFLICT: ("count-differs", "billed-elsewhere", "plan-reused"),
    coding.CHARGE_MISMATCH: ("existing-correct", "count-differs", "setting-differs"),
    coding.BUNDLING_CONFLICT: ("separate-dosimetry",),
    coding.COUNT_MISSING: ("count-elsewhere", "plan-reused"),
    coding.DOCUMENTATION_GAP: ("documented-elsewhere",),
    coding.PAYER_NOTE: (),
}
SETTING_TEXT = {
    "hospital-outpatient": "hospital outpatient",
    "hospital-inpatient": "hospital inpatient",
    "office": "office or freestanding centre",
    "unknown": "unknown",
}
KIND_TEXT = {"channels": ("channel", "channels"), "sources": ("source", "sources")}
DELIVERY_TEXT = {"afterloading": "afterloading", "manual": "manually placed"}
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]#|~])")


def code_span(text: str) -> str:
    """Put an identifier in a Markdown code span, keeping only characters that cannot break out of it."""
    return "`" + re.sub(r"[^A-Za-z0-9_.:/#=,%+\-]", "", str(text))[:200] + "`"


def escape(text: str) -> str:
    """Escape FHIR text for Markdown that may be rendered with raw HTML enabled."""
    text = " ".join(str(text).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


@dataclass
class CardRenderer:
    """Build the cards of a Decision; the uuid factory is injected so tests compare whole cards."""

    rules: RuleSet
    canonical_base: str
    new_uuid: Callable[[], str]

    def cards(self, decision: Decision) -> list[dict[str, Any]]:
        """Return the decision's cards in topic order; an empty list when there is nothing to do."""
        return [self._card(topic, decision) for topic in decision.topics]

    def verify_topic(self, decision: Decision) -> str | None:
        """The card that carries the "verify" notes: documentation-gap when present, else the first card."""
        if not decision.verify or not decision.topics:
            return None
        return coding.DOCUMENTATION_GAP if coding.DOCUMENTATION_GAP in decision.topics else decision.topics[0]

    def _card(self, topic: str, decision: Decision) -> dict[str, Any]:
        build = {
            coding.CHARGE_SUGGESTION: self._charge_suggestion,
            coding.COUNT_CONFLICT: self._count_conflict,
            coding.CHARGE_MISMATCH: self._charge_mismatch,
            coding.COUNT_MISSING: self._count_missing,
            coding.BUNDLING_CONFLICT: self._bundling_conflict,
            coding.DOCUMENTATION_GAP: self._documentation_gap,
            coding.PAYER_NOTE: self._payer_note,
        }[topic]
        card_uuid = self.new_uuid()
        summary, detail, suggestions = build(decision)
        rule_ids = list(decision.topic_rules.get(topic, decision.rule_ids))
        if topic == self.verify_topic(decision):
            if topic != coding.DOCUMENTATION_GAP:
                detail += self._verify_text(decision)
            rule_ids += [rule_id for rule_id in decision.verify if rule_id not in rule_ids]
        detail += self._rules_text(rule_ids)
        card: dict[str, Any] = {
            "uuid": card_uuid,
            "summary": _fit(summary),
            "indicator": INDICATOR[topic],
            "detail": detail,
            "source": {
                "label": SOURCE_LABEL,
                "topic": {
                    "system": self.rules.systems["card_topic"],
                    "code": topic,
                    "display": TOPIC_DISPLAY[topic],
                },
            },
        }
        if suggestions:
            card["selectionBehavior"] = "at-most-one"
            card["suggestions"] = suggestions
        overrides = TOPIC_OVERRIDES[topic]
        if topic == coding.CHARGE_MISMATCH and decision.excess_units:
            overrides = (*overrides, "separate-plans")
        if overrides:
            card["overrideReasons"] = [
                {"system": self.rules.systems["override_reason"], "code": code, "display": OVERRIDE_REASONS[code]}
                for code in overrides
            ]
        card["extension"] = {
            EXTENSION_KEY: {
                "encounter": decision.facts.encounter_ref,
                "ruleSetVersion": self.rules.version,
                "rules": rule_ids,
            }
        }
        return card

    # -- topics -----------------------------------------------------------------------------------

    def _charge_suggestion(self, decision: Decision) -> tuple[str, str, list[dict[str, Any]]]:
        option_text = _options_text(decision.to_create)
        if any(option.recommended for option in decision.to_create):
            summary = f"Bill {option_text}: {self._level_label(decision)}, {_count_phrase(decision.count)}"
        else:
            summary = (
                f"Choose {option_text}, place of service unknown: {self._level_label(decision)}, "
                f"{_count_phrase(decision.count)}"
            )
        summary += _date_suffix(decision)
        already = ""
        if decision.existing:
            already = "\n\nAlready charged: " + ", ".join(_charge_text(c) for c in decision.existing) + "."
        detail = "\n\n".join(
            part for part in (self._count_detail(decision), self._setting_detail(decision)) if part
        ) + already
        return summary, detail, self._create_suggestions(decision, decision.to_create, ())

    def _count_conflict(self, decision: Decision) -> tuple[str, str, list[dict[str, Any]]]:
        count = decision.count
        assert count is not None
        singular, plural = KIND_TEXT[count.kind]
        summary = (
            f"Count conflict: {count.explicit} {plural} recorded, {count.implied} implied by devices; "
            f"{'bill' if decision.charge_topic == coding.COUNT_CONFLICT else 'billed from'} "
            f"{_options_text(decision.to_create or decision.options)}"
        )
        detail = (
            f"The recorded {singular} count ({count.explicit}) and the number of linked "
            f"{'applicators' if count.kind == 'channels' else 'seed devices'} ({count.implied}) disagree. "
            "The recorded count is used; check the plan and correct whichever is wrong.\n\n"
            f"{self._count_detail(decision)}\n\n{self._setting_detail(decision)}"
        )
        suggestions: list[dict[str, Any]] = []
        if decision.charge_topic == coding.COUNT_CONFLICT:
            suggestions = self._create_suggestions(decision, decision.to_create, ())
        return summary, detail, suggestions

    def _charge_mismatch(self, decision: Decision) -> tuple[str, str, list[dict[str, Any]]]:
        wrong = ", ".join(_charge_text(c) for c in decision.to_delete)
        target = _options_text(decision.options)
        wrong_codes = ", ".join(_charge_code(c) for c in decision.to_delete)
        date = _date_suffix(decision)
        units_only = bool(decision.excess_units) and not decision.to_create
        if units_only:
            summary = (
                f"Extra planning charge {wrong_codes}{date}: {self.rules.max_units_per_date} unit per date of "
                "service, remove it"
            )
            if len(summary) >= 140:
                summary = f"Extra planning charge{date}: one unit per date of service, remove it"
            kept = ", ".join(_charge_text(c) for c in decision.existing if c not in decision.to_delete)
            detail = f"Planning charge(s) to remove: {wrong}. The plan codes as **{target}**, already charged: {kept}."
        else:
            summary = f"Planning charge {wrong_codes}{date} does not match the record: replace with {target}"
            if len(summary) >= 140:
                summary = f"Planning charge{date} does not match the record: replace with {target}"
            detail = f"Existing planning charge(s): {wrong}. From the record the plan codes as **{target}**."
        if decision.excess_units:
            detail += "\n\n" + self._units_text(decision)
        detail += f"\n\n{self._count_detail(decision)}\n\n{self._setting_detail(decision)}"
        if units_only:
            return summary, detail, [self._delete_suggestion(decision.to_delete, "Remove the extra planning charge")]
        return summary, detail, self._create_suggestions(decision, decision.to_create, decision.to_delete)

    def _units_text(self, decision: Decision) -> str:
        """Why an extra planning charge goes: one unit per date of service (rule duplicate-planning-charge)."""
        units = self.rules.max_units_per_date
        rule = f"a plan is billed as {units} unit per date of service (MUE) and one plan per encounter"
        over = [c for c in decision.excess_units if c.quantity and c.quantity > units]
        extra = [c for c in decision.excess_units if c not in over]
        parts = []
        if extra:
            dates = sorted({(c.occurrence or decision.date or "")[:10] for c in decision.existing} - {""})
            where = f"for the same date of service ({dates[0]})" if len(dates) == 1 else "on this encounter"
            if len(dates) > 1:
                where += f" (dates {', '.join(dates)})"
            refs = ", ".join(code_span(c.ref) for c in extra)
            parts.append(f"{len(decision.existing)} planning charges {where}, but {rule}: remove {refs}.")
        if over:
            refs = ", ".join(_charge_text(c) for c in over)
            parts.append(f"{refs} bills more than {units} unit, but {rule}.")
        return "**Units:** " + " ".join(parts)

    def _delete_suggestion(self, charges: Sequence[ChargeFact], label: str) -> dict[str, Any]:
        return {
            "uuid": self.new_uuid(),
            "label": label + ("s" if len(charges) > 1 else ""),
            "isRecommended": True,
            "actions": [
                {"type": "delete", "description": f"Delete {c.ref} ({_charge_code(c)})", "resourceId": c.ref}
                for c in charges
            ],
        }

    def _count_missing(self, decision: Decision) -> tuple[str, str, list[dict[str, Any]]]:
        count = decision.count
        kind = "channel or source" if decision.delivery is None else KIND_TEXT[count.kind if count else "channels"][0]
        summary = f"Brachytherapy{_date_suffix(decision, ' on ')}: {kind} count missing, planning code not chosen"
        procs = ", ".join(_procedure_text(p) for p in decision.procedures)
        if decision.delivery is None:
            why = (
                "Neither the Procedure codes nor the linked Devices say whether sources were afterloaded "
                "or placed by hand."
            )
        else:
            why = (
                f"No linked Device carries an explicit {kind} count and no linked "
                f"{'applicator' if kind == 'channel' else 'seed'} Device implies one."
            )
        detail = (
            f"Brachytherapy Procedure(s): {procs}.\n\n{why} 77316, 77317 and 77318 depend on the "
            f"{kind} count, so no planning charge is suggested. Record the count (Device.property "
            f"`channels-used` or `sources` of {self.rules.systems['count_property']}) or link the "
            "applicator/seed Devices to the Procedure."
        )
        missing = _missing_text(decision)
        if missing:
            detail += f"\n\nNot available: {missing}."
        return summary, detail, []

    def _bundling_conflict(self, decision: Decision) -> tuple[str, str, list[dict[str, Any]]]:
        planning = decision.level or "77316-77318"
        bundled = self.rules.bundled_code
        summary = f"Remove {bundled}: basic dosimetry is included in brachytherapy planning ({planning})"
        refs = ", ".join(code_span(c.ref) for c in decision.bundled)
        rule = self.rules.rule("bundling-77300")
        detail = (
            f"Charge(s) {refs} bill CPT {bundled} on this brachytherapy encounter. Since 2015 the basic "
            f"dosimetry calculation is part of 77316-77318 and is not reported with them "
            f"(rule `{rule.id}` {rule.version}, [source]({rule.sources[0]}))."
        )
        actions = [
            {"type": "delete", "description": f"Delete {charge.ref} (CPT {bundled})", "resourceId": charge.ref}
            for charge in decision.bundled
        ]
        suggestion = {
            "uuid": self.new_uuid(),
            "label": f"Remove the {bundled} charge" + ("s" if len(actions) > 1 else ""),
            "isRecommended": True,
            "actions": actions,
        }
        return summary, detail, [suggestion]

    def _documentation_gap(self, decision: Decision) -> tuple[str, str, list[dict[str, Any]]]:
        gaps = decision.documentation_gaps
        what = _options_text(decision.to_create or decision.options) if decision.level else "brachytherapy planning"
        names = ", ".join(check.element.element for check in gaps)
        summary = f"Documentation missing for {what}{_date_suffix(decision)}: {names}"
        if len(summary) >= 140:
            summary = f"Documentation missing for {what}{_date_suffix(decision)}: {len(gaps)} supporting elements"
        lines = [
            "The planning charge needs these supporting elements (reference/billing.md section 5); this "
            "encounter's FHIR record does not show them:"
        ]
        for check in gaps:
            if check.element.rule_id == coding.COUNT_ELEMENT and coding.COUNT_MISSING in decision.topics:
                lines.append(f"- **{check.element.element}**: see the count-missing card.")
            else:
                lines.append(f"- **{check.element.element}**: {self._absent_text(check)}.")
        detail = "\n".join(lines) + self._verify_text(decision)
        unchecked = [c for c in decision.documentation if c.status == UNCHECKED]
        if unchecked:
            detail += "\n\nNot checked (no " + ", ".join(
                sorted({t for c in unchecked for t in c.unchecked_types})
            ) + " data in prefetch or from fhirServer): " + ", ".join(c.element.element for c in unchecked) + "."
        found = [c for c in decision.documentation if c.status not in (MISSING, UNCHECKED)]
        if found:
            detail += "\n\nFound: " + "; ".join(
                f"{c.element.element} ({', '.join(_evidence_text(ref) for ref in c.found)})" for c in found
            ) + "."
        detail += (
            "\n\nAdd the missing record, or the FHIR evidence that points to it (README, \"Rules and their "
            "sources\"), before the claim goes out."
        )
        return summary, detail, []

    def _payer_note(self, decision: Decision) -> tuple[str, str, list[dict[str, Any]]]:
        matches = decision.payers
        if len(matches) == 1:
            summary = f"Payer {_payer_title(matches[0])}: {matches[0].payer.summary}"
            if len(summary) >= 140:
                summary = f"Payer {_payer_title(matches[0])}: see the notes on prior authorisation and claim edits"
        else:
            summary = "Payers " + " and ".join(_payer_title(m) for m in matches) + ": prior authorisation and edits"
        sections = [self._payer_section(match) for match in matches]
        detail = "\n\n".join(sections)
        detail += (
            "\n\nPayer notes state only what the sources say; where they are silent on 77316-77318 the note says "
            "so. Check the payer's current policy before the claim goes out."
        )
        return summary, detail, []

    def _payer_section(self, match: PayerMatch) -> str:
        how = (
            f"its identifier {code_span(match.matched)}"
            if match.by == "identifier"
            else f"its name (\"{escape(match.matched)}\")"
        )
        table = "the deployment's payer table" if match.origin.startswith("BRACHY_CDS_PAYERS") else "the payer table"
        head = (
            f"**{match.payer.name}**{' (Medicare Advantage)' if match.medicare_advantage else ''}: payor "
            f"*{escape(match.payor.label)}* ({code_span(match.payor.ref)}) of {code_span(match.coverage_ref)}, "
            f"recognised by {how} in {table}."
        )
        stated = [note for note in match.notes if self.rules.grade(note.rule_id) not in LOW_GRADES]
        verify = [note for note in match.notes if self.rules.grade(note.rule_id) in LOW_GRADES]
        lines = [head, *(f"- {escape(note.text)} {self._note_source(note.rule_id, note.read)}" for note in stated)]
        if verify:
            lines.append("- Verify (sources graded L or U):")
            lines += [f"    - {escape(note.text)} {self._note_source(note.rule_id, note.read)}" for note in verify]
        return "\n".join(lines)

    def _note_source(self, rule_id: str, read: str) -> str:
        rule = self.rules.rule(rule_id)
        return f"([source]({rule.sources[0]}), grade {rule.grade}, read {read})"

    def _absent_text(self, check: ElementCheck) -> str:
        text = " and ".join(self._evidence_absent(evidence) for evidence in check.element.evidence)
        if check.not_final:
            text += f" (found but not final: {', '.join(code_span(ref) for ref in check.not_final)})"
        return text

    def _evidence_absent(self, evidence: Evidence) -> str:
        codes = ", ".join(code_span(entry.code) for entry in evidence.codes)
        labels = ", ".join(entry.label for entry in evidence.codes[:3]) + (", ..." if len(evidence.codes) > 3 else "")
        return {
            "count": "no channel or source count",
            "imaging-study": "no ImagingStudy of the encounter",
            "procedure-code": f"no Procedure of the encounter for {labels}",
            "consent": "no active Consent of the patient",
            "document-type": f"no current, final DocumentReference of the encounter typed {codes}",
            "performer-function": f"no Procedure performer with function {codes}",
        }[evidence.kind]

    def _verify_text(self, decision: Decision) -> str:
        """The "verify" notes: findings of rules graded L or U, never a warning of their own."""
        if not decision.verify:
            return ""
        checks = {c.element.rule_id: c for c in decision.documentation}
        lines = ["\n\n**Verify** (sources graded L or U, so not a warning on their own):"]
        for rule_id in decision.verify:
            rule = self.rules.rule(rule_id)
            if rule_id in checks:
                lines.append(f"- {checks[rule_id].element.element}: {self._absent_text(checks[rule_id])}.")
            elif rule_id == "bundling-77300" and decision.bundled:
                refs = ", ".join(code_span(c.ref) for c in decision.bundled)
                lines.append(f"- {refs} bills CPT {self.rules.bundled_code}: {rule.title}.")
            elif rule_id == "duplicate-planning-charge" and len(decision.existing) > 1:
                refs = ", ".join(_charge_text(c) for c in decision.existing)
                lines.append(f"- planning charges {refs}: {rule.title}.")
            else:
                lines.append(f"- {rule.title}.")
        return "\n".join(lines)

    def _rules_text(self, rule_ids: Sequence[str]) -> str:
        """Cite the rules a card applied: id and version linked to the first source, and the grade."""
        if not rule_ids:
            return ""
        cited = []
        for rule_id in rule_ids:
            rule = self.rules.rule(rule_id)
            cited.append(f"[{rule.id} {rule.version}]({rule.sources[0]}) ({rule.grade})")
        return f"\n\nRules: {', '.join(cited)}."

    # -- pieces -----------------------------------------------------------------------------------

    def _create_suggestions(
        self, decision: Decision, options: Sequence[ChargeOption], deletes: Sequence[ChargeFact]
    ) -> list[dict[str, Any]]:
        suggestions = []
        for option in options:
            actions: list[dict[str, Any]] = [
                {"type": "delete", "description": f"Delete {c.ref} ({_charge_code(c)})", "resourceId": c.ref}
                for c in deletes
            ]
            actions += [
                {
                    "type": "create",
                    "description": f"Create a ChargeItem for CPT {_line_description(line)}",
                    "resource": self.charge_item(decision, line),
                }
                for line in option.lines
            ]
            verb = "Replace with" if deletes else "Add"
            noun = "charges" if len(option.lines) > 1 else "charge"
            suggestion: dict[str, Any] = {
                "uuid": self.new_uuid(),
                "label": f"{verb} {noun} {_option_label(option)}",
                "actions": actions,
            }
            if option.recommended:
                suggestion["isRecommended"] = True
            suggestions.append(suggestion)
        return suggestions

    def charge_item(self, decision: Decision, line: ChargeLine) -> dict[str, Any]:
        """Build the R4 ChargeItem of a create action (contract section 4)."""
        facts = decision.facts
        resource: dict[str, Any] = {"resourceType": "ChargeItem", "status": "billable"}
        if line.modifiers:
            resource["extension"] = [
                {
                    "url": self.rules.systems["modifier_extension"],
                    "valueCodeableConcept": {
                        "coding": [{"system": self.rules.modifier_systems[modifier], "code": modifier}]
                    },
                }
                for modifier in line.modifiers
            ]
        resource["code"] = {
            "coding": [
                {
                    "system": self.rules.systems["cpt"],
                    "code": line.code,
                    "display": _capitalised(self.rules.level_labels[line.code]["label"]),
                }
            ]
        }
        resource["subject"] = {"reference": facts.patient_ref}
        resource["context"] = {"reference": facts.encounter_ref}
        if decision.date:
            resource["occurrenceDateTime"] = decision.date
        resource["quantity"] = {"value": self.rules.quantity}
        resource["service"] = [{"reference": p.ref} for p in decision.procedures]
        return resource

    def _level_label(self, decision: Decision) -> str:
        assert decision.level is not None
        return self.rules.level_labels[decision.level]["label"]

    def _count_detail(self, decision: Decision) -> str:
        count = decision.count
        if count is None or count.value is None or decision.level is None:
            return ""
        singular, plural = KIND_TEXT[count.kind]
        noun = singular if count.value == 1 else plural
        delivery = DELIVERY_TEXT.get(decision.delivery or "", "")
        if count.method == "explicit":
            lines = [
                f"- {escape(d.label)}: {(d.explicit_channels if count.kind == 'channels' else d.explicit_sources)} "
                f"{plural} recorded ({code_span(d.ref)})"
                for d in count.explicit_devices
            ]
            head = f"**{count.value} {delivery} {noun}** from the explicit count on the linked Device(s):"
        else:
            what = "applicator" if count.kind == "channels" else "seed Device"
            lines = [_device_line(d) for d in count.implied_devices]
            head = (
                f"**{count.value} {delivery} {noun}** counted from {count.implied} linked {what}"
                f"{'s' if count.implied != 1 else ''} (one {singular} each, each Device once per encounter):"
            )
        band = next(b for b in self.rules.level_bands[count.kind] if b.code == decision.level)
        band_text = f"{band.minimum}-{band.maximum}" if band.maximum and band.maximum != band.minimum else (
            f"{band.minimum}" if band.maximum else f"more than {band.minimum - 1}"
        )
        procs = ", ".join(_procedure_text(p) for p in decision.procedures)
        rule = self.rules.rule("planning-levels")
        text = "\n".join([head, *lines])
        text += (
            f"\n\nProcedure(s): {procs}. {band_text} {plural} -> **{decision.level}** "
            f"({self.rules.level_labels[decision.level]['label']}; rule `{rule.id}` {rule.version})."
        )
        missing = _missing_text(decision)
        if missing:
            text += f"\n\nNot available: {missing}."
        return text

    def _setting_detail(self, decision: Decision) -> str:
        setting = decision.setting
        evidence = _setting_evidence(setting)
        if setting.name == "unknown":
            return (
                f"**Setting unknown:** {evidence} Choose professional only (26) when a hospital bills the "
                "technical part, or global when one entity owns the equipment, employs the planning staff and "
                "supplies the physician."
            )
        modifiers = decision.options[0].text() if decision.options else ""
        text = f"**Setting:** {evidence} -> {SETTING_TEXT[setting.name]}"
        if setting.pos and setting.evidence not in ("location-pos", "site-table"):
            text += f" (POS {setting.pos})"
        entry = self.rules.modifier_lines[setting.modifier_key]
        if setting.name.startswith("hospital"):
            text += f": professional component only, **{modifiers}**."
            if entry.get("technical_note") == "inpatient":
                text += " The hospital bills the technical part through its inpatient (Part A) claim."
            else:
                text += " The hospital bills the technical part on its institutional claim (UB-04 / 837I)."
        elif setting.billing == "split":
            text += f" with split billing: **{modifiers}** (physician 26, centre TC)."
        else:
            text += f", global billing: **{modifiers}**, no modifier."
        return text + self._teaching_text(decision)

    def _teaching_text(self, decision: Decision) -> str:
        teaching = decision.teaching
        if teaching is None:
            return ""
        gc, after = self.rules.teaching.modifier, self.rules.teaching.after
        if teaching.applied:
            who = ", ".join(code_span(ref) for ref in teaching.residents)
            return (
                f" The site table marks this site as a teaching site and a resident took part ({who}): **{gc}** "
                f"follows {after}. Bill {gc} only when the teaching-physician rules were met (for radiological "
                "services the teaching physician personally reviews the resident's work)."
            )
        return (
            f" The site table marks this site as a teaching site, but no Procedure performer is recognised as "
            f"a resident, so no {gc}."
        )

    # keep the class small: free functions below do the text formatting


def _setting_evidence(setting: Setting) -> str:
    if setting.evidence == "site-table" and setting.site is not None:
        where = setting.location or setting.organization
        site_name = f" ({escape(setting.site.name)})" if setting.site.name else ""
        return (
            f"{_where_text(where)} matches site-table entry {escape(setting.site.value)}{site_name}, "
            f"POS {setting.pos}"
        )
    if setting.evidence == "location-pos":
        return f"{_where_text(setting.location)} is typed CMS Place of Service {setting.pos}"
    if setting.evidence == "location-role":
        return f"{_where_text(setting.location)} is typed v3 RoleCode {setting.role_code}"
    if setting.evidence == "encounter-class":
        return f"the Encounter class is {setting.encounter_class} (inpatient)"
    return "no site-table entry, Location type or inpatient Encounter class identifies the place of service."


def _where_text(where: Any) -> str:
    if where is None:
        return "the encounter"
    kind = where.ref.split("/", 1)[0] if "/" in where.ref else "Resource"
    return f"{kind} *{escape(where.label)}*"


def _device_line(device: DeviceFact) -> str:
    kind = f" ({escape(device.type_label)})" if device.type_label and device.type_label != device.label else ""
    return f"- {escape(device.label)}{kind} ({code_span(device.ref)})"


def _procedure_text(procedure: Any) -> str:
    return f"{escape(procedure.label)} ({code_span(procedure.ref)})"


def _missing_text(decision: Decision) -> str:
    return "; ".join(escape(note) for note in decision.facts.missing)


def _count_phrase(count: Count | None) -> str:
    if count is None or count.value is None:
        return "count unknown"
    singular, plural = KIND_TEXT[count.kind]
    return f"{count.value} {singular if count.value == 1 else plural}"


def _date_suffix(decision: Decision, joiner: str = " on ") -> str:
    return f"{joiner}{decision.date}" if decision.date else ""


def _options_text(options: Sequence[ChargeOption]) -> str:
    if len(options) == 1:
        return _option_label(options[0])
    return " or ".join(_option_label(option) for option in options)


def _option_label(option: ChargeOption) -> str:
    if len(option.lines) == 1 and not option.lines[0].modifiers:
        return f"{option.lines[0].code} (global)"
    return option.text()


def _line_description(line: ChargeLine) -> str:
    if not line.modifiers:
        return f"{line.code}, global (no modifier)"
    return f"{line.code} with modifier {', '.join(line.modifiers)}"


_CODE_TEXT = re.compile(r"[A-Za-z0-9]{1,8}")


def _charge_code(charge: ChargeFact) -> str:
    """An existing charge as coders write it (77317-26), for summaries and action descriptions too.

    Its code and modifiers are free text from the FHIR data, and a summary is not escaped (plain
    text, CDS Hooks 2.0): anything that does not look like a code is shown as "?".
    """
    units = f" x{charge.quantity}" if charge.quantity and charge.quantity > 1 else ""
    parts = (charge.code or "?", *charge.modifiers)
    return "-".join(part if _CODE_TEXT.fullmatch(part) else "?" for part in parts) + units


def _payer_title(match: PayerMatch) -> str:
    """The payer's name, with the alias that matched when the name does not show it, and Medicare Advantage."""
    extra = []
    if match.by == "name" and match.matched.lower() not in match.payer.name.lower():
        extra.append(match.matched)
    if match.medicare_advantage:
        extra.append("Medicare Advantage")
    return match.payer.name + (f" ({', '.join(extra)})" if extra else "")


def _evidence_text(found: str) -> str:
    """A found piece of evidence: a reference in a code span, a count as it is."""
    return code_span(found) if "/" in found and " " not in found else escape(found)


def _charge_text(charge: ChargeFact) -> str:
    return f"{escape(_charge_code(charge))} ({code_span(charge.ref)})"


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fit(summary: str) -> str:
    """Keep the summary under 140 characters (CDS Hooks 2.0 Card.summary)."""
    summary = " ".join(summary.split())
    return summary if len(summary) < 140 else summary[:136].rstrip() + "..."
