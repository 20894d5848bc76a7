"""Decide the brachytherapy planning charge of one encounter: facts in, decision out.

This is the pure decision core (style.md; Flask's ``sansio`` rule): it imports neither Flask,
requests nor fhir.resources, and it reads every code, threshold and modifier from the RuleSet
(``fhir_mappings/rules/*.yaml``). It follows contract sections 3.1-3.3 and 5.3:

* delivery type from the Procedures' codes, else from the linked Devices, else from the kind of
  explicit count;
* the count: an explicit ``channels-used``/``sources`` count wins; implied counts come from linked
  applicator or seed Devices; distinct Devices count once per encounter; two non-zero counts that
  differ are a conflict; no count means no planning charge (never a default to 77317);
* the level from the count bands; the setting, first match wins: site table, CMS POS, v3 RoleCode,
  Encounter class; the charge lines (26, TC, global) of that setting, with GC after 26 when the
  site table marks the site as teaching and a resident performed a brachytherapy Procedure;
* claim edits: a 77300 charge (bundling), a second planning charge or a quantity over one unit for
  the date of service (units);
* when there is something to do for the encounter (any of the topics above), the companion cards:
  ``documentation-gap`` for missing supporting documentation and ``payer-note`` for a noted payer.

Every topic carries the ids of the rules behind it (cards cite them). A rule graded L or U never
makes a warning on its own: its finding becomes a "verify" note instead (reference/billing.md key).
The one exception is data too: a documentation element says with ``gap`` whether its absence warns,
and an L/U element may warn only with a ``gap_basis`` (imaging and consent: the service contract).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cds_service.config import SiteEntry
from cds_service.documentation import MISSING, ElementCheck, check_documentation
from cds_service.payers import PayerMatch, identify_payers
from fhir_mappings.facts import (
    ChargeFact,
    DeviceFact,
    EncounterFacts,
    Identifier,
    LocationFact,
    OrganizationFact,
    ProcedureFact,
)
from fhir_mappings.rules import LOW_GRADES, RuleSet

CHARGE_SUGGESTION = "charge-suggestion"
COUNT_MISSING = "count-missing"
COUNT_CONFLICT = "count-conflict"
CHARGE_MISMATCH = "charge-mismatch"
BUNDLING_CONFLICT = "bundling-conflict"
DOCUMENTATION_GAP = "documentation-gap"
PAYER_NOTE = "payer-note"
COUNT_ELEMENT = "documentation-count"
"""The documentation element of the count: the count-missing card already warns when it is missing."""

AFTERLOADING = "afterloading"
MANUAL = "manual"
ELECTRONIC = "electronic"


@dataclass(frozen=True)
class ChargeLine:
    """One planning charge line: CPT code and modifiers in claim order."""

    code: str
    modifiers: tuple[str, ...] = ()

    def text(self) -> str:
        """Write the line as coders do: ``77317-26``, or ``77317`` for global billing."""
        return "-".join((self.code, *self.modifiers))


@dataclass(frozen=True)
class ChargeOption:
    """A set of charge lines that together bill the planning (one line, or 26 + TC when split)."""

    lines: tuple[ChargeLine, ...]
    recommended: bool

    def text(self) -> str:
        """Name the option for a summary: ``77317-26 and 77317-TC``."""
        return " and ".join(line.text() for line in self.lines)


@dataclass(frozen=True)
class Count:
    """How the channels or sources were counted, with the Devices behind each count."""

    kind: str
    """``"channels"`` (afterloading) or ``"sources"`` (manual)."""
    value: int | None
    method: str
    """``"explicit"``, ``"implied"`` or ``"none"``."""
    explicit: int | None
    implied: int
    explicit_devices: tuple[DeviceFact, ...]
    implied_devices: tuple[DeviceFact, ...]

    @property
    def conflict(self) -> bool:
        """Two non-zero counts that differ (contract 5.3)."""
        return bool(self.explicit) and bool(self.implied) and self.explicit != self.implied


@dataclass(frozen=True)
class Setting:
    """Where the service was given and how the planning is billed there."""

    name: str
    """``hospital-outpatient``, ``hospital-inpatient``, ``office`` or ``unknown``."""
    pos: str | None
    billing: str
    """``global`` or ``split`` (matters for office only)."""
    evidence: str
    """``site-table``, ``location-pos``, ``location-role``, ``encounter-class`` or ``none``."""
    location: LocationFact | None = None
    organization: OrganizationFact | None = None
    site: SiteEntry | None = None
    role_code: str | None = None
    encounter_class: str | None = None

    @property
    def modifier_key(self) -> str:
        """The modifiers-by-setting entry this setting uses."""
        if self.name == "office":
            return "office-split" if self.billing == "split" else "office-global"
        return self.name


@dataclass(frozen=True)
class Teaching:
    """GC at a teaching site (site table ``teaching: true``): the residents found and whether GC applies."""

    residents: tuple[str, ...]
    """Who was recognised as a resident (performer actor references, or the Procedure when the actor is unnamed)."""

    @property
    def applied(self) -> bool:
        """GC goes on the professional line when a resident took part."""
        return bool(self.residents)


@dataclass(frozen=True)
class Decision:
    """The coding decision for one encounter and the evidence behind it."""

    facts: EncounterFacts
    procedures: tuple[ProcedureFact, ...]
    """The radionuclide brachytherapy Procedures the decision is about (electronic ones excluded)."""
    delivery: str | None
    count: Count | None
    level: str | None
    setting: Setting
    options: tuple[ChargeOption, ...]
    """The charge options of the setting: one recommended, or the alternatives when unknown."""
    date: str | None
    existing: tuple[ChargeFact, ...]
    """Existing 77316-77318 charges of the encounter."""
    to_delete: tuple[ChargeFact, ...]
    """Existing planning charges that do not match the decision (charge-mismatch)."""
    to_create: tuple[ChargeOption, ...]
    """Options that add what is missing: the recommended lines not yet charged, or the alternatives."""
    bundled: tuple[ChargeFact, ...]
    """Existing 77300 charges of the encounter (bundling conflict)."""
    topics: tuple[str, ...]
    rule_ids: tuple[str, ...]
    topic_rules: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """The ids of the rules behind each topic's card, in the order the card cites them."""
    teaching: Teaching | None = None
    """Set when the setting came from a teaching site of the site table."""
    excess_units: tuple[ChargeFact, ...] = ()
    """Planning charges to delete as extra units: more charges than lines for the date of service, or quantity > 1."""
    documentation: tuple[ElementCheck, ...] = ()
    payers: tuple[PayerMatch, ...] = ()
    verify: tuple[str, ...] = ()
    """Rule ids of findings graded L or U: shown as "verify" notes, never as warnings of their own."""

    @property
    def documentation_gaps(self) -> tuple[ElementCheck, ...]:
        """Missing elements whose rule is graded H or M: what the documentation-gap card warns about."""
        return tuple(c for c in self.documentation if c.status == MISSING and c.element.rule_id not in self.verify)

    @property
    def charge_topic(self) -> str | None:
        """The one topic whose card carries the charge suggestion, if any (contract 5.4)."""
        for topic in (CHARGE_MISMATCH, COUNT_CONFLICT, CHARGE_SUGGESTION):
            if topic in self.topics and self.to_create:
                return topic
        return None


