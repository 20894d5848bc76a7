"""What the shipped samples promise (``cds_service/samples/index.json``, the README table) and the check of it.

``promised_cards(info, body)`` asserts that a response has exactly the cards the sample's README row
promises: the same topics in the same order, the same charge lines (``77317-26``; one list per
suggestion that creates charges), the same recommended flags and deletes, and a ``payer-note`` that
names the payer. A sample that promises no cards gets ``{"cards": []}`` exactly (contract 4: no noise
when the right charge is already there).
"""

from __future__ import annotations

from typing import Any

from cds_service.kit.samples import SampleInfo
from cds_service.kit.show import charge_line


def topic(card: dict[str, Any]) -> str:
    return card["source"]["topic"]["code"]


def charge_lines(card: dict[str, Any]) -> list[list[str]]:
    """Each suggestion's created charges, as coders write them."""
    lines = []
    for suggestion in card.get("suggestions", []):
        created = [charge_line(a["resource"]) for a in suggestion["actions"] if a["type"] == "create"]
        if created:
            lines.append(created)
    return lines


def recommended(card: dict[str, Any]) -> list[bool]:
    return [
        bool(s.get("isRecommended", False))
        for s in card.get("suggestions", [])
        if any(a["type"] == "create" for a in s["actions"])
    ]


def deletes(card: dict[str, Any]) -> list[str]:
    return [a["resourceId"] for s in card.get("suggestions", []) for a in s["actions"] if a["type"] == "delete"]


def promised_cards(info: SampleInfo, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Check ``body`` against the sample's promise and return its cards."""
    cards = body["cards"]
    assert [topic(card) for card in cards] == [want["topic"] for want in info.expect["cards"]], info.name
    for card, want in zip(cards, info.expect["cards"], strict=True):
        assert charge_lines(card) == want["charges"], f"{info.name}: {topic(card)}"
        if want["charges"]:
            assert recommended(card) == [want["recommended"]] * len(want["charges"]), info.name
        assert deletes(card) == want.get("deletes", []), info.name
        if "payer" in want:
            assert f"Payer {want['payer']}" in card["summary"], card["summary"]
    return cards
