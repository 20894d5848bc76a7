"""The rule files and their loader: provenance on every entry, start-up stops on a broken file, README in step.

Issue 3 acceptance: every rule file entry has a source and a grade; a corrupted rule file stops
start-up with a message naming the file and the problem, through ``create_app`` and through the CLI;
the README section "Rules and their sources" holds exactly the tables ``brachy-cds rules --markdown``
prints. Corrupted copies live in ``tmp_path`` (``BRACHY_CDS_RULES_DIR``): the shipped files are never
touched.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml

from cds_service import create_app
from cds_service.cards import CardRenderer
from cds_service.coding import BUNDLING_CONFLICT, CHARGE_SUGGESTION, decide
from cds_service.config import ConfigError, load_settings
from cds_service.rule_docs import evidence_table, rules_table
from fhir_mappings.facts import ChargeFact, DeviceFact, EncounterFacts, LocationFact, ProcedureFact
from fhir_mappings.rules import GRADES, RULE_FILES, RuleFileError, load_rules

RULES = load_rules()
SHIPPED = Path(str(resources.files("fhir_mappings").joinpath("rules")))
README = Path(__file__).parent.parent / "README.md"
SCRIPT = Path(sys.executable).with_name("brachy-cds")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "cds_service.cli"]


def rule_copy(tmp_path: Path) -> Path:
    """A copy of the shipped rule files to corrupt."""
    target = tmp_path / "rules"
    target.mkdir()
    for name in RULE_FILES:
        shutil.copy(SHIPPED / name, target / name)
    return target


def edit(directory: Path, name: str, old: str, new: str) -> None:
    path = directory / name
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


def raw_entries() -> list[tuple[str, dict]]:
    return [(name, entry) for name in RULE_FILES for entry in yaml.safe_load((SHIPPED / name).read_text())["rules"]]


# Provenance


@pytest.mark.parametrize(("name", "entry"), raw_entries(), ids=lambda v: v.get("id") if isinstance(v, dict) else v)
def test_every_rule_file_entry_has_id_version_effective_sources_and_a_grade(name, entry):
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", entry["id"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", entry["version"])
    assert dt.date.fromisoformat(entry["effective"])
    assert entry["grade"] in GRADES
    assert entry["source"] and all(re.fullmatch(r"https?://\S+", url) for url in entry["source"])
    assert entry["title"].strip() and "data" in entry


def test_all_rule_files_are_loaded_and_ids_are_unique():
    assert [rule.file for rule in RULES.rules] == [name for name, _ in raw_entries()]
    assert len({rule.id for rule in RULES.rules}) == len(RULES.rules) == len(raw_entries())
    assert {"payers.yaml", "documentation.yaml"} <= {rule.file for rule in RULES.rules}


def test_payer_notes_and_documentation_elements_are_indexed():
    assert set(RULES.payers) == {"medicare", "aetna", "bcbs", "cigna", "uhc"}
    assert {payer for note in RULES.payer_notes for payer in note.payers} == set(RULES.payers)
    assert all(dt.date.fromisoformat(note.read) for note in RULES.payer_notes)
    checked = [element.rule_id for element in RULES.documentation if element.evidence]
    assert checked == [
        "documentation-count",
        "documentation-plan-approval",
        "documentation-dosimetry-record",
        "documentation-imaging",
        "documentation-consent",
    ]
    assert RULES.teaching.modifier == "GC" and RULES.teaching.after == "26"
    assert RULES.max_units_per_date == 1


def test_rules_that_decide_warnings_are_graded_h_or_m():
    # A warning card must rest on an H or M rule; L/U findings are "verify" notes only.
    for rule_id in ("planning-levels", "modifiers-by-setting", "explicit-count-property", "bundling-77300",
                    "duplicate-planning-charge", "documentation-plan-approval", "documentation-dosimetry-record"):
        assert RULES.grade(rule_id) in ("H", "M"), rule_id
    assert RULES.grade("documentation-imaging") == "L" and RULES.grade("documentation-consent") == "L"


# Broken rule files


@pytest.mark.parametrize(
    ("name", "old", "new", "message"),
    [
        ("billing.yaml", "rules:\n", "rules:\n  - [unclosed\n",
         r"^billing\.yaml: not valid YAML \(.*expected ',' or '\]'.* at line \d+, column \d+\)$"),
        ("payers.yaml", "    grade: H\n    title: Payer of the active", "    grade: X\n    title: Payer of the active",
         r"^payers\.yaml: rule 'payer-identification': grade must be one of H, M, L, U$"),
        ("documentation.yaml", "      - https://case2code.codingahead.com/cpt/codes/77317\n", "",
         None),  # still one source left: valid
        ("codes.yaml", '    effective: "2015-01-01"\n    grade: H\n    title: Code system URIs',
         '    effective: "2015-13-01"\n    grade: H\n    title: Code system URIs',
         r"^codes\.yaml: rule 'code-systems': effective must be a date YYYY-MM-DD$"),
        ("payers.yaml", "      - https://www.evicore.com/cignaguidelines\n      - https://klivira.com",
         "      - not a url\n      - https://klivira.com",
         r"^payers\.yaml: rule 'payer-note-cigna-evicore': source must be a non-empty list of http\(s\) URLs"),
        ("payers.yaml", "      payers: [cigna]\n      read: \"2026-11-27\"\n      text: >-\n        Cigna delegates",
         "      payers: [humana]\n      read: \"2026-11-27\"\n      text: >-\n        Cigna delegates",
         r"^payers\.yaml: rule 'payer-note-cigna-evicore': payers must name known payer ids"),
        ("documentation.yaml", "        - {kind: consent}", "        - {kind: telepathy}",
         r"^documentation\.yaml: rule 'documentation-consent': evidence kind 'telepathy' is not one of count,"),
        ("documentation.yaml", "            - {system: snomed, code: \"77477000\"",
         "            - {system: loinc, code: \"77477000\"",
         r"^documentation\.yaml: rule 'documentation-imaging': unknown code system 'loinc'"),
        ("billing.yaml", "      max_units_per_date_of_service: 1", "      max_units_per_date_of_service: 0",
         r"^billing\.yaml: rule 'duplicate-planning-charge': 'max_units_per_date_of_service' must be a whole"),
        ("billing.yaml", "      bundled_code: \"77300\"\n", "",
         r"^billing\.yaml: rule 'bundling-77300': data incomplete: missing key 'bundled_code'$"),
        ("payers.yaml", "  - id: payer-note-uhc-optum\n", "  - id: payer-note-medicare-ncci\n",
         r"^payers\.yaml: rule id 'payer-note-medicare-ncci' is defined twice$"),
        ("billing.yaml", "  - id: teaching-physician-gc\n", "  - id: teaching-physician-gc-renamed\n",
         r"^rule 'teaching-physician-gc' is missing from the rule files"),
    ],
    ids=["yaml", "grade", "one-source-left-ok", "effective", "source-url", "unknown-payer", "evidence-kind",
         "code-system", "units", "missing-key", "duplicate-id", "missing-rule"],
)
def test_a_broken_rule_file_is_refused_naming_the_file_and_the_problem(tmp_path, name, old, new, message):
    directory = rule_copy(tmp_path)
    edit(directory, name, old, new)
    if message is None:
        assert load_rules(directory=directory).rules
        return
    with pytest.raises(RuleFileError) as caught:
        load_rules(directory=directory)
    assert re.search(message, str(caught.value)), str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_rule_file_is_refused(tmp_path):
    directory = rule_copy(tmp_path)
    (directory / "payers.yaml").unlink()
    with pytest.raises(RuleFileError, match=r"^payers\.yaml: cannot be read \(FileNotFoundError\)$"):
        load_rules(directory=directory)


def test_create_app_stops_on_a_broken_rule_file(tmp_path):
    directory = rule_copy(tmp_path)
    edit(directory, "documentation.yaml", "        - {kind: consent}", "        - {kind: telepathy}")
    config = {"BRACHY_CDS_AUTH": "off", "BRACHY_CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
              "BRACHY_CDS_RULES_DIR": str(directory)}
    with pytest.raises(RuleFileError, match=r"^documentation\.yaml: rule 'documentation-consent': evidence kind"):
        create_app(config)


def test_create_app_stops_on_a_broken_payer_table(tmp_path):
    table = tmp_path / "payers.yaml"
    table.write_text("- payer: bcbs\n  aliases: [Florida Blue]\n- payer: humana\n  aliases: [Humana]\n")
    config = {"BRACHY_CDS_AUTH": "off", "BRACHY_CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
              "BRACHY_CDS_PAYERS": str(table)}
    with pytest.raises(RuleFileError) as caught:
        create_app(config)
    assert str(caught.value) == (
        f"BRACHY_CDS_PAYERS: {table} entry 2: 'payer' must be one of aetna, bcbs, cigna, medicare, uhc or none"
    )


def run_cli(args: list[str], tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRACHY_CDS_")}
    env.update(BRACHY_CDS_DATABASE_URL=f"sqlite:///{tmp_path / 'cli.sqlite3'}", **variables)
    return subprocess.run([*COMMAND, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          check=False)


def test_the_cli_check_and_serve_stop_on_a_broken_rule_file(tmp_path):
    directory = rule_copy(tmp_path)
    edit(directory, "payers.yaml", "    grade: H\n    title: Payer of the active",
         "    grade: X\n    title: Payer of the active")
    expected = "Error: payers.yaml: rule 'payer-identification': grade must be one of H, M, L, U"
    check = run_cli(["rules", "--check"], tmp_path, BRACHY_CDS_RULES_DIR=str(directory))
    assert check.returncode != 0 and check.stdout == ""
    assert check.stderr.strip() == expected
    serve = run_cli(["serve", "--port", "1"], tmp_path, BRACHY_CDS_RULES_DIR=str(directory), BRACHY_CDS_AUTH="off")
    assert serve.returncode != 0
    assert serve.stderr.strip().splitlines()[-1] == expected


def test_the_cli_check_reports_a_deployment_payer_table(tmp_path):
    table = tmp_path / "payers.json"
    table.write_text('[{"payer": "bcbs", "identifiers": [{"value": "RHP-7731"}]}]')
    result = run_cli(["rules", "--check"], tmp_path, BRACHY_CDS_PAYERS=str(table))
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf"ok: {len(RULES.rules)} rules, rule set \S+; BRACHY_CDS_PAYERS: 1 entries\n", result.stdout)


# Deployment tables


def test_a_deployment_payer_table_is_checked_first_and_changes_the_version(tmp_path):
    table = tmp_path / "payers.yaml"
    table.write_text(
        "- payer: none\n  aliases: [Medicare Supplement Plan X]\n- payer: uhc\n  identifiers: [{value: U1}]\n"
    )
    rules = load_rules(payer_table=table)
    assert [(entry.payer, entry.origin) for entry in rules.payer_table[:2]] == [
        ("none", "BRACHY_CDS_PAYERS entry 1"),
        ("uhc", "BRACHY_CDS_PAYERS entry 2"),
    ]
    assert rules.version != RULES.version


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("payer: bcbs", "must contain a list"),
        ("- {payer: bcbs}", "entry 1: give at least one of 'aliases' or 'identifiers'"),
        ("- {payer: bcbs, names: [x]}", "entry 1: entry has unknown key(s) names"),
        ("- {payer: bcbs, identifiers: [{value: ''}]}", "entry 1: each identifier must be {system, value}"),
        ("- [", "not valid JSON/YAML"),
    ],
)
def test_a_broken_payer_table_names_the_variable_the_file_and_the_entry(tmp_path, content, problem):
    table = tmp_path / "payers.yaml"
    table.write_text(content + "\n")
    with pytest.raises(RuleFileError) as caught:
        load_rules(payer_table=table)
    assert str(caught.value).startswith(f"BRACHY_CDS_PAYERS: {table}")
    assert problem in str(caught.value)


def test_resident_codes_are_merged_and_validated(tmp_path):
    table = tmp_path / "residents.yaml"
    table.write_text("- {system: 'https://ehr.example.org/roles', code: RES}\n")
    assert ("https://ehr.example.org/roles", "RES") in load_rules(resident_codes=table).teaching.resident_codes
    table.write_text("- {code: RES}\n")
    with pytest.raises(RuleFileError, match=r"^BRACHY_CDS_RESIDENT_CODES: .* entry 1: expected \{system, code\}"):
        load_rules(resident_codes=table)


# L and U never warn on their own


def test_a_rule_regraded_l_turns_its_warning_into_a_verify_note(tmp_path):
    directory = rule_copy(tmp_path)
    edit(directory, "billing.yaml", "    grade: M\n    title: Basic dosimetry",
         "    grade: L\n    title: Basic dosimetry")
    rules = load_rules(directory=directory)
    facts = EncounterFacts(
        encounter_ref="Encounter/e1",
        patient_ref="Patient/p1",
        procedures=(ProcedureFact("Procedure/p1", "HDR", "completed", "afterloading", "2026-10-14", "Encounter/e1"),),
        devices=(
            DeviceFact("Device/t", "Tandem", kind="applicator"),
            DeviceFact("Device/o", "Ovoid", kind="applicator"),
        ),
        locations=(LocationFact("Location/l", "Suite", pos_codes=("22",)),),
        charges=(ChargeFact("ChargeItem/c77300", "billable", "77300"),),
    )
    assert decide(facts, RULES).topics == (CHARGE_SUGGESTION, BUNDLING_CONFLICT)
    decision = decide(facts, rules)
    assert decision.topics == (CHARGE_SUGGESTION,)
    assert decision.verify == ("bundling-77300",)
    [card] = CardRenderer(rules, "https://brachy-cds.org/fhir", lambda: "u").cards(decision)
    assert card["indicator"] == "info"
    verify = "**Verify** (sources graded L or U, so not a warning on their own):\n- `ChargeItem/c77300` bills CPT 77300"
    assert verify in card["detail"]
    assert card["extension"]["org.brachy-cds"]["rules"][-1] == "bundling-77300"


# README


def test_the_readme_rules_section_is_the_generated_tables():
    text = README.read_text()
    match = re.search(r"<!-- BEGIN brachy-cds rules --markdown -->\n(.*?)\n<!-- END brachy-cds rules --markdown -->",
                      text, re.S)
    assert match, "README lacks the generated rules tables"
    assert match.group(1) == f"{rules_table(RULES)}\n\n{evidence_table(RULES)}", (
        "README is out of date: paste the output of `brachy-cds rules --markdown`"
    )
    section = text[text.index("## Rules and their sources"):]
    for rule in RULES.rules:
        assert f"| `{rule.id}` | {rule.version} | {rule.grade} |" in section, rule.id


@pytest.mark.parametrize("variable", ["BRACHY_CDS_PAYERS", "BRACHY_CDS_RESIDENT_CODES", "BRACHY_CDS_RULES_DIR"])
def test_a_deployment_table_that_is_not_there_stops_start_up_naming_the_variable(tmp_path, variable):
    with pytest.raises(ConfigError, match=rf"^{variable}: {re.escape(str(tmp_path / 'nowhere'))} is not a"):
        load_settings({variable: str(tmp_path / "nowhere")})