def decide(facts: EncounterFacts, rules: RuleSet, sites: Sequence[SiteEntry] = ()) -> Decision:
    """Code the brachytherapy planning of one encounter (contract 3.1-3.3, 5.3) and list its cards' topics."""
    procedures = tuple(p for p in facts.procedures if p.delivery != ELECTRONIC)
    setting = decide_setting(facts, rules, sites)
    existing = tuple(c for c in facts.charges if c.code in rules.planning_codes)
    bundled = tuple(c for c in facts.charges if c.code == rules.bundled_code)
    rule_ids: list[str] = ["brachytherapy-procedure-codes"]
    if not procedures:
        # No radionuclide brachytherapy in scope (none at all, or electronic only): no cards.
        return Decision(
            facts=facts,
            procedures=(),
            delivery=None,
            count=None,
            level=None,
            setting=setting,
            options=(),
            date=None,
            existing=existing,
            to_delete=(),
            to_create=(),
            bundled=(),
            topics=(),
            rule_ids=tuple(rule_ids),
        )

    devices = facts.devices
    delivery = decide_delivery(procedures, devices)
    count = count_units(delivery, devices, rules)
    level = level_for(count, rules)
    date = earliest_date(procedures)
    teaching = check_teaching(setting, procedures, rules)
    options = charge_options(level, setting, rules, gc=teaching is not None and teaching.applied) if level else ()
    topics: list[str] = []
    to_delete: tuple[ChargeFact, ...] = ()
    to_create: tuple[ChargeOption, ...] = ()
    excess: tuple[ChargeFact, ...] = ()
    verify: list[str] = []
    count_rules = _count_rules(count)
    rule_ids += ["applicator-device-types", "seed-device-types", "explicit-count-property"]
    charge_rules = ["brachytherapy-procedure-codes", *count_rules, "planning-levels"]
    charge_rules += [*_setting_rules(setting, teaching), "units-per-encounter"]
    topic_rules: dict[str, tuple[str, ...]] = {
        COUNT_MISSING: (
            "brachytherapy-procedure-codes",
            "explicit-count-property",
            "applicator-device-types",
            "seed-device-types",
            "planning-levels",
        ),
        CHARGE_SUGGESTION: tuple(charge_rules),
        COUNT_CONFLICT: tuple(dict.fromkeys([*charge_rules[:1], "explicit-count-property", *charge_rules[1:]])),
        BUNDLING_CONFLICT: ("bundling-77300",),
    }

    if level is None:
        topics.append(COUNT_MISSING)
    else:
        rule_ids += ["planning-levels", "setting-from-fhir", "modifiers-by-setting", "units-per-encounter"]
        rule_ids += _setting_rules(setting, teaching)
        to_delete, to_create = reconcile(existing, options, rules.max_units_per_date)
        excess = excess_units(existing, to_delete, options, rules.max_units_per_date)
        mismatch_rules = [*charge_rules, *(["duplicate-planning-charge"] if excess else [])]
        topic_rules[CHARGE_MISMATCH] = tuple(mismatch_rules)
        units_only = excess and len(excess) == len(to_delete) and not to_create
        if units_only and rules.grade("duplicate-planning-charge") in LOW_GRADES:
            # Only the units edit says the extra charge is wrong, and it is not well sourced: verify, do not warn.
            verify.append("duplicate-planning-charge")
            to_delete, excess = (), ()
        if to_delete:
            topics.append(CHARGE_MISMATCH)
            if count.conflict:
                topics.append(COUNT_CONFLICT)
        elif to_create:
            topics.append(COUNT_CONFLICT if count.conflict else CHARGE_SUGGESTION)
        if excess:
            rule_ids.append("duplicate-planning-charge")
    if bundled:
        rule_ids.append("bundling-77300")
        if rules.grade("bundling-77300") in LOW_GRADES:
            verify.append("bundling-77300")
        else:
            topics.append(BUNDLING_CONFLICT)

    documentation: tuple[ElementCheck, ...] = ()
    payers: tuple[PayerMatch, ...] = ()
    if topics:
        # Something to do for this encounter: the companion cards may join (never on their own).
        documentation = check_documentation(facts, procedures, _count_text(count, level), rules)
        gaps = []
        for check in documentation:
            if check.status != MISSING:
                continue
            if check.element.gap == "verify":
                verify.append(check.element.rule_id)
            elif check.element.rule_id != COUNT_ELEMENT or COUNT_MISSING not in topics:
                gaps.append(check)
        if gaps:
            topics.append(DOCUMENTATION_GAP)
        checked = [c.element.rule_id for c in documentation if c.status == MISSING]
        topic_rules[DOCUMENTATION_GAP] = tuple(checked)
        rule_ids += checked
        payers = identify_payers(facts.coverages, rules)
        if payers:
            topics.append(PAYER_NOTE)
            notes = [note.rule_id for match in payers for note in match.notes]
            topic_rules[PAYER_NOTE] = tuple(dict.fromkeys(["payer-identification", *notes]))
            rule_ids += topic_rules[PAYER_NOTE]
    return Decision(
        facts=facts,
        procedures=procedures,
        delivery=delivery,
        count=count,
        level=level,
        setting=setting,
        options=options,
        date=date,
        existing=existing,
        to_delete=to_delete,
        to_create=to_create,
        bundled=bundled,
        topics=tuple(topics),
        rule_ids=tuple(dict.fromkeys(rule_ids)),
        topic_rules={topic: topic_rules[topic] for topic in topics},
        teaching=teaching,
        excess_units=excess,
        documentation=documentation,
        payers=payers,
        verify=tuple(dict.fromkeys(verify)) if topics else (),
    )


