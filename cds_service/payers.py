"""Recognise the patient's payer from the active Coverages' payor Organizations and pick its notes.

Pure like the coding core that calls it (style.md): facts and the RuleSet in, matches out. Contract
5.3: by the payor's identifier or name (case-insensitive), through the payer table of
``fhir_mappings/rules/payers.yaml`` that a deployment extends with ``BRACHY_CDS_PAYERS`` (its entries
are checked first). A commercial name wins over "Medicare": the shipped table lists Medicare last,
and such a plan is flagged as Medicare Advantage ("Aetna Medicare Advantage" is Aetna, with a
Medicare Advantage note).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

from fhir_mappings.facts import CoverageFact, OrganizationFact
from fhir_mappings.rules import NO_PAYER, Payer, PayerEntry, PayerNote, RuleSet


@dataclass(frozen=True)
class PayerMatch:
    """A recognised payer of an active Coverage, how it was recognised and the notes that apply."""

    payer: Payer
    payor: OrganizationFact
    coverage_ref: str
    matched: str
    """The alias or identifier value that matched (from the table, never free text from FHIR)."""
    by: str
    """``"identifier"`` or ``"name"``."""
    origin: str
    """The table row: ``payer-identification`` or ``BRACHY_CDS_PAYERS entry N``."""
    medicare_advantage: bool
    notes: tuple[PayerNote, ...]


def identify_payers(coverages: Sequence[CoverageFact], rules: RuleSet) -> tuple[PayerMatch, ...]:
    """Return the noted payers of the active Coverages, primary first (Coverage.order, then document order).

    Each payer appears once. Payors that match no row, or a deployment row with payer ``none``,
    give nothing: an unknown payer gets no payer-note card (contract section 4).
    """
    ordered = sorted(enumerate(coverages), key=lambda item: (item[1].order is None, item[1].order or 0, item[0]))
    matches: dict[str, PayerMatch] = {}
    for _, coverage in ordered:
        for payor in coverage.payors:
            match = match_payor(payor, coverage.ref, rules)
            if match is not None:
                matches.setdefault(match.payer.id, match)
    return tuple(matches.values())


def match_payor(payor: OrganizationFact, coverage_ref: str, rules: RuleSet) -> PayerMatch | None:
    """Match one payor Organization: identifiers first (every row), then names (every row), first row wins."""
    found = _by_identifier(payor, rules.payer_table) or _by_name(payor, rules.payer_table)
    if found is None or found[0].payer == NO_PAYER:
        return None
    entry, matched, by = found
    payer = rules.payers[entry.payer]
    medicare_aliases = _aliases_of(rules.medicare_payer, rules.payer_table)
    medicare_advantage = _mentions(payor.label, rules.medicare_advantage_aliases) or (
        payer.id != rules.medicare_payer and _mentions(payor.label, medicare_aliases)
    )
    notes = tuple(
        note
        for note in rules.payer_notes
        if payer.id in note.payers
        and (not note.names or _mentions(payor.label, note.names))
        and (medicare_advantage or not note.medicare_advantage)
    )
    notes = tuple(sorted(notes, key=lambda note: note.medicare_advantage))  # the payer's own notes first
    return PayerMatch(payer, payor, coverage_ref, matched, by, entry.origin, medicare_advantage, notes)


def _by_identifier(payor: OrganizationFact, table: Iterable[PayerEntry]) -> tuple[PayerEntry, str, str] | None:
    pairs = set(payor.identifiers)
    values = {value for _, value in pairs}
    for entry in table:
        for system, value in entry.identifiers:
            if (system, value) in pairs or (not system and value in values):
                return entry, value, "identifier"
    return None


def _by_name(payor: OrganizationFact, table: Iterable[PayerEntry]) -> tuple[PayerEntry, str, str] | None:
    for entry in table:
        for alias in entry.aliases:
            if _mentions(payor.label, (alias,)):
                return entry, alias, "name"
    return None


def _aliases_of(payer_id: str, table: Iterable[PayerEntry]) -> tuple[str, ...]:
    return tuple(alias for entry in table if entry.payer == payer_id for alias in entry.aliases)


def _mentions(name: str | None, aliases: Iterable[str]) -> bool:
    """Tell whether ``name`` contains one of ``aliases`` as whole words, ignoring case and spacing."""
    return bool(name) and any(_alias_pattern(alias).search(name) for alias in aliases)


@cache
def _alias_pattern(alias: str) -> re.Pattern[str]:
    words = [re.escape(word) for word in alias.split()]
    return re.compile(r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)", re.IGNORECASE)
