"""Check a CDS Hooks 2.0 response against the rules of reference/cds-hooks.md (test ids in messages).

Used on every hook response the test suite receives (see ``conftest.CheckedClient``): summary
under 140 characters, no null or empty values (G2), ``uuid`` and ``source.label`` on every card,
``selectionBehavior`` with suggestions (cds-resp-6), at most one ``isRecommended`` for
``at-most-one`` (cds-resp-1), lowercase action types with a description (cds-resp-5), ``resourceId``
on delete (cds-resp-2), override reasons with display (cds-resp-4), and every created ChargeItem
valid R4 (``fhir.resources.R4B``) with the contract's shape.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.chargeitem import ChargeItem

TOPIC_CODES = {
    "charge-suggestion",
    "count-missing",
    "count-conflict",
    "charge-mismatch",
    "bundling-conflict",
    "documentation-gap",
    "payer-note",
}
CPT = "http://www.ama-assn.org/go/cpt"
MODIFIER_URL_SUFFIX = "/StructureDefinition/chargeitem-modifier"


class NonConformant(AssertionError):
    """The response breaks a CDS Hooks 2.0 or contract rule."""


def check_response(body: Any) -> None:
    """Raise NonConformant naming the rule and the JSON path of the first problem found."""
    if not isinstance(body, dict) or not isinstance(body.get("cards"), list):
        raise NonConformant("R1: the body must be an object with a 'cards' array")
    _no_empty(body, "$", allow_empty_keys={"cards"})
    for index, card in enumerate(body["cards"]):
        check_card(card, f"$.cards[{index}]")


def check_card(card: dict[str, Any], path: str) -> None:
    """Check one card (CDS Hooks 2.0 "Card Attributes" and contract section 4)."""
    _require(isinstance(card.get("uuid"), str) and card["uuid"], f"{path}.uuid: required for feedback")
    summary = card.get("summary")
    _require(isinstance(summary, str) and 0 < len(summary) < 140, f"{path}.summary: must be 1-139 characters")
    _require(card.get("indicator") in ("info", "warning", "critical"), f"{path}.indicator: info|warning|critical")
    source = card.get("source")
    _require(isinstance(source, dict) and isinstance(source.get("label"), str), f"{path}.source.label: required")
    topic = source.get("topic")
    _require(
        isinstance(topic, dict) and topic.get("code") in TOPIC_CODES and str(topic.get("system", "")).endswith(
            "/CodeSystem/card-topic"),
        f"{path}.source.topic: a contract topic Coding",
    )
    if "detail" in card:
        _require(isinstance(card["detail"], str), f"{path}.detail: Markdown string")
    suggestions = card.get("suggestions")
    if suggestions is not None:
        _require(card.get("selectionBehavior") in ("at-most-one", "any"), f"{path}: selectionBehavior required "
                 "with suggestions (cds-resp-6)")
        recommended = [s for s in suggestions if s.get("isRecommended") is True]
        if card["selectionBehavior"] == "at-most-one":
            _require(len(recommended) <= 1, f"{path}: at most one isRecommended with at-most-one (cds-resp-1)")
        for s_index, suggestion in enumerate(suggestions):
            check_suggestion(suggestion, f"{path}.suggestions[{s_index}]")
    else:
        _require("selectionBehavior" not in card, f"{path}: selectionBehavior without suggestions")
    for r_index, reason in enumerate(card.get("overrideReasons", [])):
        _require(
            all(isinstance(reason.get(k), str) and reason[k] for k in ("system", "code", "display")),
            f"{path}.overrideReasons[{r_index}]: Coding with system, code and display (cds-resp-4)",
        )


def check_suggestion(suggestion: dict[str, Any], path: str) -> None:
    """Check a suggestion and its actions (CDS Hooks 2.0 "Suggestion", "Action")."""
    _require(isinstance(suggestion.get("uuid"), str) and suggestion["uuid"], f"{path}.uuid: required")
    _require(isinstance(suggestion.get("label"), str) and suggestion["label"], f"{path}.label: required")
    actions = suggestion.get("actions")
    _require(isinstance(actions, list) and actions, f"{path}.actions: a non-empty list")
    for a_index, action in enumerate(actions):
        where = f"{path}.actions[{a_index}]"
        _require(action.get("type") in ("create", "update", "delete"), f"{where}.type: lowercase create|update|delete")
        _require(isinstance(action.get("description"), str) and action["description"],
                 f"{where}.description: required (cds-resp-5)")
        if action["type"] == "delete":
            _require(isinstance(action.get("resourceId"), str) and "/" in action["resourceId"],
                     f"{where}.resourceId: a relative reference for delete (cds-resp-2)")
        else:
            _require(isinstance(action.get("resource"), dict), f"{where}.resource: a FHIR resource object")
            if action["resource"].get("resourceType") == "ChargeItem":
                check_charge_item(action["resource"], f"{where}.resource")


def check_charge_item(resource: dict[str, Any], path: str) -> None:
    """Validate a suggested ChargeItem with fhir.resources R4B and the contract's shape (section 4)."""
    try:
        ChargeItem.model_validate(resource)
    except ValueError as exc:
        raise NonConformant(f"{path}: not a valid R4 ChargeItem: {exc}") from None
    _require(resource.get("status") == "billable", f"{path}.status: billable")
    codings = resource["code"]["coding"]
    _require(len(codings) == 1 and codings[0]["system"] == CPT and codings[0]["code"] in {"77316", "77317", "77318"},
             f"{path}.code: one CPT 77316-77318 coding")
    _require(resource.get("quantity") == {"value": 1}, f"{path}.quantity: value 1")
    _require(str(resource["subject"]["reference"]).startswith("Patient/"), f"{path}.subject: the Patient")
    _require(str(resource["context"]["reference"]).startswith("Encounter/"), f"{path}.context: the Encounter")
    _require(all(str(s["reference"]).startswith("Procedure/") for s in resource.get("service", [])) and
             resource.get("service"), f"{path}.service: the brachytherapy Procedures")
    for e_index, extension in enumerate(resource.get("extension", [])):
        _require(extension["url"].endswith(MODIFIER_URL_SUFFIX), f"{path}.extension[{e_index}]: modifier url")
        coding = extension["valueCodeableConcept"]["coding"][0]
        expected = CPT if coding["code"] == "26" else "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
        _require(coding["system"] == expected, f"{path}.extension[{e_index}]: modifier system")


def _no_empty(value: Any, path: str, allow_empty_keys: set[str] = frozenset()) -> None:
    if value is None:
        raise NonConformant(f"G2: {path} is null")
    if isinstance(value, dict):
        _require(bool(value), f"G2: {path} is an empty object")
        for key, item in value.items():
            if key in allow_empty_keys and item == []:
                continue
            _no_empty(item, f"{path}.{key}")
    elif isinstance(value, list):
        _require(bool(value), f"G2: {path} is an empty array")
        for index, item in enumerate(value):
            _no_empty(item, f"{path}[{index}]")
    elif isinstance(value, str):
        _require(value != "", f"G2: {path} is an empty string")


def _require(condition: Any, message: str) -> None:
    if not condition:
        raise NonConformant(message)
