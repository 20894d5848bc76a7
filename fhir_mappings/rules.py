"""Load and validate the rule files under ``fhir_mappings/rules/`` into an immutable RuleSet.

Rules are data with provenance (style.md; HL7 Da Vinci CDS-Library keeps rules as versioned files
with their source): every entry carries ``id``, ``version``, ``effective``, ``source`` and a confidence
``grade`` from reference/billing.md. The files are read once at start-up; a broken file stops start-up
with a message that names the file and the problem.

This module imports neither Flask, requests nor fhir.resources: the coding core reads the RuleSet.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

GRADES = ("H", "M", "L", "U")
RULE_FILES = ("codes.yaml", "billing.yaml")
DEFAULT_CANONICAL_BASE = "https://brachy-cds.org/fhir"


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

    def rule(self, rule_id: str) -> Rule:
        """Return the rule with ``rule_id``; KeyError when no such rule is loaded."""
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)

    def hcpcs_systems(self) -> frozenset[str]:
        """Accepted HCPCS system URIs: the https form we emit and the http form older IGs use."""
        return frozenset([self.systems["hcpcs"], *self.systems.get("hcpcs_aliases", ())])


def load_rules(
    canonical_base: str = DEFAULT_CANONICAL_BASE, directory: str | Path | None = None
) -> RuleSet:
    """Read, validate and index the rule files; raise RuleFileError naming the file on any problem."""
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
    try:
        return _index(tuple(rules), digest.hexdigest()[:8])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RuleFileError(f"rule data incomplete or malformed: {exc!r}") from None


def _read(name: str, directory: str | Path | None) -> str:
    try:
        if directory is not None:
            return (Path(directory) / name).read_text(encoding="utf-8")
        return resources.files("fhir_mappings").joinpath("rules", name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleFileError(f"{name}: cannot be read ({exc.__class__.__name__})") from None


def _parse_file(name: str, text: str, canonical_base: str) -> list[Rule]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleFileError(f"{name}: not valid YAML ({exc})") from None
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
        or not all(isinstance(s, str) and s.startswith(("https://", "http://")) for s in sources)
    ):
        raise RuleFileError(f"{where}: source must be a non-empty list of http(s) URLs")
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


def _index(rules: tuple[Rule, ...], digest: str) -> RuleSet:
    by_id = {rule.id: rule for rule in rules}
    systems = MappingProxyType(dict(by_id["code-systems"].data))

    def code_set(rule_id: str) -> Mapping[tuple[str, str], CodeEntry]:
        entries = {}
        for item in by_id[rule_id].data:
            system = systems[item["system"]]
            delivery = item.get("delivery")
            if delivery not in (None, "afterloading", "manual"):
                raise ValueError(f"{rule_id}: unknown delivery {delivery!r}")
            entries[(system, str(item["code"]))] = CodeEntry(
                system, str(item["code"]), str(item["label"]), delivery
            )
        return MappingProxyType(entries)

    levels = by_id["planning-levels"].data
    bands = {
        kind: tuple(LevelBand(int(b["min"]), b["max"], str(b["code"])) for b in levels[kind])
        for kind in ("channels", "sources")
    }
    for kind, kind_bands in bands.items():
        _check_bands(kind, kind_bands, set(levels["codes"]))
    setting = by_id["setting-from-fhir"].data
    modifiers = dict(by_id["modifiers-by-setting"].data)
    modifier_systems = modifiers.pop("modifier_systems")
    for setting_name in ("hospital-outpatient", "hospital-inpatient", "office-global", "office-split", "unknown"):
        if setting_name not in modifiers:
            raise ValueError(f"modifiers-by-setting: no entry for {setting_name}")
    bundling = by_id["bundling-77300"].data
    version = max((rule.version for rule in rules), key=_version_key)
    return RuleSet(
        rules=rules,
        version=f"{version}+{digest}",
        systems=systems,
        procedure_codes=code_set("brachytherapy-procedure-codes"),
        electronic_codes=code_set("electronic-brachytherapy-codes"),
        applicator_types=code_set("applicator-device-types"),
        seed_types=code_set("seed-device-types"),
        count_codes=MappingProxyType(dict(by_id["explicit-count-property"].data)),
        level_bands=MappingProxyType(bands),
        level_labels=MappingProxyType({str(k): MappingProxyType(v) for k, v in levels["codes"].items()}),
        pos_settings=MappingProxyType({str(k): v for k, v in setting["pos_settings"].items()}),
        hospital_role_codes=frozenset(setting["role_codes_hospital"]),
        inpatient_classes=frozenset(setting["inpatient_classes"]),
        modifier_lines=MappingProxyType(modifiers),
        modifier_systems=MappingProxyType({k: systems[v] for k, v in modifier_systems.items()}),
        bundled_code=str(bundling["bundled_code"]),
        planning_codes=frozenset(str(c) for c in bundling["into"]),
        quantity=int(by_id["units-per-encounter"].data["quantity"]),
    )


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
