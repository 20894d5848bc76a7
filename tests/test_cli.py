"""The real ``brachy-cds`` console script, run in a subprocess (contract section 1).

``serve`` answers discovery on 127.0.0.1; ``BRACHY_CDS_AUTH=off`` on 0.0.0.0 and a bad
``BRACHY_CDS_*`` value stop start-up with a one-line message naming the variable; ``rules`` lists
id, version, grade and source, and ``rules --check`` exits 0.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from fhir_mappings.rules import load_rules

SCRIPT = Path(sys.executable).with_name("brachy-cds")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "cds_service.cli"]
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 (the address start-up must refuse with auth off)
STARTUP_LIMIT_SECONDS = 60  # a fail-safe for a server that never comes up, not a timing assertion


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    """The parent environment without any BRACHY_CDS_* setting, with the database in ``tmp_path``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("BRACHY_CDS_")}
    env["BRACHY_CDS_DATABASE_URL"] = f"sqlite:///{tmp_path / 'cli.sqlite3'}"
    return env


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture
def server(environ: dict[str, str], tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """Start ``brachy-cds serve`` on a free loopback port with auth off; always stopped after the test."""
    port = free_port()
    environ["BRACHY_CDS_AUTH"] = "off"
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*COMMAND, "serve", "--port", str(port)], env=environ, cwd=tmp_path,
            stdout=subprocess.DEVNULL, stderr=log,
        )
    try:
        yield process, f"http://127.0.0.1:{port}", log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def wait_for(url: str, process: subprocess.Popen[bytes], log_path: Path) -> requests.Response:
    """Poll ``url`` until the server answers; fail with its log if it exits or never comes up."""
    give_up = time.monotonic() + STARTUP_LIMIT_SECONDS
    while time.monotonic() < give_up:
        if process.poll() is not None:
            pytest.fail(f"brachy-cds serve exited with {process.returncode}: {log_path.read_text()}")
        try:
            return requests.get(url, timeout=5)
        except requests.ConnectionError:
            time.sleep(0.1)
    pytest.fail(f"brachy-cds serve did not answer: {log_path.read_text()}")


def test_serve_answers_discovery_on_loopback(server):
    process, base, log_path = server
    response = wait_for(f"{base}/cds-services", process, log_path)
    assert response.status_code == 200
    assert [(s["id"], s["hook"]) for s in response.json()["services"]] == [
        ("brachytherapy-planning-charge", "encounter-discharge"),
        ("brachytherapy-planning-review", "patient-view"),
    ]
    assert requests.get(f"{base}/healthz", timeout=5).json() == {"status": "ok"}
    # Auth off is said at start-up, as a JSON log line.
    assert '"authentication is off: no JWT checks"' in log_path.read_text()


def test_serve_refuses_auth_off_on_all_interfaces(environ, tmp_path):
    environ["BRACHY_CDS_AUTH"] = "off"
    result = run(["serve", "--host", ALL_INTERFACES, "--port", str(free_port())], environ, tmp_path)
    assert result.returncode != 0
    message = one_line(result.stderr)
    assert "BRACHY_CDS_AUTH=off" in message and ALL_INTERFACES in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BRACHY_CDS_MAX_BODY_BYTES", "abc"),
        ("BRACHY_CDS_AUTH", "maybe"),
        ("BRACHY_CDS_LOOKBACK_DAYS", "-3"),
        ("BRACHY_CDS_ALLOWED_FHIR_SERVERS", "http://[::1/fhir"),
        ("BRACHY_CDS_DATABASE_URL", "not a database"),
        ("BRACHY_CDS_SITES", "/nonexistent/sites.yaml"),
    ],
)
def test_serve_stops_on_a_bad_variable_with_a_one_line_message(environ, tmp_path, name, value):
    environ[name] = value
    result = run(["serve", "--port", str(free_port())], environ, tmp_path)
    assert result.returncode != 0
    assert name + ":" in one_line(result.stderr)


