"""Load and validate the rule files under ``fhir_mappings/rules/`` into an immutable RuleSet.

Rules are data with provenance (style.md; HL7 Da Vinci CDS-Library keeps rules as versioned files
with their source): every entry carries ``id``, ``version``, ``effective``, ``source`` and a confidence
``grade`` from reference/billing.md. The files are read once at start-up; a broken file stops start-up
with a message that names the file and the problem.

``BRACHY_CDS_RULES_DIR`` may replace the shipped files with a copy (to try a rule change). Two
deployment tables extend the shipped data and are validated the same way: a payer table
(``BRACHY_CDS_PAYERS``: more names and identifiers per payer, checked before the shipped ones) and
resident codes (``BRACHY_CDS_RESIDENT_CODES``: how the EHR marks a resident among Procedure performers).

This module imports neither Flask, requests nor fhir.resources: the coding core reads the RuleSet.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

GRADES = ("H", "M", "L", "U")
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader when PyYAML was built with it: rule files load about ten times faster."""
LOW_GRADES = frozenset({"L", "U"})
"""Grades that never produce a warning on their own: such rules appear as "verify" notes only."""
RULE_FILES = ("codes.yaml", "billing.yaml", "payers.yaml", "documentation.yaml")
DEFAULT_CANONICAL_BASE = "https://brachy-cds.org/fhir"
NO_PAYER = "none"
"""Payer id a deployment's payer table may give a name or identifier: "not one of the noted payers"."""
EVIDENCE_KINDS = ("count", "imaging-study", "procedure-code", "consent", "document-type", "performer-function")
"""Kinds of FHIR evidence a documentation element can name (documentation.yaml explains each)."""
EVIDENCE_TYPES = {
    "count": "Device",
    "imaging-study": "ImagingStudy",
    "procedure-code": "Procedure",
    "consent": "Consent",
    "document-type": "DocumentReference",
    "performer-function": "Procedure",
}
"""The FHIR resource type whose data each evidence kind needs (unchecked when it could not be had)."""
_CODED_KINDS = frozenset({"procedure-code", "document-type", "performer-function"})
_URL_UNSAFE = re.compile(r"[\s()<>`\[\]]")


class RuleFileError(ValueError):
    """A rule file is missing, unreadable or does not follow the rule schema."""


@dataclass(frozen=True)
class Rule:
    """One versioned rule with its provenance; ``data`` is the rule-specific payload."""

    id: str
    version: str
    effective: str
    grade: str
    title: str
    sources: tuple[str, ...]
    file: str
    data: Any = field(compare=False, repr=False)


@dataclass(frozen=True)
class CodeEntry:
    """A code of a code set, with its own-words label and (for procedures) the delivery type it implies."""

    system: str
    code: str
    label: str
    delivery: str | None = None


@dataclass(frozen=True)
class LevelBand:
    """Counts from ``minimum`` to ``maximum`` (None: no upper bound) give planning ``code``."""

    minimum: int
    maximum: int | None
    code: str


@dataclass(frozen=True)
class Payer:
    """A payer the service has notes for: its id, the name cards show and a one-line summary."""

    id: str
    name: str
    summary: str


@dataclass(frozen=True)
class PayerEntry:
    """One row of the payer identification table: names and identifiers that mean ``payer``.

    ``payer`` is a Payer id or ``"none"`` (a deployment saying a payor is none of the noted payers).
    """

    payer: str
    aliases: tuple[str, ...]
    identifiers: tuple[tuple[str, str], ...]
    """(system, value); system "" matches any system."""
    origin: str
    """``payer-identification`` or ``BRACHY_CDS_PAYERS entry N``, for messages and cards."""


@dataclass(frozen=True)
class PayerNote:
    """What a source says about a payer (payers.yaml ``payer-note-*``), shown on the payer-note card."""

    rule_id: str
    payers: tuple[str, ...]
    text: str
    read: str
    """The date the note's content was taken from its source notes (YYYY-MM-DD)."""
    names: tuple[str, ...] = ()
    """When set: only for payors whose name contains one of these words."""
    medicare_advantage: bool = False
    """When true: only for plans recognised as Medicare Advantage."""


@dataclass(frozen=True)
class Evidence:
    """One way to show a documentation element is there; ``codes`` for the coded kinds."""

    kind: str
    codes: tuple[CodeEntry, ...] = ()

    def code_pairs(self) -> frozenset[tuple[str, str]]:
        """The (system, code) pairs of ``codes``."""
        return frozenset((entry.system, entry.code) for entry in self.codes)

    @property
    def resource_type(self) -> str:
        """The FHIR resource type this evidence needs."""
        return EVIDENCE_TYPES[self.kind]


