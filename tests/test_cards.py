"""CardRenderer, escape() and code_span(): Decisions built from hand-made facts with coding.decide.

CDS Hooks 2.0 "Card Attributes" (summary under 140 characters, uuid, selectionBehavior) and
contract sections 4, 5.4 and 5.5: the ChargeItem of a create action has the contract's shape and is
valid R4; text from FHIR in ``detail`` is escaped, since EHRs render raw HTML in Markdown.
"""

from __future__ import annotations

import itertools

import pytest
from fhir.resources.R4B.chargeitem import ChargeItem

from cds_service.cards import CardRenderer, code_span, escape
from cds_service.coding import ChargeLine, decide
from cds_service.config import SiteEntry
from fhir_mappings.facts import ChargeFact, DeviceFact, EncounterFacts, LocationFact, ProcedureFact
from fhir_mappings.rules import load_rules

RULES = load_rules()
CANON = "https://brachy-cds.org/fhir"
CPT = "http://www.ama-assn.org/go/cpt"
HCPCS = "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
MODIFIER_URL = f"{CANON}/StructureDefinition/chargeitem-modifier"

HDR = ProcedureFact("Procedure/hdr-1", "HDR tandem and ovoids", "completed", "afterloading", "2026-10-14T10:05:00Z",
                    "Encounter/enc-1")
LDR = ProcedureFact("Procedure/ldr-1", "LDR prostate seeds", "completed", "manual", "2026-10-15", "Encounter/enc-1")
TANDEM = DeviceFact("Device/t1", "Tandem 40 mm", kind="applicator", type_label="Brachytherapy tandem")
OVOID = DeviceFact("Device/o1", "Ovoid left", kind="applicator", type_label="Brachytherapy ovoid")
SUITE = LocationFact("Location/suite", "HDR suite", pos_codes=("22",))
OFFICE = LocationFact("Location/office", "Cancer centre", identifiers=(("urn:site", "office-a"),), pos_codes=("11",))


def renderer() -> CardRenderer:
    numbers = itertools.count(1)
    return CardRenderer(RULES, CANON, lambda: f"uuid-{next(numbers)}")


def facts(**kwargs) -> EncounterFacts:
    base = {"encounter_ref": "Encounter/enc-1", "patient_ref": "Patient/pat-1", "procedures": (HDR,),
            "devices": (TANDEM, OVOID), "locations": (SUITE,)}
    base.update(kwargs)
    return EncounterFacts(**base)


def cards_for(sites=(), **kwargs) -> list[dict]:
    return renderer().cards(decide(facts(**kwargs), RULES, sites))


def topic_card(topic: str, sites=(), **kwargs) -> dict:
    """The one card of ``topic`` (companion cards such as documentation-gap may come with it)."""
    [card] = [c for c in cards_for(sites, **kwargs) if c["source"]["topic"]["code"] == topic]
    return card


def created(card: dict) -> list[list[dict]]:
    return [[a["resource"] for a in s["actions"] if a["type"] == "create"] for s in card.get("suggestions", [])]


# escape() and code_span()


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
        ('<img src=x onerror="alert(1)">', "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;"),
        ("[x](y)", "\\[x\\](y)"),
        ("![pixel](https://evil.example/p.png)", "!\\[pixel\\](https://evil.example/p.png)"),
        ("**bold** and __under__", "\\*\\*bold\\*\\* and \\_\\_under\\_\\_"),
        ("`code` ~strike~ # heading | cell", "\\`code\\` \\~strike\\~ \\# heading \\| cell"),
        ("{braces} back\\slash", "\\{braces\\} back\\\\slash"),
        ("A & B", "A &amp; B"),
        ("&lt;already&gt;", "&amp;lt;already&amp;gt;"),
        ("line one\n\n# line two\r\n- item", "line one \\# line two - item"),
        ("Fletcher tandem 40 mm", "Fletcher tandem 40 mm"),
    ],
)
def test_escape_neutralises_html_and_markdown(text, escaped):
    assert escape(text) == escaped