def check_teaching(setting: Setting, procedures: Sequence[ProcedureFact], rules: RuleSet) -> Teaching | None:
    """At a teaching site of the site table, find the residents among the brachytherapy Procedures' performers.

    A performer is a resident when its function, or its actor PractitionerRole's code, is one of the
    resident codes (rule ``resident-recognition`` plus ``BRACHY_CDS_RESIDENT_CODES``). None when the
    site is not a teaching site: GC is then never considered.
    """
    if setting.site is None or not setting.site.teaching:
        return None
    codes = rules.teaching.resident_codes
    residents = [
        performer.actor_ref or procedure.ref
        for procedure in procedures
        for performer in procedure.performers
        if any(code in codes for code in (*performer.function_codes, *performer.role_codes))
    ]
    return Teaching(tuple(dict.fromkeys(residents)))


def excess_units(
    existing: Sequence[ChargeFact],
    to_delete: Sequence[ChargeFact],
    options: Sequence[ChargeOption],
    max_units: int,
) -> tuple[ChargeFact, ...]:
    """Return the deleted charges that are units problems (rule ``duplicate-planning-charge``).

    That is every deleted charge when the encounter has more planning charges than the option has
    lines (a second planning charge for the date of service), and any charge with a quantity over
    ``max_units``.
    """
    most_lines = max((len(option.lines) for option in options), default=0)
    too_many = len(existing) > most_lines * max_units
    return tuple(charge for charge in to_delete if too_many or _over(charge, max_units))