@dataclass(frozen=True)
class DocumentationElement:
    """An element of billing.md section 5 and the FHIR evidence that shows it (documentation.yaml)."""

    rule_id: str
    element: str
    evidence: tuple[Evidence, ...]
    not_checked: str | None = None
    gap: str = "warning"
    """What a missing element does: ``warning`` (raises the documentation-gap card) or ``verify`` (a note)."""
    gap_basis: str | None = None
    """Why an element graded L or U may still warn (the service contract names it), shown in ``rules``."""


@dataclass(frozen=True)
class TeachingRule:
    """GC for a resident's part in the service at a teaching site (billing.yaml, ``teaching-physician-gc``)."""

    modifier: str
    after: str
    resident_codes: frozenset[tuple[str, str]]
    """Procedure.performer.function or PractitionerRole.code codes that mark a resident."""


@dataclass(frozen=True)
class RuleSet:
    """Every rule the service applies, indexed for the mapping layer and the coding core."""

    rules: tuple[Rule, ...]
    version: str
    """Rule-set version: the highest rule version plus a short digest of all rule files."""
    systems: Mapping[str, str]
    procedure_codes: Mapping[tuple[str, str], CodeEntry]
    electronic_codes: Mapping[tuple[str, str], CodeEntry]
    applicator_types: Mapping[tuple[str, str], CodeEntry]
    seed_types: Mapping[tuple[str, str], CodeEntry]
    count_codes: Mapping[str, str]
    """``{"channels": "channels-used", "sources": "sources"}``."""
    level_bands: Mapping[str, tuple[LevelBand, ...]]
    """``{"channels": (...), "sources": (...)}``."""
    level_labels: Mapping[str, Mapping[str, str]]
    pos_settings: Mapping[str, str]
    hospital_role_codes: frozenset[str]
    inpatient_classes: frozenset[str]
    modifier_lines: Mapping[str, Mapping[str, Any]]
    modifier_systems: Mapping[str, str]
    bundled_code: str
    planning_codes: frozenset[str]
    quantity: int
    max_units_per_date: int = 1
    teaching: TeachingRule = TeachingRule("GC", "26", frozenset())
    payers: Mapping[str, Payer] = field(default_factory=dict)
    payer_table: tuple[PayerEntry, ...] = ()
    """Deployment entries first, then the shipped ones; the first match wins."""
    medicare_advantage_aliases: tuple[str, ...] = ()
    medicare_payer: str = ""
    """The payer id whose aliases, in another payer's name, mark a Medicare Advantage plan."""
    payer_notes: tuple[PayerNote, ...] = ()
    documentation: tuple[DocumentationElement, ...] = ()

    def rule(self, rule_id: str) -> Rule:
        """Return the rule with ``rule_id``; KeyError when no such rule is loaded."""
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)

    def grade(self, rule_id: str) -> str:
        """The confidence grade of a rule (H/M/L/U)."""
        return self.rule(rule_id).grade

    def hcpcs_systems(self) -> frozenset[str]:
        """Accepted HCPCS system URIs: the https form we emit and the http form older IGs use."""
        return frozenset([self.systems["hcpcs"], *self.systems.get("hcpcs_aliases", ())])


def load_rules(
    canonical_base: str = DEFAULT_CANONICAL_BASE,
    directory: str | Path | None = None,
    *,
    payer_table: str | Path | None = None,
    resident_codes: str | Path | None = None,
) -> RuleSet:
    """Read, validate and index the rule files; raise RuleFileError naming the file on any problem.

    ``directory`` replaces the shipped rule files (``BRACHY_CDS_RULES_DIR``); ``payer_table`` and
    ``resident_codes`` are the deployment's extension tables (``BRACHY_CDS_PAYERS``,
    ``BRACHY_CDS_RESIDENT_CODES``), merged after the same validation.
    """
    base = canonical_base.rstrip("/")
    rules: list[Rule] = []
    digest = hashlib.sha256()
    for name in RULE_FILES:
        text = _read(name, directory)
        digest.update(text.encode())
        rules.extend(_parse_file(name, text, base))
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            raise RuleFileError(f"{rule.file}: rule id {rule.id!r} is defined twice")
        seen.add(rule.id)
    local_payers = _local_table("BRACHY_CDS_PAYERS", payer_table)
    local_codes = _local_table("BRACHY_CDS_RESIDENT_CODES", resident_codes)
    for label, table in (("BRACHY_CDS_PAYERS", local_payers), ("BRACHY_CDS_RESIDENT_CODES", local_codes)):
        if table is not None:
            digest.update(f"{label}={json.dumps(table[1], sort_keys=True, default=str)}".encode())
    return _Indexer(tuple(rules), digest.hexdigest()[:8], local_payers, local_codes).build()


