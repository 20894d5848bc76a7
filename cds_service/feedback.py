"""Parse a CDS Hooks 2.0 feedback body into typed FeedbackItems at the edge.

CDS Hooks 2.0 "Feedback" (https://cds-hooks.hl7.org/2.0/#feedback, S2 L827-926): the body is
``{"feedback": [...]}``; each item has ``card`` (the card uuid), ``outcome`` ``accepted`` or
``overridden``, ``acceptedSuggestions`` (required when accepted), an optional ``overrideReason``
and ``outcomeTimestamp`` (RFC 3339 section 5.6). Unknown keys are tolerated. A malformed body is a
400 whose message names the field and the item index, never a value (comments may hold patient data).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from cds_service.errors import BadRequest

OUTCOMES = ("accepted", "overridden")
RFC3339_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


@dataclass(frozen=True)
class Coding:
    """The override reason the user picked (CDS Hooks 2.0 "Coding": ``code`` and ``system`` required)."""

    code: str
    system: str
    display: str | None = None


@dataclass(frozen=True)
class FeedbackItem:
    """One validated feedback entry; ``outcome_timestamp`` is timezone-aware UTC."""

    card: str
    outcome: Literal["accepted", "overridden"]
    outcome_timestamp: datetime
    accepted_suggestions: tuple[str, ...] = ()
    override_reason: Coding | None = None
    user_comment: str | None = None


def parse_feedback(body: Any) -> list[FeedbackItem]:
    """Validate the JSON body of ``POST /cds-services/{id}/feedback``; raise BadRequest naming the field.

    Tolerant where the spec leaves room: ``acceptedSuggestions`` is ignored on an overridden card and
    ``overrideReason`` on an accepted one.
    """
    if not isinstance(body, dict):
        raise BadRequest("The feedback body must be a JSON object")
    entries = body.get("feedback")
    if not isinstance(entries, list) or not entries:
        raise BadRequest("'feedback' is required and must be a non-empty array")
    return [_item(entry, f"feedback[{index}]") for index, entry in enumerate(entries)]


def _item(entry: Any, where: str) -> FeedbackItem:
    if not isinstance(entry, dict):
        raise BadRequest(f"{where} must be an object")
    card = entry.get("card")
    if not isinstance(card, str) or not card.strip():
        raise BadRequest(f"{where}.card is required and must be a non-empty string")
    outcome = entry.get("outcome")
    if outcome not in OUTCOMES:
        raise BadRequest(f"{where}.outcome is required and must be 'accepted' or 'overridden'")
    timestamp = _timestamp(entry.get("outcomeTimestamp"), f"{where}.outcomeTimestamp")
    if outcome == "accepted":
        return FeedbackItem(card, "accepted", timestamp, _accepted(entry.get("acceptedSuggestions"), where))
    reason, comment = _override_reason(entry.get("overrideReason"), f"{where}.overrideReason")
    return FeedbackItem(card, "overridden", timestamp, override_reason=reason, user_comment=comment)


def _accepted(value: Any, where: str) -> tuple[str, ...]:
    """Read ``acceptedSuggestions``: required for an accepted card, a non-empty array of ``{id}``."""
    if not isinstance(value, list) or not value:
        raise BadRequest(f"{where}.acceptedSuggestions is required for an accepted card and must be a non-empty array")
    ids = []
    for index, suggestion in enumerate(value):
        suggestion_id = suggestion.get("id") if isinstance(suggestion, dict) else None
        if not isinstance(suggestion_id, str) or not suggestion_id.strip():
            raise BadRequest(f"{where}.acceptedSuggestions[{index}].id is required and must be a non-empty string")
        ids.append(suggestion_id)
    return tuple(ids)


def _override_reason(value: Any, where: str) -> tuple[Coding | None, str | None]:
    """Read the optional OverrideReason: ``reason`` (a Coding) and ``userComment``, both optional."""
    if value is None:
        return None, None
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be an object")
    comment = value.get("userComment")
    if comment is not None and not isinstance(comment, str):
        raise BadRequest(f"{where}.userComment must be a string")
    reason = value.get("reason")
    if reason is None:
        return None, comment
    if not isinstance(reason, dict):
        raise BadRequest(f"{where}.reason must be a Coding object")
    fields = {}
    for name in ("code", "system"):
        text = reason.get(name)
        if not isinstance(text, str) or not text.strip():
            raise BadRequest(f"{where}.reason.{name} is required and must be a non-empty string")
        fields[name] = text
    display = reason.get("display")
    if display is not None and not isinstance(display, str):
        raise BadRequest(f"{where}.reason.display must be a string")
    return Coding(fields["code"], fields["system"], display), comment


def _timestamp(value: Any, where: str) -> datetime:
    """Parse an RFC 3339 date-time with a time zone (CDS Hooks 2.0: ``outcomeTimestamp``) into UTC."""
    message = f"{where} is required and must be an RFC 3339 date-time with a time zone"
    if not isinstance(value, str) or not RFC3339_DATE_TIME.match(value):
        raise BadRequest(message)
    try:
        moment = datetime.fromisoformat(value[:10] + "T" + value[11:].upper())
    except ValueError:
        raise BadRequest(message) from None
    return moment.astimezone(UTC)