@pytest.mark.parametrize(
    ("ref", "span"),
    [
        ("Device/tandem-1", "`Device/tandem-1`"),
        ("Procedure/p1#seed", "`Procedure/p1#seed`"),
        ("urn:uuid:0b0c6e0a-5f55-4a4b-9f0e-7d2c3b1a0f9e", "`urn:uuid:0b0c6e0a-5f55-4a4b-9f0e-7d2c3b1a0f9e`"),
        ("Device/a`b", "`Device/ab`"),
        ("Device/x` <script>alert(1)</script> `", "`Device/xscriptalert1/script`"),
        ("Device/[x](javascript:alert(1))", "`Device/xjavascript:alert1`"),
        ("Device/" + "x" * 500, "`Device/" + "x" * 193 + "`"),
    ],
)
def test_code_span_keeps_ids_inside_the_span(ref, span):
    assert code_span(ref) == span


# Whole card


def test_charge_suggestion_card_hospital_outpatient():
    assert [topic_card("charge-suggestion")] == [
        {
            "uuid": "uuid-1",
            "summary": "Bill 77317-26: intermediate brachytherapy isodose plan, 2 channels on 2026-10-14",
            "indicator": "info",
            "detail": (
                "**2 afterloading channels** counted from 2 linked applicators (one channel each, each Device "
                "once per encounter):\n"
                "- Tandem 40 mm (Brachytherapy tandem) (`Device/t1`)\n"
                "- Ovoid left (Brachytherapy ovoid) (`Device/o1`)\n\n"
                "Procedure(s): HDR tandem and ovoids (`Procedure/hdr-1`). 2-12 channels -> **77317** "
                "(intermediate brachytherapy isodose plan; rule `planning-levels` 1.0.0).\n\n"
                "**Setting:** Location *HDR suite* is typed CMS Place of Service 22 -> hospital outpatient: "
                "professional component only, **77317-26**. The hospital bills the technical part on its "
                "institutional claim (UB-04 / 837I).\n\n"
                "Rules: [brachytherapy-procedure-codes 1.0.0]"
                "(https://hl7.org/fhir/us/mcode/ValueSet-mcode-brachytherapy-modality-vs.html) (H), "
                "[applicator-device-types 1.0.0]"
                "(https://hl7.org/fhir/us/codex-radiation-therapy/ValueSet-codexrt-brachytherapy-applicator-type-vs.html)"
                " (H), [planning-levels 1.0.0](https://case2code.codingahead.com/cpt/codes/77316) (H), "
                "[setting-from-fhir 1.0.0](https://terminology.hl7.org/CodeSystem-CMSPlaceofServiceCodes.html) (H), "
                "[modifiers-by-setting 1.0.0](https://med.noridianmedicare.com/web/jeb/specialties/radiation-oncology)"
                " (H), [units-per-encounter 1.0.0](https://payerready.com/codes/cpt/77317) (M)."
            ),
            "source": {
                "label": "brachy-cds",
                "topic": {
                    "system": f"{CANON}/CodeSystem/card-topic",
                    "code": "charge-suggestion",
                    "display": "Planning charge suggestion",
                },
            },
            "selectionBehavior": "at-most-one",
            "suggestions": [
                {
                    "uuid": "uuid-2",
                    "label": "Add charge 77317-26",
                    "actions": [
                        {
                            "type": "create",
                            "description": "Create a ChargeItem for CPT 77317 with modifier 26",
                            "resource": {
                                "resourceType": "ChargeItem",
                                "status": "billable",
                                "extension": [
                                    {
                                        "url": MODIFIER_URL,
                                        "valueCodeableConcept": {"coding": [{"system": CPT, "code": "26"}]},
                                    }
                                ],
                                "code": {
                                    "coding": [
                                        {
                                            "system": CPT,
                                            "code": "77317",
                                            "display": "Intermediate brachytherapy isodose plan",
                                        }
                                    ]
                                },
                                "subject": {"reference": "Patient/pat-1"},
                                "context": {"reference": "Encounter/enc-1"},
                                "occurrenceDateTime": "2026-10-14",
                                "quantity": {"value": 1},
                                "service": [{"reference": "Procedure/hdr-1"}],
                            },
                        }
                    ],
                    "isRecommended": True,
                }
            ],
            "overrideReasons": [
                {"system": f"{CANON}/CodeSystem/override-reason", "code": "billed-elsewhere",
                 "display": "Planning billed by another entity"},
                {"system": f"{CANON}/CodeSystem/override-reason", "code": "count-differs",
                 "display": "Documented channel/source count differs"},
                {"system": f"{CANON}/CodeSystem/override-reason", "code": "setting-differs",
                 "display": "Place of service differs from the record"},
                {"system": f"{CANON}/CodeSystem/override-reason", "code": "plan-reused",
                 "display": "No new plan: an earlier plan was reused"},
            ],
            "extension": {
                "org.brachy-cds": {
                    "encounter": "Encounter/enc-1",
                    "ruleSetVersion": RULES.version,
                    # The rules this card applied, cited in the detail too (issue 3).
                    "rules": [
                        "brachytherapy-procedure-codes",
                        "applicator-device-types",
                        "planning-levels",
                        "setting-from-fhir",
                        "modifiers-by-setting",
                        "units-per-encounter",
                    ],
                }
            },
        }
    ]


