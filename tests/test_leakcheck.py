"""The log-leak check of ``tests/leakcheck.py`` catches planted leaks (and only those).

Every test of the suite runs under that check; these tests prove it is not a no-op: a whole pytest
run (in a subprocess, so its logs stay out of this one) with tests that each plant one secret in a
log record, an exception or stderr, and one clean test.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.fhir_server import TEST_TOKEN
from tests.keys import TestIssuer
from tests.leakcheck import REGISTRY, Registry, leaks_in_records, leaks_in_text, patient_phi

REPO = Path(__file__).resolve().parents[1]

PLANTED = '''
import logging
import sys

from cds_service import logs
from tests.fhir_server import TEST_TOKEN
from tests.keys import TestIssuer

logs.configure("INFO")
log = logging.getLogger("brachy_cds.access")


def test_clean_log_line():
    log.info("request", extra={"fields": {"status": 200, "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"}})


def test_token_in_log_fields():
    log.info("request", extra={"fields": {"status": 412, "authorization": "Bearer " + TEST_TOKEN}})


def test_jwt_in_an_exception_message():
    token = TestIssuer("https://ehr.example.org").sign("https://cds.example.org/cds-services")
    try:
        raise ValueError("could not verify " + token)
    except ValueError:
        logging.getLogger("brachy_cds.error").exception("unhandled error")


def test_patient_name_in_a_message():
    logging.getLogger("brachy_cds.gather").warning("no encounter for %s", "Testpatient")


def test_birth_date_printed_to_stderr():
    print('{"msg": "patient born 1958-11-03"}', file=sys.stderr)
'''


def test_a_run_with_planted_leaks_fails_exactly_the_leaking_tests(pytester: pytest.Pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makepyfile(test_planted=PLANTED)
    result = pytester.runpytest_subprocess("-p", "tests.leakcheck", "-p", "no:cacheprovider", "-rA")

    result.assert_outcomes(passed=1, failed=4)
    result.stdout.fnmatch_lines(
        [
            "PASSED test_planted.py::test_clean_log_line",
            "FAILED test_planted.py::test_token_in_log_fields*",
            "FAILED test_planted.py::test_jwt_in_an_exception_message*",
            "FAILED test_planted.py::test_patient_name_in_a_message*",
            "FAILED test_planted.py::test_birth_date_printed_to_stderr*",
        ],
        consecutive=False,
    )
    output = result.stdout.str()
    assert "brachy_cds.access INFO record 'request' carries test FHIR server bearer token" in output
    assert "brachy_cds.error ERROR record 'unhandled error' carries JWT signed by https://ehr.example.org" in output
    assert "carries Patient.name.family Testpatient" in output
    assert "captured stderr (call) carries Patient.birthDate 1958-11-03" in output


def record(message: str, fields: dict | None = None, exc: BaseException | None = None) -> logging.LogRecord:
    entry = logging.LogRecord("brachy_cds.access", logging.INFO, __file__, 1, message, (), None)
    if fields is not None:
        entry.fields = fields
    if exc is not None:
        entry.exc_info = (type(exc), exc, exc.__traceback__)
    return entry


def test_records_are_scanned_as_written_with_fields_and_exceptions():
    token = TestIssuer("https://ehr.example.org").sign("https://cds.example.org/cds-services")
    assert leaks_in_records([record("request", {"status": 200, "ms": 3.1})]) == []
    assert leaks_in_records([record("request", {"jti": "j-1", "auth": token})]) == [
        f"brachy_cds.access INFO record 'request' carries JWT signed by https://ehr.example.org "
        f"{token[:6]}...{token[-4:]} ({len(token)} chars)"
    ]
    assert len(leaks_in_records([record("unhandled error", exc=RuntimeError(f"token {TEST_TOKEN}"))])) == 1


def test_short_names_match_whole_words_only():
    registry = Registry()
    registry.add("Ida", "Patient.name.given")
    assert registry.find("Idaho") == []
    assert registry.find("patient Ida left") == [("Patient.name.given", "Ida")]
    assert leaks_in_text('{"name": "Ida"}', "stderr", registry) == ["stderr carries Patient.name.given Ida"]


def test_requests_teach_the_registry_their_tokens_and_patients(leak_registry):
    token = "access-token-b8c6a1f0"
    body = {
        "fhirAuthorization": {"access_token": token},
        "prefetch": {
            "patient": {
                "resourceType": "Patient",
                "id": "p-42",
                "name": [{"family": "Quigley", "given": ["Mara"]}],
                "birthDate": "1970-05-06",
            }
        },
    }
    leak_registry.learn_request(body, "Bearer eyJhbGciOiJFUzM4NCJ9.e30.c2lnbmF0dXJl")
    for value in (token, "Quigley", "Mara", "1970-05-06", "p-42", "eyJhbGciOiJFUzM4NCJ9.e30.c2lnbmF0dXJl"):
        assert value in leak_registry.secrets
    leak_registry.learn_from_requests = False
    leak_registry.learn_request({"fhirAuthorization": {"access_token": "not-learnt-token-1"}}, None)
    assert "not-learnt-token-1" not in leak_registry.secrets


def test_the_registry_holds_the_test_datas_patients_and_the_fhir_token():
    kinds = {value: kind for value, kind in REGISTRY.secrets.items()}
    assert kinds[TEST_TOKEN] == "test FHIR server bearer token"
    # tests/fixtures/integration (loaded into the test FHIR server) and the scenario builder's patient()
    for value in ("Integration", "Ida", "1958-11-03", "MRN-000481", "Testpatient", "Alex", "1961-03-02"):
        assert value in kinds
    assert list(patient_phi({"resourceType": "Encounter", "id": "e"})) == []