def _over(charge: ChargeFact, max_units: int) -> bool:
    return charge.quantity is not None and charge.quantity > max_units


def _count_rules(count: Count) -> list[str]:
    rules = []
    if count.method == "explicit" or count.explicit is not None:
        rules.append("explicit-count-property")
    if count.implied or count.method == "implied":
        rules.append("applicator-device-types" if count.kind == "channels" else "seed-device-types")
    return rules


def _setting_rules(setting: Setting, teaching: Teaching | None) -> list[str]:
    # The FHIR setting rule applied unless the site table decided (it also decided "unknown" when nothing matched).
    rules = ["setting-from-fhir"] if setting.evidence != "site-table" else []
    rules.append("modifiers-by-setting")
    if teaching is not None:
        rules += ["teaching-physician-gc", "resident-recognition"]
    return rules


def _count_text(count: Count, level: str | None) -> str | None:
    if level is None or count.value is None:
        return None
    noun = count.kind if count.value != 1 else count.kind.rstrip("s")
    return f"{count.value} {noun}, {count.method}"


def decide_delivery(procedures: Sequence[ProcedureFact], devices: Sequence[DeviceFact]) -> str | None:
    """Afterloading or manual: the Procedures' codes first, then linked Devices, then explicit counts."""
    hints = [p.delivery for p in procedures if p.delivery in (AFTERLOADING, MANUAL)]
    if hints and len(set(hints)) == 1:
        return hints[0]
    applicators = any(d.kind == "applicator" for d in devices)
    seeds = any(d.kind == "seed" for d in devices)
    if applicators != seeds:
        return AFTERLOADING if applicators else MANUAL
    channels = any(d.explicit_channels is not None for d in devices)
    sources = any(d.explicit_sources is not None for d in devices)
    if channels != sources:
        return AFTERLOADING if channels else MANUAL
    # Mixed or silent evidence: the earliest Procedure's own codes decide when they say anything.
    return hints[0] if hints else None


