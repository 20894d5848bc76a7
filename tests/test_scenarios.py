"""Whole-response scenarios: each folder's request.json is answered and compared to expected.json.

Every folder also has a hand-written ``scenario.json`` (topics, charge lines, deletes, the payer a
payer-note names, the rule ids the cards must cite) checked independently of the stored response,
and each response passes the CDS Hooks conformance checks. A folder's ``sites.yaml`` and
``payers.yaml`` become ``BRACHY_CDS_SITES`` and ``BRACHY_CDS_PAYERS``.
``BRACHY_CDS_WRITE_EXPECTED=1`` writes a missing expected.json for a person to review.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
from pathlib import Path

import pytest

from tests.cds_conformance import check_response

SCENARIO_DIR = Path(__file__).parent / "fixtures" / "scenarios"
SCENARIOS = sorted(path for path in SCENARIO_DIR.iterdir() if (path / "request.json").exists())


def uuid_counter():
    """Deterministic uuids so whole cards can be compared."""
    numbers = itertools.count(1)
    return lambda: f"00000000-0000-4000-8000-{next(numbers):012d}"


def charge_lines(body: dict) -> list[list[str]]:
    """Each suggestion's created charges, written as coders write them (77317-26)."""
    lines = []
    for card in body["cards"]:
        for suggestion in card.get("suggestions", []):
            created = []
            for action in suggestion["actions"]:
                if action["type"] != "create":
                    continue
                resource = action["resource"]
                code = resource["code"]["coding"][0]["code"]
                modifiers = [e["valueCodeableConcept"]["coding"][0]["code"] for e in resource.get("extension", [])]
                created.append("-".join([code, *modifiers]))
            if created:
                lines.append(created)
    return lines


def deletes(body: dict) -> list[str]:
    return [
        action["resourceId"]
        for card in body["cards"]
        for suggestion in card.get("suggestions", [])
        for action in suggestion["actions"]
        if action["type"] == "delete"
    ]


def test_there_are_enough_scenarios():
    assert len(SCENARIOS) >= 20
    assert sum(1 for path in SCENARIOS if path.name.startswith("r5-")) >= 3


@pytest.mark.parametrize("folder", SCENARIOS, ids=lambda path: path.name)
def test_scenario(folder: Path, tmp_path: Path, make_app):
    meta = json.loads((folder / "scenario.json").read_text())
    request = json.loads((folder / "request.json").read_text())
    config = {"BRACHY_CDS_AUTH": "off", "BRACHY_CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    if (folder / "sites.yaml").exists():
        config["BRACHY_CDS_SITES"] = str(folder / "sites.yaml")
    if (folder / "payers.yaml").exists():
        config["BRACHY_CDS_PAYERS"] = str(folder / "payers.yaml")
    now = dt.datetime.fromisoformat(meta.get("now", "2026-10-20T12:00:00+00:00").replace("Z", "+00:00"))
    app = make_app(config, new_uuid=uuid_counter(), clock=now.timestamp)
    response = app.test_client().post(f"/cds-services/{meta['service']}", json=request)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    version = app.extensions["brachy_cds"].rules.version

    check_response(body)
    for card in body["cards"]:
        # The rule-set version changes with every rule-file edit; check it, then compare the rest.
        assert card["extension"]["org.brachy-cds"]["ruleSetVersion"] == version
        card["extension"]["org.brachy-cds"]["ruleSetVersion"] = "(rule set version)"
    expect = meta["expect"]
    assert [card["source"]["topic"]["code"] for card in body["cards"]] == expect["topics"]
    assert charge_lines(body) == expect["charges"]
    assert deletes(body) == expect.get("deletes", [])
    recommended = [s.get("isRecommended", False) for c in body["cards"] for s in c.get("suggestions", [])
                   if any(a["type"] == "create" for a in s["actions"])]
    if expect["charges"]:
        assert all(flag == expect["recommended"] for flag in recommended)
    payer_cards = [card for card in body["cards"] if card["source"]["topic"]["code"] == "payer-note"]
    if "payer" in expect:
        assert payer_cards and all(expect["payer"] in card["summary"] for card in payer_cards)
        assert all(card["indicator"] == "info" and "suggestions" not in card for card in payer_cards)
    cited = {rule for card in body["cards"] for rule in card["extension"]["org.brachy-cds"]["rules"]}
    assert set(expect.get("cites", [])) <= cited, sorted(set(expect["cites"]) - cited)
    for card in body["cards"]:
        # Each card's detail names the rules it applied, each linked to a source.
        for rule in card["extension"]["org.brachy-cds"]["rules"]:
            assert f"[{rule} " in card["detail"], (rule, card["source"]["topic"]["code"])

    expected_file = folder / "expected.json"
    if not expected_file.exists() and os.environ.get("BRACHY_CDS_WRITE_EXPECTED") == "1":
        expected_file.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n")
    assert body == json.loads(expected_file.read_text())
