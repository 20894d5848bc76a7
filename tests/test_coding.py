"""Unit tests of the pure decision core: counting, levels, setting, modifiers, reconciliation."""

from __future__ import annotations

import pytest

from cds_service import coding
from cds_service.coding import ChargeLine, ChargeOption, decide
from cds_service.config import SiteEntry
from fhir_mappings.facts import (
    ChargeFact,
    CoverageFact,
    DeviceFact,
    EncounterFacts,
    LocationFact,
    OrganizationFact,
    PerformerFact,
    ProcedureFact,
)
from fhir_mappings.rules import load_rules

RULES = load_rules()
HDR = ProcedureFact("Procedure/p1", "HDR tandem and ovoids", "completed", "afterloading", "2026-10-14T10:05:00Z",
                    "Encounter/e1")
LDR = ProcedureFact("Procedure/p2", "LDR prostate seeds", "completed", "manual", "2026-10-15", "Encounter/e1")
GENERIC = ProcedureFact("Procedure/p3", "Brachytherapy", "completed", None, "2026-10-16", "Encounter/e1")
ELECTRONIC = ProcedureFact("Procedure/p4", "Electronic brachytherapy", "completed", "electronic", "2026-10-16",
                           "Encounter/e1")
POS22 = LocationFact("Location/l22", "Hospital outpatient HDR suite", pos_codes=("22",))
POS11 = LocationFact("Location/l11", "Freestanding centre", identifiers=(("urn:npi", "123"),), pos_codes=("11",))


def applicators(n: int) -> tuple[DeviceFact, ...]:
    return tuple(DeviceFact(f"Device/a{i}", f"Applicator {i}", kind="applicator") for i in range(n))


def seeds(n: int) -> tuple[DeviceFact, ...]:
    return tuple(DeviceFact(f"Device/s{i}", f"Seed {i}", kind="seed") for i in range(n))


def facts(**kwargs) -> EncounterFacts:
    base = {"encounter_ref": "Encounter/e1", "patient_ref": "Patient/pt1", "procedures": (HDR,),
            "locations": (POS22,)}
    base.update(kwargs)
    return EncounterFacts(**base)


@pytest.mark.parametrize(
    ("count", "code"),
    [(1, "77316"), (2, "77317"), (12, "77317"), (13, "77318"), (40, "77318")],
)
def test_channel_levels(count, code):
    decision = decide(facts(devices=applicators(count)), RULES)
    assert decision.level == code
    assert decision.count.kind == "channels" and decision.count.value == count


@pytest.mark.parametrize(
    ("count", "code"),
    [(1, "77316"), (4, "77316"), (5, "77317"), (10, "77317"), (11, "77318")],
)
def test_source_levels(count, code):
    decision = decide(facts(procedures=(LDR,), devices=seeds(count)), RULES)
    assert decision.level == code
    assert decision.count.kind == "sources"


def test_explicit_count_wins_and_conflict_is_reported():
    counted = DeviceFact("Device/afterloader", "Afterloader", explicit_channels=4)
    decision = decide(facts(devices=(counted, *applicators(3))), RULES)
    assert (decision.count.value, decision.count.method, decision.count.implied) == (4, "explicit", 3)
    assert decision.count.conflict
    assert decision.topics == (coding.COUNT_CONFLICT,)
    assert decision.charge_topic == coding.COUNT_CONFLICT


def test_explicit_counts_are_summed_and_no_conflict_without_implied_devices():
    devices = (DeviceFact("Device/x", "Strand A", explicit_sources=6), DeviceFact("Device/y", "Strand B",
                                                                                 explicit_sources=6))
    decision = decide(facts(procedures=(LDR,), devices=devices), RULES)
    assert (decision.count.value, decision.level, decision.topics) == (12, "77318", (coding.CHARGE_SUGGESTION,))


def test_seed_with_explicit_count_is_not_also_implied():
    strand = DeviceFact("Device/strand", "Stranded seeds", kind="seed", explicit_sources=8)
    decision = decide(facts(procedures=(LDR,), devices=(strand,)), RULES)
    assert (decision.count.value, decision.count.implied, decision.count.conflict) == (8, 0, False)


def test_equal_explicit_and_implied_counts_are_no_conflict():
    devices = (DeviceFact("Device/afl", "Afterloader", explicit_channels=3), *applicators(3))
    decision = decide(facts(devices=devices), RULES)
    assert decision.topics == (coding.CHARGE_SUGGESTION,)