def test_no_brachytherapy_gives_no_cards():
    assert cards_for(procedures=(), devices=()) == []


def test_correct_charge_already_present_gives_no_cards():
    existing = ChargeFact("ChargeItem/c1", "billable", "77317", ("26",))
    assert cards_for(charges=(existing,)) == []


# charge_item(): contract section 4, valid R4


def test_split_billing_creates_two_valid_charge_items_26_and_tc():
    site = SiteEntry("urn:site", "office-a", "11", "split")
    card = topic_card("charge-suggestion", sites=(site,), procedures=(LDR,), devices=tuple(
        DeviceFact(f"Device/s{i}", f"Seed {i}", kind="seed") for i in range(6)), locations=(OFFICE,))
    assert card["summary"] == (
        "Bill 77317-26 and 77317-TC: intermediate brachytherapy isodose plan, 6 sources on 2026-10-15"
    )
    [[professional, technical]] = created(card)

    def charge(modifier_system: str, modifier: str) -> dict:
        return {
            "resourceType": "ChargeItem",
            "status": "billable",
            "extension": [
                {"url": MODIFIER_URL,
                 "valueCodeableConcept": {"coding": [{"system": modifier_system, "code": modifier}]}}
            ],
            "code": {"coding": [{"system": CPT, "code": "77317",
                                 "display": "Intermediate brachytherapy isodose plan"}]},
            "subject": {"reference": "Patient/pat-1"},
            "context": {"reference": "Encounter/enc-1"},
            "occurrenceDateTime": "2026-10-15",
            "quantity": {"value": 1},
            "service": [{"reference": "Procedure/ldr-1"}],
        }

    assert professional == charge(CPT, "26")
    assert technical == charge(HCPCS, "TC")
    for resource in (professional, technical):
        assert ChargeItem.model_validate(resource).status == "billable"


def test_global_billing_has_no_modifier_extension():
    decision = decide(facts(locations=(OFFICE,), devices=(TANDEM,)), RULES)
    resource = renderer().charge_item(decision, ChargeLine("77316"))
    assert resource == {
        "resourceType": "ChargeItem",
        "status": "billable",
        "code": {"coding": [{"system": CPT, "code": "77316", "display": "Simple brachytherapy isodose plan"}]},
        "subject": {"reference": "Patient/pat-1"},
        "context": {"reference": "Encounter/enc-1"},
        "occurrenceDateTime": "2026-10-14",
        "quantity": {"value": 1},
        "service": [{"reference": "Procedure/hdr-1"}],
    }
    ChargeItem.model_validate(resource)