def test_serve_stops_on_a_bad_site_entry_naming_file_and_entry(environ, tmp_path):
    sites = tmp_path / "sites.yaml"
    sites.write_text("- identifier: {value: a}\n  pos: '11'\n  billing: professional\n")
    environ.update(BRACHY_CDS_AUTH="off", BRACHY_CDS_SITES=str(sites))
    result = run(["serve", "--port", str(free_port())], environ, tmp_path)
    assert result.returncode != 0
    assert one_line(result.stderr) == (
        f"Error: BRACHY_CDS_SITES: {sites} entry 1: 'billing' must be one of global, split"
    )


def test_rules_lists_id_version_grade_and_source(environ, tmp_path):
    result = run(["rules"], environ, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"rule set \d+\.\d+\.\d+\+[0-9a-f]{8}", lines[0])
    listed: dict[str, list[str]] = {}
    sources: dict[str, list[str]] = {}
    current = None
    for line in lines[1:]:
        if line.startswith("    "):
            sources[current].append(line.strip())
            continue
        rule_id, version, grade, effective, file, title = line.split("\t")
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), line
        assert grade in ("H", "M", "L", "U"), line
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", effective), line
        assert file.endswith(".yaml") and title, line
        listed[rule_id] = [version, grade]
        current = rule_id
        sources[rule_id] = []
    # The rules the contract depends on are there, each with a source URL.
    for rule_id in ("code-systems", "brachytherapy-procedure-codes", "electronic-brachytherapy-codes",
                    "applicator-device-types", "seed-device-types", "explicit-count-property", "planning-levels",
                    "setting-from-fhir", "modifiers-by-setting", "bundling-77300", "units-per-encounter"):
        assert rule_id in listed, rule_id
    assert all(sources[rule_id] and all(s.startswith(("https://", "http://")) for s in sources[rule_id])
               for rule_id in listed)
    assert listed["planning-levels"][1] == "H"
    assert "https://case2code.codingahead.com/cpt/codes/77317" in sources["planning-levels"]
    assert list(listed) == [rule.id for rule in load_rules().rules]


def test_rules_check_exits_zero(environ, tmp_path):
    result = run(["rules", "--check"], environ, tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf"ok: {len(load_rules().rules)} rules, rule set \S+", one_line(result.stdout))


def test_rules_stops_on_a_bad_variable(environ, tmp_path):
    environ["BRACHY_CDS_CANONICAL_BASE"] = "not-a-url"
    result = run(["rules", "--check"], environ, tmp_path)
    assert result.returncode != 0
    assert "BRACHY_CDS_CANONICAL_BASE:" in one_line(result.stderr)


def test_feedback_report_counts_acceptance_and_override_reasons(tmp_path, environ):
    """Billing managers: `brachy-cds feedback` reads the store the service writes."""
    from datetime import UTC, datetime

    from cds_service.feedback import Coding, FeedbackItem
    from cds_service.store import Store

    url = f"sqlite:///{tmp_path / 'feedback.sqlite3'}"
    when = datetime(2026, 10, 14, 12, 0, tzinfo=UTC)
    reason = Coding("billed-elsewhere", "https://brachy-cds.org/fhir/CodeSystem/override-reason",
                    "Planning billed by another entity")
    with Store(url) as store:
        store.record_feedback("brachytherapy-planning-charge", [
            FeedbackItem("card-1", "accepted", when, ("s-1",), None, None),
            FeedbackItem("card-2", "overridden", when, (), reason, None),
            FeedbackItem("card-3", "overridden", when, (), reason, None),
            FeedbackItem("card-4", "accepted", when, ("s-4",), None, None),
        ])
    env = {**environ, "BRACHY_CDS_DATABASE_URL": url}
    result = run(["feedback"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "brachytherapy-planning-charge: 4 cards, 2 accepted, 2 overridden (acceptance 50%)",
        "        2  billed-elsewhere  Planning billed by another entity",
    ]
    later = run(["feedback", "--since", "2026-11-01"], env, tmp_path)
    assert later.stdout.strip() == "no feedback stored since 2026-11-01"
