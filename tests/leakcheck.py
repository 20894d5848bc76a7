"""A pytest plugin that fails every test whose logs carry a token, a JWT or patient data (issue 4, logs).

The registry holds what the tests declare secret:

- read once from the test data: the names, birth dates, identifier values and ids of every Patient
  in ``tests/fixtures/**/*.json`` (the scenario builder's patients included) and the test FHIR
  server's bearer token;
- learnt while the suite runs: every JWT ``tests.keys`` signs, and what a ``CheckedClient`` sends:
  the ``Authorization`` credential, ``fhirAuthorization.access_token`` and the Patients in prefetch.

After each phase of every test, a ``pytest_runtest_makereport`` hook formats each log record of
the setup and call phases exactly as the app writes it to stderr (``cds_service.logs.JsonFormatter``),
adds the message and traceback of any attached exception, scans the phase's captured stderr (where
the app's log handler writes) too, and fails the test when a secret is in there. The autouse
fixture ``no_secrets_in_logs`` puts ``caplog`` into every test for that. ``tests/test_leakcheck.py``
proves the check catches planted leaks.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import threading
import traceback
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cds_service.logs import JsonFormatter
from tests.fhir_server import TEST_TOKEN

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MIN_LEARNT_CHARS = 8
"""Shorter request values are not learnt: they would match by chance (``"abc"`` is in many log lines)."""
WHOLE_WORD_BELOW = 6
"""Secrets shorter than this match only as whole words (a given name ``Ida`` must not match ``Idaho``)."""


@dataclass
class Registry:
    """Secrets by value, each with what it is (shown in the failure, with the value masked)."""

    secrets: dict[str, str] = field(default_factory=dict)
    learn_from_requests: bool = True
    """Fuzz tests switch this off for their own test: generated values repeat across fields by design."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, value: Any, kind: str) -> None:
        """Declare ``value`` secret (ignored unless a non-blank string)."""
        if isinstance(value, str) and value.strip():
            with self._lock:
                self.secrets.setdefault(value, kind)

    def learn(self, value: Any, kind: str) -> None:
        """Declare a value taken from a request secret, if it is long enough to be found by chance only rarely."""
        if self.learn_from_requests and isinstance(value, str) and len(value.strip()) >= MIN_LEARNT_CHARS:
            self.add(value, kind)

    def learn_request(self, body: Any, authorization: Any) -> None:
        """Learn the credential, the FHIR access token and the Patients' PHI of one request a test sends."""
        if not self.learn_from_requests:
            return
        if isinstance(authorization, str):
            self.learn(authorization.split()[-1] if authorization.split() else "", "Authorization credential")
        if isinstance(body, dict):
            fhir_authorization = body.get("fhirAuthorization")
            if isinstance(fhir_authorization, dict):
                self.learn(fhir_authorization.get("access_token"), "fhirAuthorization.access_token")
            for kind, value in patient_phi(body.get("prefetch")):
                self.add(value, kind)

    def find(self, text: str) -> list[tuple[str, str]]:
        """Return (kind, masked value) for every secret in ``text``."""
        with self._lock:
            items = list(self.secrets.items())
        found = []
        for value, kind in items:
            if value not in text:
                continue
            if len(value) < WHOLE_WORD_BELOW and not re.search(rf"(?<![\w-]){re.escape(value)}(?![\w-])", text):
                continue
            found.append((kind, mask(value)))
        return found


def mask(value: str) -> str:
    """Show enough of a secret to recognise it in the test data, not the whole of a token."""
    return value if len(value) <= 12 else f"{value[:6]}...{value[-4:]} ({len(value)} chars)"


def patient_phi(node: Any) -> Iterator[tuple[str, str]]:
    """Yield (kind, value) for the names, birth date, identifiers, contacts and id of every Patient in ``node``.

    A Coverage's member ids identify its patient as well and are yielded too.
    """
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        stack.extend(item.values())
        if item.get("resourceType") == "Coverage":  # the member id identifies the patient too
            yield "Coverage.subscriberId", item.get("subscriberId")
            for identifier in _list(item.get("identifier")):
                yield "Coverage.identifier.value", identifier.get("value")
        if item.get("resourceType") != "Patient":
            continue
        yield "Patient.id", item.get("id")
        yield "Patient.birthDate", item.get("birthDate")
        for name in _list(item.get("name")):
            yield "Patient.name.text", name.get("text")
            yield "Patient.name.family", name.get("family")
            for given in _list(name.get("given")):
                yield "Patient.name.given", given
        for identifier in _list(item.get("identifier")):
            yield "Patient.identifier.value", identifier.get("value")
        for telecom in _list(item.get("telecom")):
            yield "Patient.telecom.value", telecom.get("value")
        for address in _list(item.get("address")):
            for line in _list(address.get("line")):
                yield "Patient.address.line", line


