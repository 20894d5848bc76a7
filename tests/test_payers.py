"""Payer recognition from the active Coverages' payor Organizations (contract 5.3; payers.yaml)."""

from __future__ import annotations

import pytest

from cds_service.payers import identify_payers, match_payor
from fhir_mappings.facts import CoverageFact, OrganizationFact
from fhir_mappings.rules import load_rules

RULES = load_rules()


def org(name: str, *identifiers: tuple[str, str]) -> OrganizationFact:
    return OrganizationFact(ref="Organization/o", label=name, identifiers=tuple(identifiers))


def match(name: str):
    return match_payor(org(name), "Coverage/c", RULES)


@pytest.mark.parametrize(
    ("name", "payer", "matched", "medicare_advantage"),
    [
        ("Medicare", "medicare", "Medicare", False),
        ("Centers for Medicare & Medicaid Services", "medicare", "Medicare", False),
        ("Noridian Healthcare Solutions", "medicare", "Noridian", False),
        ("Palmetto GBA", "medicare", "Palmetto GBA", False),
        ("Humana Medicare Advantage", "medicare", "Medicare", True),
        ("Aetna", "aetna", "Aetna", False),
        ("AETNA LIFE INSURANCE COMPANY", "aetna", "Aetna", False),
        ("Aetna Medicare Advantage", "aetna", "Aetna", True),
        ("UnitedHealthcare Medicare plan", "uhc", "UnitedHealthcare", True),
        ("United  Healthcare", "uhc", "United Healthcare", False),
        ("UHC Community Plan", "uhc", "UHC", False),
        ("Cigna Healthcare", "cigna", "Cigna", False),
        ("Anthem Blue Cross", "bcbs", "Anthem", False),
        ("Elevance Health", "bcbs", "Elevance", False),
        ("Highmark Inc.", "bcbs", "Highmark", False),
        ("Blue Shield of California", "bcbs", "Blue Shield of California", False),
        ("BCBS of Illinois", "bcbs", "BCBS", False),
        ("Blue Cross and Blue Shield of Florida", "bcbs", "Blue Cross", False),
        ("BlueCross BlueShield of Texas", "bcbs", "BlueCross", False),
    ],
)
def test_payers_by_name(name, payer, matched, medicare_advantage):
    found = match(name)
    assert (found.payer.id, found.matched, found.by, found.medicare_advantage) == (
        payer,
        matched,
        "name",
        medicare_advantage,
    )


@pytest.mark.parametrize("name", ["Contoso Health Plan", "Humana", "Medicaid of Ohio", "UHCX", "Aetnas", "Tricare"])
def test_unknown_payers_and_partial_words_are_not_recognised(name):
    assert match(name) is None


def test_notes_follow_the_plan_named_and_medicare_advantage():
    anthem = [note.rule_id for note in match("Anthem Blue Cross").notes]
    assert anthem == ["payer-note-bcbs-independent", "payer-note-bcbs-anthem-carelon"]
    florida = [note.rule_id for note in match("Blue Cross and Blue Shield of Florida").notes]
    assert florida == ["payer-note-bcbs-independent", "payer-note-bcbs-florida"]
    other = [note.rule_id for note in match("Blue Cross of Idaho").notes]
    assert other == ["payer-note-bcbs-independent"]
    aetna_ma = [note.rule_id for note in match("Aetna Medicare Advantage").notes]
    assert aetna_ma[-1] == "payer-note-medicare-advantage"  # the payer's own notes first
    assert "payer-note-medicare-advantage" not in [note.rule_id for note in match("Aetna").notes]


def test_identifiers_are_checked_before_names_and_deployment_rows_before_shipped_ones(tmp_path):
    table = tmp_path / "payers.yaml"
    table.write_text(
        "- payer: cigna\n  identifiers: [{system: 'https://x.example/payer', value: P1}]\n"
        "- payer: none\n  aliases: [Medicare Supplement Plan X]\n"
        "- payer: bcbs\n  identifiers: [{value: BX}]\n"
    )
    rules = load_rules(payer_table=table)
    # The identifier wins over the name: a deployment says this "Aetna ..." Organization is Cigna.
    by_id = match_payor(org("Aetna Something", ("https://x.example/payer", "P1")), "Coverage/c", rules)
    assert (by_id.payer.id, by_id.by, by_id.origin) == ("cigna", "identifier", "BRACHY_CDS_PAYERS entry 1")
    # An identifier of another system does not match a row that names its system.
    assert match_payor(org("Aetna", ("urn:other", "P1")), "Coverage/c", rules).payer.id == "aetna"
    # A row without a system matches the value in any system.
    assert match_payor(org("Regional Plan", ("urn:any", "BX")), "Coverage/c", rules).payer.id == "bcbs"
    # "none" silences a name that would otherwise be Medicare.
    assert match_payor(org("Medicare Supplement Plan X"), "Coverage/c", rules) is None
    assert match_payor(org("Medicare Supplement Plan X"), "Coverage/c", RULES).payer.id == "medicare"


def test_primary_coverage_first_and_each_payer_once():
    coverages = (
        CoverageFact("Coverage/secondary", payors=(org("Anthem Blue Cross"),), order=2),
        CoverageFact("Coverage/none", payors=(org("Contoso"),)),
        CoverageFact("Coverage/primary", payors=(org("Medicare"),), order=1),
        CoverageFact("Coverage/again", payors=(org("Medicare Part B"),), order=3),
    )
    found = identify_payers(coverages, RULES)
    assert [(m.payer.id, m.coverage_ref) for m in found] == [
        ("medicare", "Coverage/primary"),
        ("bcbs", "Coverage/secondary"),
    ]


def test_no_coverage_no_payer():
    assert identify_payers((), RULES) == ()
    assert identify_payers((CoverageFact("Coverage/c"),), RULES) == ()