def test_charge_item_lists_every_brachytherapy_procedure_and_the_earliest_date():
    second = ProcedureFact("Procedure/hdr-2", "HDR fraction 2", "completed", "afterloading", "2026-10-13T09:00:00Z",
                           "Encounter/enc-1")
    decision = decide(facts(procedures=(HDR, second)), RULES)
    resource = renderer().charge_item(decision, ChargeLine("77317", ("26",)))
    assert resource["service"] == [{"reference": "Procedure/hdr-1"}, {"reference": "Procedure/hdr-2"}]
    assert resource["occurrenceDateTime"] == "2026-10-13"
    ChargeItem.model_validate(resource)


def test_charge_item_without_a_procedure_date_leaves_occurrence_out():
    undated = ProcedureFact("Procedure/hdr-1", "HDR", "in-progress", "afterloading", None, "Encounter/enc-1")
    decision = decide(facts(procedures=(undated,)), RULES)
    resource = renderer().charge_item(decision, ChargeLine("77317", ("26",)))
    assert "occurrenceDateTime" not in resource
    ChargeItem.model_validate(resource)


# Topics other than charge-suggestion


def test_unknown_setting_offers_alternatives_without_a_recommendation():
    card = topic_card("charge-suggestion", locations=())
    assert card["summary"] == (
        "Choose 77317-26 or 77317 (global), place of service unknown: intermediate brachytherapy isodose plan, "
        "2 channels on 2026-10-14"
    )
    assert card["selectionBehavior"] == "at-most-one"
    assert [s["label"] for s in card["suggestions"]] == ["Add charge 77317-26", "Add charge 77317 (global)"]
    assert all("isRecommended" not in s for s in card["suggestions"])


def test_count_missing_card_suggests_no_charge():
    card = topic_card("count-missing", devices=())
    assert card["indicator"] == "warning"
    assert card["summary"] == "Brachytherapy on 2026-10-14: channel count missing, planning code not chosen"
    assert "suggestions" not in card and "selectionBehavior" not in card


def test_bundled_77300_is_deleted_by_resource_id():
    bundled = ChargeFact("ChargeItem/dosimetry-1", "billable", "77300")
    assert created(topic_card("charge-suggestion", charges=(bundled,)))
    bundling_card = topic_card("bundling-conflict", charges=(bundled,))
    assert bundling_card["summary"] == (
        "Remove 77300: basic dosimetry is included in brachytherapy planning (77317)"
    )
    assert [{k: v for k, v in s.items() if k != "uuid"} for s in bundling_card["suggestions"]] == [
        {
            "label": "Remove the 77300 charge",
            "isRecommended": True,
            "actions": [
                {"type": "delete", "description": "Delete ChargeItem/dosimetry-1 (CPT 77300)",
                 "resourceId": "ChargeItem/dosimetry-1"}
            ],
        }
    ]


def test_mismatch_replaces_the_wrong_charge_in_one_suggestion():
    wrong = ChargeFact("ChargeItem/c1", "billable", "77316", ())
    card = topic_card("charge-mismatch", charges=(wrong,))
    assert card["summary"] == "Planning charge 77316 on 2026-10-14 does not match the record: replace with 77317-26"
    [suggestion] = card["suggestions"]
    assert [(a["type"], a.get("resourceId")) for a in suggestion["actions"]] == [
        ("delete", "ChargeItem/c1"), ("create", None)]
    assert suggestion["label"] == "Replace with charge 77317-26"


def test_every_card_and_suggestion_has_its_own_uuid():
    counted = DeviceFact("Device/afterloader", "Afterloader", explicit_channels=5)
    cards = cards_for(devices=(counted, TANDEM), charges=(ChargeFact("ChargeItem/c1", "billable", "77316"),
                                                           ChargeFact("ChargeItem/d1", "billable", "77300")))
    cards = [c for c in cards if c["source"]["topic"]["code"] in ("charge-mismatch", "count-conflict",
                                                                    "bundling-conflict")]
    assert [c["source"]["topic"]["code"] for c in cards] == ["charge-mismatch", "count-conflict", "bundling-conflict"]
    uuids = [c["uuid"] for c in cards] + [s["uuid"] for c in cards for s in c.get("suggestions", [])]
    # mismatch card + its replacement, count-conflict card (no second charge), bundling card + its delete.
    assert len(uuids) == len(set(uuids)) == 5
    # The charge is suggested on one card only (contract 5.4).
    assert sum(1 for c in cards for group in created(c) if group) == 1


