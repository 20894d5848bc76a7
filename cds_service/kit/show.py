"""Print CDS Hooks cards for a person in a terminal (``brachy-cds invoke`` without ``--json``).

Each card: the indicator and summary, its topic and source, the detail (Markdown, shown as written),
then the suggestions with what each action would do; a ChargeItem is written as coders write it
(``77317-26``) with its date, encounter and procedures. Links and override reasons follow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

INDICATOR_COLOURS = {"info": "cyan", "warning": "yellow", "critical": "red"}
INDENT = "    "


def charge_line(resource: Mapping[str, Any]) -> str:
    """A ChargeItem's code and modifiers as on a claim line: ``77317-26``, ``77318-TC``, ``77317``."""
    codings = (resource.get("code") or {}).get("coding") or [{}]
    code = str(codings[0].get("code", "?"))
    modifiers = []
    for extension in resource.get("extension") or []:
        if str(extension.get("url", "")).endswith("/StructureDefinition/chargeitem-modifier"):
            for coding in (extension.get("valueCodeableConcept") or {}).get("coding") or []:
                modifiers.append(str(coding.get("code", "?")))
    return "-".join([code, *modifiers])


def render(body: Mapping[str, Any]) -> str:
    """The response's cards as text (ANSI colours are added; ``click.echo`` drops them off a terminal)."""
    cards = body.get("cards") or []
    if not cards:
        return "No cards: nothing to suggest for this patient or encounter.\n"
    return "\n".join(render_card(card) for card in cards)


def render_card(card: Mapping[str, Any]) -> str:
    indicator = str(card.get("indicator", "info"))
    label = click.style(f"[{indicator.upper()}]", fg=INDICATOR_COLOURS.get(indicator), bold=True)
    source = card.get("source") or {}
    topic = (source.get("topic") or {}).get("code")
    lines = [f"{label} {card.get('summary', '')}"]
    about = [f"topic {topic}"] if topic else []
    if source.get("label"):
        about.append(f"source {source['label']}")
    if about:
        lines.append(INDENT + ", ".join(about))
    detail = str(card.get("detail") or "").strip()
    if detail:
        lines.append("")
        lines += [INDENT + line if line else "" for line in detail.splitlines()]
    suggestions = card.get("suggestions") or []
    if suggestions:
        lines.append("")
        behaviour = card.get("selectionBehavior")
        lines.append(INDENT + "Suggestions" + (f" ({behaviour}):" if behaviour else ":"))
        for suggestion in suggestions:
            mark = " [recommended]" if suggestion.get("isRecommended") else ""
            lines.append(f"{INDENT}  * {suggestion.get('label', '')}{mark}")
            for action in suggestion.get("actions") or []:
                lines.append(f"{INDENT}      {describe_action(action)}")
    links = card.get("links") or []
    if links:
        lines.append("")
        lines += [f"{INDENT}Link: {link.get('label', '')} <{link.get('url', '')}>" for link in links]
    reasons = card.get("overrideReasons") or []
    if reasons:
        lines.append("")
        names = ", ".join(str(reason.get("display") or reason.get("code")) for reason in reasons)
        lines.append(f"{INDENT}Override reasons: {names}")
    return "\n".join(lines) + "\n"


def describe_action(action: Mapping[str, Any]) -> str:
    """One line per action: what would be created, updated or deleted."""
    kind = str(action.get("type", "?"))
    resource = action.get("resource")
    if isinstance(resource, Mapping) and resource.get("resourceType") == "ChargeItem":
        parts = [f"{kind} ChargeItem {charge_line(resource)}"]
        quantity = (resource.get("quantity") or {}).get("value")
        if quantity is not None:
            parts.append(f"quantity {quantity}")
        if resource.get("occurrenceDateTime"):
            parts.append(f"on {resource['occurrenceDateTime']}")
        encounter = (resource.get("context") or resource.get("encounter") or {}).get("reference")
        if encounter:
            parts.append(encounter)
        services = [s.get("reference") for s in resource.get("service") or [] if isinstance(s, Mapping)]
        if any(services):
            parts.append("for " + ", ".join(str(s) for s in services if s))
        return ", ".join(parts)
    if isinstance(resource, Mapping):
        return f"{kind} {resource.get('resourceType', 'resource')}: {action.get('description', '')}".rstrip(": ")
    target = action.get("resourceId")
    if isinstance(target, list):
        target = ", ".join(str(t) for t in target)
    text = f"{kind} {target}" if target else kind
    description = str(action.get("description") or "")
    echo = f"{kind.capitalize()} {target}" if target else ""
    if echo and description.startswith(echo):
        description = description.removeprefix(echo).strip().removeprefix("(").removesuffix(")")
    return f"{text} ({description})" if description else text
