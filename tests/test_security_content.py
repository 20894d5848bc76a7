"""Malicious FHIR content never reaches the EHR's screen as markup (issue 4; contract 5.5).

EHRs and the CDS Hooks sandbox render card ``detail`` Markdown with raw HTML, and some may show
more than they should: HTML and Markdown links are planted in every free-text field of a scenario's
prefetch (names, displays, texts, an existing charge's modifier) and must come back inert
everywhere in the response: escaped in ``detail``, left out of ``summary``, labels and actions.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

SCENARIOS = Path(__file__).parent / "fixtures" / "scenarios"
HTML = '<img src=x onerror="alert(1)">'
LINK = "[click here](javascript:alert(1))"
TEXT_FIELDS = {"name", "display", "text", "description", "comment", "userSelected-text"}


def plant(node: Any, payload: str) -> int:
    """Append ``payload`` to every free-text field below ``node``; return how many were changed."""
    changed = 0
    if isinstance(node, list):
        return sum(plant(item, payload) for item in node)
    if isinstance(node, dict):
        for key, value in node.items():
            if key in TEXT_FIELDS and isinstance(value, str):
                node[key] = f"{value} {payload}"
                changed += 1
            else:
                changed += plant(value, payload)
    return changed


def unescaped_payload_places(body: dict[str, Any], payload: str) -> list[str]:
    """Where in the response the payload appears as it was planted."""
    places = []
    for index, card in enumerate(body["cards"]):
        for field in ("summary", "detail"):
            if payload in card.get(field, ""):
                places.append(f"cards[{index}].{field}")
        for suggestion in card.get("suggestions", []):
            if payload in suggestion.get("label", ""):
                places.append(f"cards[{index}].suggestions.label")
            for action in suggestion.get("actions", []):
                if payload in action.get("description", ""):
                    places.append(f"cards[{index}].actions.description")
    return places


@pytest.mark.parametrize("payload", [HTML, LINK], ids=["html", "markdown-link"])
@pytest.mark.parametrize(
    "scenario", ["r4-mismatch-missing-26", "r4-markup-in-names-is-escaped", "r4-pos11-split-site-table-26-and-tc"]
)
def test_planted_markup_comes_back_inert(make_app, scenario, payload):
    request = json.loads((SCENARIOS / scenario / "request.json").read_text())
    assert plant(request["prefetch"], payload) >= 3
    config = {}
    if (SCENARIOS / scenario / "sites.yaml").exists():
        config["BRACHY_CDS_SITES"] = str(SCENARIOS / scenario / "sites.yaml")
    response = make_app(config).test_client().post("/cds-services/brachytherapy-planning-charge", json=request)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["cards"], "the scenario must still produce cards for the check to mean anything"
    assert unescaped_payload_places(body, payload) == []
    text = json.dumps(body)  # in JSON text, Markdown's escaped "\\]" reads "\\\\]"
    assert "<img" not in text
    assert not re.search(r"(?<!\\\\)\]\(javascript:", text)


def test_an_existing_charge_with_markup_for_a_modifier_is_shown_as_a_question_mark(make_app):
    request = json.loads((SCENARIOS / "r4-mismatch-missing-26" / "request.json").read_text())
    charge = request["prefetch"]["charges"]["entry"][0]["resource"]
    charge["code"]["coding"][0]["code"] = f"77317:{HTML}"
    response = make_app().test_client().post("/cds-services/brachytherapy-planning-charge", json=request)
    assert response.status_code == 200, response.get_data(as_text=True)
    card = response.get_json()["cards"][0]
    assert card["summary"].startswith("Planning charge 77317-? ")
    assert "Existing planning charge(s): 77317-? (`ChargeItem/ci-2`)" in card["detail"]
    assert "img" not in json.dumps(card)