def test_no_count_gives_count_missing_and_no_charge():
    decision = decide(facts(devices=(DeviceFact("Device/afl", "Afterloader"),)), RULES)
    assert decision.topics == (coding.COUNT_MISSING,)
    assert decision.level is None and decision.to_create == ()


def test_delivery_from_devices_when_codes_are_silent():
    assert decide(facts(procedures=(GENERIC,), devices=seeds(6)), RULES).count.kind == "sources"
    assert decide(facts(procedures=(GENERIC,), devices=applicators(6)), RULES).count.kind == "channels"


def test_unknown_delivery_gives_count_missing():
    decision = decide(facts(procedures=(GENERIC,), devices=()), RULES)
    assert decision.delivery is None and decision.topics == (coding.COUNT_MISSING,)


def test_electronic_only_gives_nothing():
    decision = decide(facts(procedures=(ELECTRONIC,), devices=applicators(3)), RULES)
    assert decision.topics == ()


def test_no_procedures_gives_nothing_even_with_77300():
    charge = ChargeFact("ChargeItem/c1", "billable", "77300")
    assert decide(facts(procedures=(), charges=(charge,)), RULES).topics == ()


@pytest.mark.parametrize(
    ("kwargs", "setting", "lines"),
    [
        ({"locations": (POS22,)}, "hospital-outpatient", (ChargeLine("77317", ("26",)),)),
        ({"locations": (LocationFact("Location/x", "Off campus", pos_codes=("19",)),)}, "hospital-outpatient",
         (ChargeLine("77317", ("26",)),)),
        ({"locations": (LocationFact("Location/x", "Ward", pos_codes=("21",)),)}, "hospital-inpatient",
         (ChargeLine("77317", ("26",)),)),
        ({"locations": (POS11,)}, "office", (ChargeLine("77317"),)),
        ({"locations": (LocationFact("Location/h", "Hospital", role_codes=("HOSP",)),)}, "hospital-outpatient",
         (ChargeLine("77317", ("26",)),)),
        ({"locations": (LocationFact("Location/h", "Unit", role_codes=("HU",)),), "encounter_class": ("IMP",)},
         "hospital-inpatient", (ChargeLine("77317", ("26",)),)),
        ({"locations": (), "encounter_class": ("ACUTE",)}, "hospital-inpatient", (ChargeLine("77317", ("26",)),)),
    ],
)
def test_setting_and_modifiers(kwargs, setting, lines):
    decision = decide(facts(devices=applicators(3), **kwargs), RULES)
    assert decision.setting.name == setting
    assert decision.options == (ChargeOption(lines, recommended=True),)


def test_site_table_split_billing_gives_26_and_tc():
    sites = (SiteEntry("urn:npi", "123", "11", billing="split", name="Lakeside"),)
    decision = decide(facts(devices=applicators(3), locations=(POS11,)), RULES, sites)
    assert decision.setting.evidence == "site-table"
    assert decision.options == (
        ChargeOption((ChargeLine("77317", ("26",)), ChargeLine("77317", ("TC",))), recommended=True),
    )


def test_site_table_wins_over_location_type_and_matches_service_provider():
    sites = (SiteEntry("urn:npi", "999", "22"),)
    provider = OrganizationFact("Organization/o1", "Hospital", identifiers=(("urn:npi", "999"),))
    decision = decide(facts(devices=applicators(3), locations=(POS11,), service_provider=provider), RULES, sites)
    assert (decision.setting.name, decision.setting.evidence, decision.setting.pos) == (
        "hospital-outpatient", "site-table", "22")


def test_unknown_setting_offers_alternatives_without_recommendation():
    decision = decide(facts(devices=applicators(3), locations=()), RULES)
    assert decision.setting.name == "unknown"
    assert decision.options == (
        ChargeOption((ChargeLine("77317", ("26",)),), recommended=False),
        ChargeOption((ChargeLine("77317"),), recommended=False),
    )
    assert decision.topics == (coding.CHARGE_SUGGESTION,)


def test_correct_existing_charge_gives_no_cards():
    charge = ChargeFact("ChargeItem/c1", "billable", "77317", ("26",))
    assert decide(facts(devices=applicators(3), charges=(charge,)), RULES).topics == ()


def test_wrong_level_gives_mismatch_with_replacement():
    charge = ChargeFact("ChargeItem/c1", "billable", "77316", ("26",))
    decision = decide(facts(devices=applicators(3), charges=(charge,)), RULES)
    assert decision.topics == (coding.CHARGE_MISMATCH,)
    assert decision.to_delete == (charge,)
    assert decision.to_create == (ChargeOption((ChargeLine("77317", ("26",)),), recommended=True),)