def _list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [v for v in value if v is not None]
    return [value] if isinstance(value, dict | str) else []


def fixture_phi(root: Path = FIXTURES) -> Iterator[tuple[str, str]]:
    """The PHI of every Patient in the JSON test data and of the scenario builder's ``patient()``."""
    for path in sorted(root.rglob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        yield from patient_phi(data)
    spec = importlib.util.spec_from_file_location("scenario_build", root / "scenarios" / "build.py")
    if spec is not None and spec.loader is not None:
        builder = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(builder)  # defines the spec helpers; writes nothing unless run as a script
        yield from patient_phi(builder.patient())


REGISTRY = Registry()
REGISTRY.add(TEST_TOKEN, "test FHIR server bearer token")
for _kind, _value in fixture_phi():
    REGISTRY.add(_value, _kind)


_FORMATTER = JsonFormatter()


def rendered(record: logging.LogRecord) -> str:
    """The record as the app's stderr handler writes it, plus its exception's message and traceback."""
    parts = [_FORMATTER.format(record)]
    if record.exc_info and record.exc_info[1] is not None:
        parts.append("".join(traceback.format_exception(record.exc_info[1])))
    if record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(record.stack_info)
    return "\n".join(parts)


def leaks_in_records(records: Iterable[logging.LogRecord], registry: Registry = REGISTRY) -> list[str]:
    """Describe each record that carries a secret: logger, level, message, what leaked (masked)."""
    texts = [(record, rendered(record)) for record in records]
    if not registry.find("\n".join(text for _, text in texts)):
        return []  # one scan of everything; the per-record scan only runs to describe a leak
    problems = []
    for record, text in texts:
        for kind, shown in registry.find(text):
            problems.append(f"{record.name} {record.levelname} record {record.getMessage()!r} carries {kind} {shown}")
    return problems


def leaks_in_text(text: str, where: str, registry: Registry = REGISTRY) -> list[str]:
    """Describe each secret found in captured output."""
    return [f"{where} carries {kind} {shown}" for kind, shown in registry.find(text)]


@pytest.fixture
def leak_registry() -> Iterator[Registry]:
    """The registry of secrets; ``learn_from_requests`` is back on after the test."""
    yield REGISTRY
    REGISTRY.learn_from_requests = True


@pytest.fixture(autouse=True)
def no_secrets_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Put ``caplog`` in every test, so the report hook below can scan each phase's log records."""
    yield
    REGISTRY.learn_from_requests = True


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Fail a passing phase whose log records or captured stderr carry a registered secret."""
    report = yield
    if report.passed:
        problems = []
        caplog = (getattr(item, "funcargs", None) or {}).get("caplog")
        if isinstance(caplog, pytest.LogCaptureFixture) and report.when != "teardown":
            # Teardown records are gone by now (pytest drops them); teardown's stderr is still scanned.
            problems += leaks_in_records(caplog.get_records(report.when))
        # report.capstderr joins every phase so far; scan this phase's own section only.
        stderr = "".join(text for title, text in report.sections if title == f"Captured stderr {report.when}")
        problems += leaks_in_text(stderr, f"captured stderr ({report.when})")
        if problems:
            report.outcome = "failed"
            report.longrepr = "secret or PHI in the logs:\n" + "\n".join(problems)
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say how much the leak check looked for, so a run shows it was on."""
    kinds = list(REGISTRY.secrets.values())
    jwts = sum(1 for kind in kinds if "JWT" in kind)
    phi = sum(1 for kind in kinds if kind.startswith(("Patient.", "Coverage.")))
    tokens = len(kinds) - jwts - phi
    terminalreporter.write_line(
        f"leak check: every test's logs and stderr scanned for {len(kinds)} secrets "
        f"({jwts} JWTs, {tokens} other tokens and credentials, {phi} patient data values)"
    )