def count_units(delivery: str | None, devices: Sequence[DeviceFact], rules: RuleSet) -> Count:
    """Count channels (afterloading) or sources (manual); explicit counts win over implied ones."""
    kind = "sources" if delivery == MANUAL else "channels"
    if kind == "channels":
        explicit_devices = tuple(d for d in devices if d.explicit_channels is not None)
        explicit = sum(d.explicit_channels or 0 for d in explicit_devices) if explicit_devices else None
        implied_devices = tuple(d for d in devices if d.kind == "applicator")
    else:
        explicit_devices = tuple(d for d in devices if d.explicit_sources is not None)
        explicit = sum(d.explicit_sources or 0 for d in explicit_devices) if explicit_devices else None
        implied_devices = tuple(d for d in devices if d.kind == "seed" and d.explicit_sources is None)
    if delivery is None:
        # Nothing says how the dose was delivered: no count can be trusted.
        return Count(kind, None, "none", explicit, 0, explicit_devices, ())
    implied = len(implied_devices)
    if explicit:
        return Count(kind, explicit, "explicit", explicit, implied, explicit_devices, implied_devices)
    if implied:
        return Count(kind, implied, "implied", explicit, implied, explicit_devices, implied_devices)
    return Count(kind, None, "none", explicit, implied, explicit_devices, implied_devices)


def level_for(count: Count, rules: RuleSet) -> str | None:
    """Map the count to 77316/77317/77318 with the planning-levels bands; None without a count."""
    if not count.value:
        return None
    for band in rules.level_bands[count.kind]:
        if count.value >= band.minimum and (band.maximum is None or count.value <= band.maximum):
            return band.code
    return None


def decide_setting(facts: EncounterFacts, rules: RuleSet, sites: Sequence[SiteEntry]) -> Setting:
    """Find the setting, first match wins: site table, CMS POS, v3 RoleCode HOSP/HU, Encounter class."""
    inpatient_class = next((c for c in facts.encounter_class if c in rules.inpatient_classes), None)
    for location in facts.locations:
        site = match_site(location.identifiers, sites)
        if site:
            return _site_setting(site, rules, location=location)
    if facts.service_provider is not None:
        site = match_site(facts.service_provider.identifiers, sites)
        if site:
            return _site_setting(site, rules, organization=facts.service_provider)
    for location in facts.locations:
        if location.pos_codes:
            pos = location.pos_codes[0]
            name = rules.pos_settings.get(pos, "unknown")
            return Setting(name, pos, "global", "location-pos", location=location)
    for location in facts.locations:
        role = next((r for r in location.role_codes if r in rules.hospital_role_codes), None)
        if role:
            name = "hospital-inpatient" if inpatient_class else "hospital-outpatient"
            return Setting(name, _pos_of(name, rules), "global", "location-role", location=location, role_code=role)
    if inpatient_class:
        return Setting(
            "hospital-inpatient",
            _pos_of("hospital-inpatient", rules),
            "global",
            "encounter-class",
            encounter_class=inpatient_class,
        )
    return Setting("unknown", None, "global", "none")