def test_missing_modifier_is_a_mismatch():
    charge = ChargeFact("ChargeItem/c1", "billable", "77317")
    decision = decide(facts(devices=applicators(3), charges=(charge,)), RULES)
    assert decision.topics == (coding.CHARGE_MISMATCH,)


def test_split_with_only_26_charged_suggests_the_tc_line():
    sites = (SiteEntry("urn:npi", "123", "11", billing="split"),)
    charge = ChargeFact("ChargeItem/c1", "billable", "77317", ("26",))
    decision = decide(facts(devices=applicators(3), locations=(POS11,), charges=(charge,)), RULES, sites)
    assert decision.topics == (coding.CHARGE_SUGGESTION,)
    assert decision.to_create == (ChargeOption((ChargeLine("77317", ("TC",)),), recommended=True),)


def test_duplicate_planning_charge_is_a_mismatch_deleting_the_extra_one():
    first = ChargeFact("ChargeItem/c1", "billable", "77317", ("26",))
    second = ChargeFact("ChargeItem/c2", "billable", "77317", ("26",))
    decision = decide(facts(devices=applicators(3), charges=(first, second)), RULES)
    assert decision.topics == (coding.CHARGE_MISMATCH,) and decision.to_delete == (second,)
    assert decision.to_create == ()


def test_unknown_setting_accepts_either_alternative_already_charged():
    charge = ChargeFact("ChargeItem/c1", "billable", "77317")
    assert decide(facts(devices=applicators(3), locations=(), charges=(charge,)), RULES).topics == ()


def test_77300_gives_bundling_conflict_next_to_the_suggestion():
    charge = ChargeFact("ChargeItem/c9", "billable", "77300")
    decision = decide(facts(devices=applicators(3), charges=(charge,)), RULES)
    assert decision.topics == (coding.CHARGE_SUGGESTION, coding.BUNDLING_CONFLICT)
    assert decision.bundled == (charge,)
    assert "bundling-77300" in decision.rule_ids


def test_mismatch_and_conflict_put_the_charge_on_the_mismatch_card_only():
    counted = DeviceFact("Device/afterloader", "Afterloader", explicit_channels=13)
    charge = ChargeFact("ChargeItem/c1", "billable", "77317", ("26",))
    decision = decide(facts(devices=(counted, *applicators(3)), charges=(charge,)), RULES)
    assert decision.topics == (coding.CHARGE_MISMATCH, coding.COUNT_CONFLICT)
    assert decision.charge_topic == coding.CHARGE_MISMATCH


def test_charge_date_is_the_earliest_procedure_date():
    later = ProcedureFact("Procedure/p9", "HDR fraction 2", "completed", "afterloading", "2026-10-21T09:00:00Z",
                          "Encounter/e1")
    assert decide(facts(procedures=(later, HDR), devices=applicators(3)), RULES).date == "2026-10-14"


# Issue 3: GC, units, companion cards


ROLE_CS = "https://brachy-cds.org/fhir/CodeSystem/brachytherapy-role"
RESIDENT = PerformerFact("Practitioner/res", ((ROLE_CS, "resident"),))
NUCC_ROLE = PerformerFact("PractitionerRole/r1", role_codes=(("http://nucc.org/provider-taxonomy", "390200000X"),))
TEACHING = (SiteEntry("urn:npi", "123", "22", teaching=True),)
TEACHING_SPLIT = (SiteEntry("urn:npi", "123", "11", billing="split", teaching=True),)
SITE_LOCATION = LocationFact("Location/s", "Teaching suite", identifiers=(("urn:npi", "123"),))


def with_performers(*performers: PerformerFact) -> ProcedureFact:
    return ProcedureFact(HDR.ref, HDR.label, HDR.status, HDR.delivery, HDR.start, HDR.encounter_ref,
                         performers=performers)


@pytest.mark.parametrize(
    ("sites", "performers", "lines", "teaching"),
    [
        (TEACHING, (RESIDENT,), [("26", "GC")], ("Practitioner/res",)),
        (TEACHING, (NUCC_ROLE,), [("26", "GC")], ("PractitionerRole/r1",)),
        (TEACHING, (PerformerFact("Practitioner/ro"),), [("26",)], ()),
        ((SiteEntry("urn:npi", "123", "22"),), (RESIDENT,), [("26",)], None),  # not a teaching site
        ((), (RESIDENT,), [("26",)], None),  # setting from the Location type, not the site table
        (TEACHING_SPLIT, (RESIDENT,), [("26", "GC"), ("TC",)], ("Practitioner/res",)),  # GC on the 26 line only
    ],
    ids=["resident-function", "resident-practitioner-role", "no-resident", "not-teaching", "no-site", "split"],
)
def test_gc_follows_26_at_a_teaching_site_when_a_resident_took_part(sites, performers, lines, teaching):
    location = SITE_LOCATION if sites else POS22
    decision = decide(facts(procedures=(with_performers(*performers),), devices=applicators(3),
                            locations=(location,)), RULES, sites)
    assert [line.modifiers for line in decision.options[0].lines] == lines
    assert (decision.teaching.residents if decision.teaching else None) == teaching
    assert ("teaching-physician-gc" in decision.topic_rules[coding.CHARGE_SUGGESTION]) == (teaching is not None)