# Summaries stay under 140 characters; FHIR text is escaped in detail


HUGE = 10**40
LONG_REF = "ChargeItem/" + "c" * 64
LONG_LABEL = "Applicator " + "with a very long name " * 30


@pytest.mark.parametrize(
    "kwargs",
    [
        {"devices": (DeviceFact("Device/x", LONG_LABEL, explicit_channels=HUGE),)},
        {"devices": (DeviceFact("Device/x", LONG_LABEL, explicit_channels=HUGE), TANDEM)},
        {"devices": (DeviceFact("Device/x", LONG_LABEL, explicit_channels=HUGE), TANDEM), "locations": ()},
        {"devices": (DeviceFact("Device/x", LONG_LABEL, explicit_channels=HUGE), TANDEM),
         "charges": (ChargeFact(LONG_REF, "billable", "77316", ("26",) * 30),
                     ChargeFact(LONG_REF + "2", "billable", "77317", ("TC", "GC") * 20))},
        {"procedures": (LDR,), "devices": (DeviceFact("Device/s", LONG_LABEL, explicit_sources=HUGE),),
         "locations": ()},
        {"devices": (), "charges": tuple(ChargeFact(f"{LONG_REF}{i}", "billable", "77300") for i in range(20))},
        {"devices": tuple(DeviceFact(f"Device/{'a' * 60}{i}", LONG_LABEL, kind="applicator") for i in range(500))},
    ],
)
def test_summaries_stay_under_140_characters(kwargs):
    cards = cards_for(**kwargs)
    assert cards
    for card in cards:
        assert 0 < len(card["summary"]) < 140, card["summary"]


def test_huge_count_still_codes_77318():
    card = topic_card("charge-suggestion", devices=(DeviceFact("Device/x", "Afterloader", explicit_channels=HUGE),))
    assert created(card)[0][0]["code"]["coding"][0]["code"] == "77318"
    assert len(card["summary"]) < 140


def test_markup_from_fhir_is_escaped_in_detail():
    procedure = ProcedureFact("Procedure/hdr-1", "<script>alert('p')</script>", "completed", "afterloading",
                              "2026-10-14", "Encounter/enc-1")
    device = DeviceFact("Device/t1", "[click me](https://evil.example)", kind="applicator", type_label="**loud**")
    location = LocationFact("Location/l1", "<img src=x onerror=alert(1)>", pos_codes=("22",))
    missing = ("Device/<b>gone</b> could not be resolved",)
    card = topic_card("charge-suggestion", procedures=(procedure,), devices=(device,), locations=(location,),
                      missing=missing)
    detail = card["detail"]
    for raw in ("<script>", "[click me](", "**loud**", "<img", "<b>"):
        assert raw not in detail
    assert "&lt;script&gt;alert('p')&lt;/script&gt;" in detail
    assert "\\[click me\\](https://evil.example) (\\*\\*loud\\*\\*) (`Device/t1`)" in detail
    assert "Location *&lt;img src=x onerror=alert(1)&gt;*" in detail
    assert "Not available: Device/&lt;b&gt;gone&lt;/b&gt; could not be resolved." in detail


def test_site_name_from_the_site_table_is_escaped():
    site = SiteEntry("urn:site", "office-a", "11", "global", False, "Centre <b>A</b> [home](x)")
    card = topic_card("charge-suggestion", sites=(site,), locations=(OFFICE,))
    assert "matches site-table entry office-a (Centre &lt;b&gt;A&lt;/b&gt; \\[home\\](x)), POS 11" in card["detail"]