def match_site(identifiers: Iterable[Identifier], sites: Sequence[SiteEntry]) -> SiteEntry | None:
    """Return the first site-table entry whose identifier matches one of ``identifiers``."""
    pairs = set(identifiers)
    values = {value for _, value in pairs}
    for site in sites:
        if (site.system, site.value) in pairs or (not site.system and site.value in values):
            return site
    return None


def _site_setting(
    site: SiteEntry,
    rules: RuleSet,
    location: LocationFact | None = None,
    organization: OrganizationFact | None = None,
) -> Setting:
    name = rules.pos_settings.get(site.pos, "unknown")
    return Setting(name, site.pos, site.billing, "site-table", location=location, organization=organization, site=site)


def _pos_of(setting_name: str, rules: RuleSet) -> str | None:
    return next((pos for pos, name in rules.pos_settings.items() if name == setting_name), None)


def charge_options(level: str, setting: Setting, rules: RuleSet, gc: bool = False) -> tuple[ChargeOption, ...]:
    """Build the charge options of the setting from modifiers-by-setting; with ``gc``, GC goes after 26."""
    entry = rules.modifier_lines[setting.modifier_key]

    def line(modifiers: Sequence[str]) -> ChargeLine:
        modifiers = list(modifiers)
        if gc and rules.teaching.after in modifiers:
            modifiers.insert(modifiers.index(rules.teaching.after) + 1, rules.teaching.modifier)
        return ChargeLine(level, tuple(modifiers))

    if "alternatives" in entry:
        return tuple(
            ChargeOption(tuple(line(mods) for mods in option), recommended=False) for option in entry["alternatives"]
        )
    return (ChargeOption(tuple(line(mods) for mods in entry["lines"]), recommended=True),)


def reconcile(
    existing: Sequence[ChargeFact], options: Sequence[ChargeOption], max_units: int = 1
) -> tuple[tuple[ChargeFact, ...], tuple[ChargeOption, ...]]:
    """Compare existing planning charges with the options: what to delete and what to create.

    Nothing to do when the existing lines equal one option (modifier order aside). Otherwise keep
    the existing lines that belong to the recommended option, delete the rest and create what is
    missing; with no recommendation (unknown setting) any line of an alternative is accepted. A
    charge whose quantity is over ``max_units`` matches no line: it is replaced by one of one unit.
    """
    over = [charge for charge in existing if _over(charge, max_units)]
    if over:
        rest_delete, to_create = reconcile([c for c in existing if c not in over], options, max_units)
        return (*over, *rest_delete), to_create
    have = Counter(_key(charge.code or "", charge.modifiers) for charge in existing)
    for option in options:
        if have == Counter(_key(line.code, line.modifiers) for line in option.lines):
            return (), ()
    if not existing:
        return (), tuple(options)
    recommended = next((option for option in options if option.recommended), None)
    if recommended is None:
        acceptable = {_key(line.code, line.modifiers) for option in options for line in option.lines}
        if all(_key(c.code or "", c.modifiers) in acceptable for c in existing):
            return (), ()
        return tuple(existing), tuple(options)
    wanted = Counter(_key(line.code, line.modifiers) for line in recommended.lines)
    to_delete = []
    for charge in existing:
        key = _key(charge.code or "", charge.modifiers)
        if wanted[key] > 0:
            wanted[key] -= 1
        else:
            to_delete.append(charge)
    missing = []
    for line in recommended.lines:
        key = _key(line.code, line.modifiers)
        if wanted[key] > 0:
            wanted[key] -= 1
            missing.append(line)
    return tuple(to_delete), ((ChargeOption(tuple(missing), recommended=True),) if missing else ())


def _key(code: str, modifiers: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    return code, tuple(sorted(m.upper() for m in modifiers))


def earliest_date(procedures: Sequence[ProcedureFact]) -> str | None:
    """The charge date: the date part of the earliest brachytherapy Procedure start (contract 5.3)."""
    starts = sorted(p.start for p in procedures if p.start)
    return starts[0][:10] if starts else None