def test_an_existing_charge_without_gc_at_a_teaching_site_is_replaced():
    charge = ChargeFact("ChargeItem/c1", "billable", "77317", ("26",))
    decision = decide(facts(procedures=(with_performers(RESIDENT),), devices=applicators(3),
                            locations=(SITE_LOCATION,), charges=(charge,)), RULES, TEACHING)
    assert decision.topics == (coding.CHARGE_MISMATCH,)
    assert decision.to_create == (ChargeOption((ChargeLine("77317", ("26", "GC")),), recommended=True),)
    assert decision.excess_units == ()


def test_a_duplicate_planning_charge_is_an_excess_unit_citing_the_units_rule():
    first = ChargeFact("ChargeItem/c1", "billable", "77317", ("26",), occurrence="2026-10-14")
    second = ChargeFact("ChargeItem/c2", "billable", "77317", ("26",), occurrence="2026-10-14")
    decision = decide(facts(devices=applicators(3), charges=(first, second)), RULES)
    assert decision.excess_units == (second,)
    assert "duplicate-planning-charge" in decision.topic_rules[coding.CHARGE_MISMATCH]


def test_a_second_planning_charge_of_another_level_is_an_excess_unit_too():
    right = ChargeFact("ChargeItem/c1", "billable", "77317", ("26",))
    other = ChargeFact("ChargeItem/c2", "billable", "77316", ("26",))
    decision = decide(facts(devices=applicators(3), charges=(right, other)), RULES)
    assert (decision.topics, decision.to_delete, decision.to_create) == ((coding.CHARGE_MISMATCH,), (other,), ())
    assert decision.excess_units == (other,)


def test_a_quantity_over_one_unit_is_replaced_by_one_unit():
    charge = ChargeFact("ChargeItem/c1", "billable", "77317", ("26",), quantity=2)
    decision = decide(facts(devices=applicators(3), charges=(charge,)), RULES)
    assert (decision.to_delete, decision.excess_units) == ((charge,), (charge,))
    assert decision.to_create == (ChargeOption((ChargeLine("77317", ("26",)),), recommended=True),)
    one = ChargeFact("ChargeItem/c1", "billable", "77317", ("26",), quantity=1)
    assert decide(facts(devices=applicators(3), charges=(one,)), RULES).topics == ()


def test_payer_and_documentation_cards_come_only_with_something_to_do():
    medicare = CoverageFact("Coverage/c", payors=(OrganizationFact("Organization/cms", "Medicare"),))
    evidence = ("ImagingStudy", "DocumentReference", "Consent")
    nothing_to_do = facts(devices=applicators(3), coverages=(medicare,), checked=evidence,
                          charges=(ChargeFact("ChargeItem/c1", "billable", "77317", ("26",)),))
    assert decide(nothing_to_do, RULES).topics == ()
    to_do = facts(devices=applicators(3), coverages=(medicare,), checked=evidence)
    decision = decide(to_do, RULES)
    assert decision.topics == (coding.CHARGE_SUGGESTION, coding.DOCUMENTATION_GAP, coding.PAYER_NOTE)
    # Imaging and consent warn (the contract names them); approval and dosimetry use project codes: verify.
    assert [c.element.rule_id for c in decision.documentation_gaps] == [
        "documentation-imaging",
        "documentation-consent",
    ]
    assert decision.verify == ("documentation-plan-approval", "documentation-dosimetry-record")
    assert decision.topic_rules[coding.PAYER_NOTE][0] == "payer-identification"
    assert decide(facts(procedures=(), coverages=(medicare,), checked=evidence), RULES).topics == ()


def test_a_missing_count_alone_makes_no_documentation_gap_card():
    decision = decide(facts(devices=(), checked=()), RULES)
    assert decision.topics == (coding.COUNT_MISSING,)
    assert [c.status for c in decision.documentation if c.element.rule_id == "documentation-count"] == ["missing"]