def _read(name: str, directory: str | Path | None) -> str:
    try:
        if directory is not None:
            return (Path(directory) / name).read_text(encoding="utf-8")
        return resources.files("fhir_mappings").joinpath("rules", name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleFileError(f"{name}: cannot be read ({exc.__class__.__name__})") from None


def _parse_file(name: str, text: str, canonical_base: str) -> list[Rule]:
    try:
        document = yaml.load(text, Loader=SAFE_LOADER)  # noqa: S506 - a safe loader, the C one when built
    except yaml.YAMLError as exc:
        raise RuleFileError(f"{name}: not valid YAML ({_yaml_problem(exc)})") from None
    if not isinstance(document, dict) or not isinstance(document.get("rules"), list):
        raise RuleFileError(f"{name}: expected a mapping with a 'rules' list")
    parsed = []
    for position, entry in enumerate(document["rules"]):
        where = f"{name}: rule #{position + 1}"
        if not isinstance(entry, dict):
            raise RuleFileError(f"{where}: expected a mapping")
        parsed.append(_parse_rule(where, name, entry, canonical_base))
    return parsed


def _parse_rule(where: str, name: str, entry: dict, canonical_base: str) -> Rule:
    allowed = {"id", "version", "effective", "grade", "title", "source", "data"}
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise RuleFileError(f"{where}: unknown key(s) {', '.join(unknown)}")
    for key in ("id", "version", "effective", "grade", "title"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise RuleFileError(f"{where}: '{key}' must be a non-empty string")
    rule_id = entry["id"]
    where = f"{name}: rule {rule_id!r}"
    if entry["grade"] not in GRADES:
        raise RuleFileError(f"{where}: grade must be one of {', '.join(GRADES)}")
    try:
        dt.date.fromisoformat(entry["effective"])
    except ValueError:
        raise RuleFileError(f"{where}: effective must be a date YYYY-MM-DD") from None
    sources = entry.get("source")
    if (
        not isinstance(sources, list)
        or not sources
        or not all(
            isinstance(s, str) and s.startswith(("https://", "http://")) and not _URL_UNSAFE.search(s) for s in sources
        )
    ):
        raise RuleFileError(
            f"{where}: source must be a non-empty list of http(s) URLs (no spaces, brackets or parentheses)"
        )
    if "data" not in entry:
        raise RuleFileError(f"{where}: 'data' is missing")
    return Rule(
        id=rule_id,
        version=entry["version"],
        effective=entry["effective"],
        grade=entry["grade"],
        title=entry["title"],
        sources=tuple(sources),
        file=name,
        data=_substitute(entry["data"], canonical_base),
    )


def _substitute(value: Any, canonical_base: str) -> Any:
    if isinstance(value, str):
        return value.replace("{canon}", canonical_base)
    if isinstance(value, list):
        return [_substitute(v, canonical_base) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, canonical_base) for k, v in value.items()}
    return value


class _Indexer:
    """Index the parsed rules for the mapping layer and the coding core, naming the rule of any problem."""

    def __init__(
        self,
        rules: tuple[Rule, ...],
        digest: str,
        local_payers: tuple[str, Any] | None,
        local_codes: tuple[str, Any] | None,
    ) -> None:
        self.rules = rules
        self.digest = digest
        self.by_id = {rule.id: rule for rule in rules}
        self.local_payers = local_payers
        self.local_codes = local_codes
        self.systems: Mapping[str, str] = MappingProxyType({})

    def parse(self, rule_id: str, parser: Any) -> Any:
        """Run ``parser`` on a rule's data; a problem becomes a RuleFileError naming the file and the rule."""
        rule = self.by_id.get(rule_id)
        if rule is None:
            raise RuleFileError(f"rule {rule_id!r} is missing from the rule files ({', '.join(RULE_FILES)})")
        try:
            return parser(rule.data)
        except RuleFileError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RuleFileError(f"{rule.file}: rule {rule_id!r}: {_problem(exc)}") from None

    def build(self) -> RuleSet:
        self.systems = self.parse("code-systems", lambda data: MappingProxyType(_string_map(data, "code-systems")))
        levels = self.parse("planning-levels", _levels)
        setting = self.parse("setting-from-fhir", dict)
        modifiers = self.parse("modifiers-by-setting", self._modifiers)
        bundling = self.parse(
            "bundling-77300", lambda data: (str(data["bundled_code"]), frozenset(map(str, data["into"])))
        )
        payers, table, ma_aliases, medicare = self.parse("payer-identification", self._payers)
        version = max((rule.version for rule in self.rules), key=_version_key)
        return RuleSet(
            rules=self.rules,
            version=f"{version}+{self.digest}",
            systems=self.systems,
            procedure_codes=self.parse("brachytherapy-procedure-codes", self._code_set),
            electronic_codes=self.parse("electronic-brachytherapy-codes", self._code_set),
            applicator_types=self.parse("applicator-device-types", self._code_set),
            seed_types=self.parse("seed-device-types", self._code_set),
            count_codes=self.parse("explicit-count-property", lambda data: MappingProxyType(dict(data))),
            level_bands=levels[0],
            level_labels=levels[1],
            pos_settings=MappingProxyType({str(k): v for k, v in setting["pos_settings"].items()}),
            hospital_role_codes=frozenset(setting["role_codes_hospital"]),
            inpatient_classes=frozenset(setting["inpatient_classes"]),
            modifier_lines=modifiers[0],
            modifier_systems=modifiers[1],
            bundled_code=bundling[0],
            planning_codes=bundling[1],
            quantity=self.parse("units-per-encounter", lambda data: _positive_int(data["quantity"], "quantity")),
            max_units_per_date=self.parse(
                "duplicate-planning-charge",
                lambda data: _positive_int(data["max_units_per_date_of_service"], "max_units_per_date_of_service"),
            ),
            teaching=self._teaching(),
            payers=payers,
            payer_table=table,
            medicare_advantage_aliases=ma_aliases,
            medicare_payer=medicare,
            payer_notes=self._payer_notes(payers),
            documentation=self._documentation(),
        )

    # Code sets and modifiers

    def _code_entry(self, item: Any, delivery_allowed: bool = False) -> CodeEntry:
        if not isinstance(item, dict):
            raise ValueError("each code must be a mapping with system, code and label")
        system_key = item["system"]
        if system_key not in self.systems:
            raise ValueError(f"unknown code system {system_key!r} (not in code-systems)")
        delivery = item.get("delivery")
        if delivery not in (None, "afterloading", "manual") or (delivery and not delivery_allowed):
            raise ValueError(f"unknown delivery {delivery!r}")
        return CodeEntry(self.systems[system_key], str(item["code"]), str(item["label"]), delivery)

    def _code_set(self, data: Any) -> Mapping[tuple[str, str], CodeEntry]:
        if not isinstance(data, list) or not data:
            raise ValueError("expected a non-empty list of codes")
        entries = [self._code_entry(item, delivery_allowed=True) for item in data]
        return MappingProxyType({(entry.system, entry.code): entry for entry in entries})

    def _modifiers(self, data: Any) -> tuple[Mapping[str, Mapping[str, Any]], Mapping[str, str]]:
        modifiers = dict(data)
        modifier_systems = modifiers.pop("modifier_systems")
        for setting_name in ("hospital-outpatient", "hospital-inpatient", "office-global", "office-split", "unknown"):
            if setting_name not in modifiers:
                raise ValueError(f"no entry for {setting_name}")
        systems = {k: self.systems[v] for k, v in modifier_systems.items()}
        return MappingProxyType(modifiers), MappingProxyType(systems)

    def _teaching(self) -> TeachingRule:
        modifier, after = self.parse("teaching-physician-gc", lambda data: (str(data["modifier"]), str(data["after"])))
        codes = self.parse(
            "resident-recognition",
            lambda data: [(entry.system, entry.code) for entry in map(self._code_entry, _list_of(data["codes"]))],
        )
        if self.local_codes is not None:
            codes += _local_codes(*self.local_codes)
        return TeachingRule(modifier, after, frozenset(codes))

    # Payers

    def _payers(self, data: Any) -> tuple[Mapping[str, Payer], tuple[PayerEntry, ...], tuple[str, ...], str]:
        payers: dict[str, Payer] = {}
        shipped: list[PayerEntry] = []
        for item in _list_of(data["payers"]):
            payer_id = _text(item, "id")
            if payer_id in payers or payer_id == NO_PAYER:
                raise ValueError(f"payer id {payer_id!r} is used twice or reserved")
            _no_unknown_keys(item, {"id", "name", "summary", "aliases", "identifiers"}, f"payer {payer_id!r}")
            payers[payer_id] = Payer(payer_id, _text(item, "name"), _text(item, "summary"))
            shipped.append(_payer_entry(item, payer_id, "payer-identification"))
        _no_unknown_keys(data, {"payers", "medicare_advantage_aliases", "medicare_payer"}, "data")
        ma_aliases = tuple(_texts(data.get("medicare_advantage_aliases", []), "medicare_advantage_aliases"))
        medicare = _text(data, "medicare_payer")
        if medicare not in payers:
            raise ValueError(f"medicare_payer {medicare!r} is not a payer id")
        local: list[PayerEntry] = []
        if self.local_payers is not None:
            local = _local_payers(*self.local_payers, known=set(payers))
        return MappingProxyType(payers), (*local, *shipped), ma_aliases, medicare

    def _payer_notes(self, payers: Mapping[str, Payer]) -> tuple[PayerNote, ...]:
        def note(rule_id: str) -> Any:
            def parse(data: Any) -> PayerNote:
                _no_unknown_keys(data, {"payers", "text", "read", "names", "medicare_advantage"}, "data")
                ids = tuple(_texts(data["payers"], "payers"))
                unknown = sorted(set(ids) - set(payers))
                if not ids or unknown:
                    raise ValueError(f"payers must name known payer ids ({', '.join(payers)}); got {unknown or ids}")
                read = _text(data, "read")
                dt.date.fromisoformat(read)
                flag = data.get("medicare_advantage", False)
                if not isinstance(flag, bool):
                    raise ValueError("medicare_advantage must be true or false")
                names = tuple(_texts(data.get("names", []), "names"))
                return PayerNote(rule_id, ids, " ".join(_text(data, "text").split()), read, names, flag)

            return self.parse(rule_id, parse)

        return tuple(note(rule.id) for rule in self.rules if rule.id.startswith("payer-note-"))

    # Documentation

    def _documentation(self) -> tuple[DocumentationElement, ...]:
        def element(rule_id: str) -> DocumentationElement:
            def parse(data: Any) -> DocumentationElement:
                _no_unknown_keys(data, {"element", "evidence", "not_checked", "gap", "gap_basis"}, "data")
                evidence = tuple(self._evidence(item) for item in _list_of(data["evidence"], allow_empty=True))
                not_checked = data.get("not_checked")
                if not evidence and not (isinstance(not_checked, str) and not_checked.strip()):
                    raise ValueError("an element without evidence needs a 'not_checked' reason")
                grade = self.by_id[rule_id].grade
                gap = data.get("gap", "verify" if grade in ("L", "U") else "warning")
                if gap not in ("warning", "verify"):
                    raise ValueError("gap must be 'warning' or 'verify'")
                basis = data.get("gap_basis")
                if gap == "warning" and grade in ("L", "U") and not (isinstance(basis, str) and basis.strip()):
                    raise ValueError("an element graded L or U warns only with a 'gap_basis' saying who requires it")
                return DocumentationElement(
                    rule_id, _text(data, "element"), evidence, not_checked or None, gap, basis or None
                )

            return self.parse(rule_id, parse)

        return tuple(element(rule.id) for rule in self.rules if rule.id.startswith("documentation-"))

    def _evidence(self, item: Any) -> Evidence:
        if not isinstance(item, dict):
            raise ValueError("each evidence entry must be a mapping with a 'kind'")
        _no_unknown_keys(item, {"kind", "codes"}, "evidence")
        kind = item.get("kind")
        if kind not in EVIDENCE_KINDS:
            raise ValueError(f"evidence kind {kind!r} is not one of {', '.join(EVIDENCE_KINDS)}")
        if kind in _CODED_KINDS:
            return Evidence(kind, tuple(self._code_entry(code) for code in _list_of(item.get("codes"))))
        if "codes" in item:
            raise ValueError(f"evidence kind {kind!r} takes no codes")
        return Evidence(kind)


def _levels(data: Any) -> tuple[Mapping[str, tuple[LevelBand, ...]], Mapping[str, Mapping[str, str]]]:
    bands = {
        kind: tuple(LevelBand(int(b["min"]), b["max"], str(b["code"])) for b in data[kind])
        for kind in ("channels", "sources")
    }
    for kind, kind_bands in bands.items():
        _check_bands(kind, kind_bands, set(data["codes"]))
    labels = MappingProxyType({str(k): MappingProxyType(v) for k, v in data["codes"].items()})
    return MappingProxyType(bands), labels


def _payer_entry(item: dict, payer: str, origin: str) -> PayerEntry:
    aliases = tuple(_texts(item.get("aliases", []), "aliases"))
    identifiers = []
    for identifier in _list_of(item.get("identifiers", []), allow_empty=True):
        if (
            not isinstance(identifier, dict)
            or set(identifier) - {"system", "value"}
            or not isinstance(identifier.get("value"), str)
            or not identifier["value"].strip()
            or not isinstance(identifier.get("system", ""), str)
        ):
            raise ValueError("each identifier must be {system, value} with a non-empty string value")
        identifiers.append((identifier.get("system", ""), identifier["value"]))
    if not aliases and not identifiers:
        raise ValueError("give at least one of 'aliases' or 'identifiers'")
    return PayerEntry(payer, aliases, tuple(identifiers), origin)


def _local_table(variable: str, path: str | Path | None) -> tuple[str, Any] | None:
    """Read a deployment table (YAML, or JSON by suffix) that must hold a list; RuleFileError names the file."""
    if path is None or not str(path).strip():
        return None
    where = f"{variable}: {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleFileError(f"{where}: cannot be read ({exc.__class__.__name__})") from None
    try:
        data = json.loads(text) if str(path).lower().endswith(".json") else yaml.load(text, Loader=SAFE_LOADER)  # noqa: S506
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise RuleFileError(f"{where}: not valid JSON/YAML ({first_line})") from None
    if not isinstance(data, list):
        raise RuleFileError(f"{where}: must contain a list")
    return where, data


def _local_payers(where: str, rows: list, known: set[str]) -> list[PayerEntry]:
    """Validate a deployment payer table: ``[{payer, aliases?, identifiers?}]``, payer a known id or ``none``."""
    entries = []
    for number, row in enumerate(rows, start=1):
        here = f"{where} entry {number}"
        try:
            if not isinstance(row, dict):
                raise ValueError("expected a mapping")
            _no_unknown_keys(row, {"payer", "aliases", "identifiers"}, "entry")
            payer = row.get("payer")
            if payer not in known and payer != NO_PAYER:
                raise ValueError(f"'payer' must be one of {', '.join(sorted(known))} or {NO_PAYER}")
            entries.append(_payer_entry(row, payer, f"BRACHY_CDS_PAYERS entry {number}"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise RuleFileError(f"{here}: {_problem(exc)}") from None
    return entries


def _local_codes(where: str, rows: list) -> list[tuple[str, str]]:
    """Validate deployment resident codes: ``[{system, code}]`` with absolute system URIs."""
    codes = []
    for number, row in enumerate(rows, start=1):
        if (
            not isinstance(row, dict)
            or set(row) - {"system", "code", "label"}
            or not all(isinstance(row.get(key), str) and row[key].strip() for key in ("system", "code"))
            or ":" not in row["system"]
        ):
            raise RuleFileError(f"{where} entry {number}: expected {{system, code}} with a system URI and a code")
        codes.append((row["system"], row["code"]))
    return codes


def _list_of(value: Any, allow_empty: bool = False) -> list:
    if not isinstance(value, list) or (not value and not allow_empty):
        raise ValueError("expected a non-empty list" if not allow_empty else "expected a list")
    return value


def _text(data: Any, key: str) -> str:
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{key}' must be a non-empty string")
    return value


def _texts(value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        raise ValueError(f"'{key}' must be a list of non-empty strings")
    return value


def _string_map(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a mapping")
    return dict(data)


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"'{key}' must be a whole number of at least 1")
    return value


def _no_unknown_keys(data: Any, allowed: set[str], what: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a mapping")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{what} has unknown key(s) {', '.join(map(str, unknown))}")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: what is wrong and where (PyYAML's own message spans several lines)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or exc.__class__.__name__
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def _problem(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"data incomplete: missing key {exc.args[0]!r}"
    return str(exc) or exc.__class__.__name__


def _check_bands(kind: str, bands: Sequence[LevelBand], codes: set[str]) -> None:
    expected = 1
    for band in bands:
        if band.minimum != expected or band.code not in codes:
            raise ValueError(f"planning-levels.{kind}: bands must start at 1, be contiguous and name known codes")
        if band.maximum is None:
            return
        expected = band.maximum + 1
    raise ValueError(f"planning-levels.{kind}: the last band must be open-ended (max: null)")


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else 0 for part in version.split("."))
