"""``brachy-cds serve --workers N``: the production server (gunicorn) and its graceful shutdown (issue 4).

The real console script in a subprocess: two gunicorn workers answer discovery; a hook call is held
in flight by a FHIR server that does not answer yet; on SIGTERM the idle worker exits at once, the
busy one stops accepting but still answers the held call once its FHIR data comes, and the server
exits 0. Waits are fail-safes that turn a hang into a failure, never timing assertions.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fhir_server import LoopbackServer, ScriptedHandler, free_port
from tests.leakcheck import leaks_in_text

SCRIPT = Path(sys.executable).with_name("brachy-cds")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "cds_service.cli"]
FAIL_SAFE_SECONDS = 60
TOKEN = "serve-test-access-token-7c1d"


def wait_until(condition: Callable[[], bool], what: str, process: subprocess.Popen[bytes]) -> None:
    give_up = time.monotonic() + FAIL_SAFE_SECONDS
    while time.monotonic() < give_up:
        if condition():
            return
        if process.poll() is not None:
            pytest.fail(f"brachy-cds serve exited with {process.returncode} before {what}")
        time.sleep(0.05)
    pytest.fail(f"gave up waiting: {what}")


def discovery_answers(base: str) -> bool:
    try:
        return requests.get(f"{base}/cds-services", timeout=5).status_code == 200
    except requests.RequestException:  # refused before the bind, or queued while the workers boot
        return False


def test_workers_finish_the_request_in_flight_on_sigterm(tmp_path: Path, loopback_server: Any) -> None:
    release, arrived = threading.Event(), threading.Event()

    def held(handler: ScriptedHandler) -> None:
        """Answer like an empty FHIR server, but only once the test releases it."""
        arrived.set()
        release.wait(FAIL_SAFE_SECONDS)
        if "?" in handler.path:
            handler.send_json(200, {"resourceType": "Bundle", "type": "searchset", "total": 0})
        else:
            handler.send_json(404, {"resourceType": "OperationOutcome", "issue": []})

    fhir: LoopbackServer = loopback_server(held)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {name: value for name, value in os.environ.items() if not name.startswith("BRACHY_CDS_")}
    env.update(
        BRACHY_CDS_AUTH="off",
        BRACHY_CDS_DATABASE_URL=f"sqlite:///{tmp_path / 'serve.sqlite3'}",
        BRACHY_CDS_ALLOWED_FHIR_SERVERS=fhir.base_url,
        BRACHY_CDS_FHIR_BUDGET_SECONDS="30",  # the call stays in flight until the test releases it
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*COMMAND, "serve", "--port", str(port), "--workers", "2"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    outcome: dict[str, Any] = {}
    try:
        wait_until(lambda: discovery_answers(base), "discovery answers", process)
        body = {
            "hook": "encounter-discharge",
            "hookInstance": "0b6f1f7e-2c51-4d55-8f0e-9e4b5a1c2d3e",
            "fhirServer": fhir.base_url,
            "fhirAuthorization": {"access_token": TOKEN, "token_type": "Bearer"},
            "context": {"userId": "Practitioner/dr-1", "patientId": "pat-serve", "encounterId": "enc-serve"},
        }

        def call() -> None:
            try:
                outcome["response"] = requests.post(f"{base}/cds-services/brachytherapy-planning-charge", json=body,
                                                    timeout=FAIL_SAFE_SECONDS)
            except requests.RequestException as exc:
                outcome["error"] = exc

        in_flight = threading.Thread(target=call)
        in_flight.start()
        assert arrived.wait(FAIL_SAFE_SECONDS), "the hook call never reached the FHIR server"

        process.send_signal(signal.SIGTERM)
        # The idle worker exits at once: by then the master has sent SIGTERM to both workers.
        wait_until(lambda: "Worker exiting" in log_path.read_text(), "a worker exits", process)
        assert in_flight.is_alive()  # shutting down, and the call is still waiting for FHIR data
        release.set()
        in_flight.join(FAIL_SAFE_SECONDS)
        assert process.wait(FAIL_SAFE_SECONDS) == 0
    finally:
        release.set()
        if process.poll() is None:
            process.kill()
            process.wait(FAIL_SAFE_SECONDS)

    assert "error" not in outcome, outcome.get("error")
    response = outcome["response"]
    assert (response.status_code, response.json()) == (200, {"cards": []})
    log = log_path.read_text()
    assert '"msg": "serving (gunicorn)"' in log and '"workers": 2' in log
    assert log.count("Booting worker") == 2 and log.count("Worker exiting") == 2
    assert "Control socket" not in log  # no management socket in $HOME
    assert '"msg": "authentication is off: no JWT checks"' in log  # the warning at start (contract 1)
    assert TOKEN not in log and leaks_in_text(log, "the server's stderr") == []


def test_without_workers_the_development_server_is_used(tmp_path: Path) -> None:
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("BRACHY_CDS_")}
    env.update(BRACHY_CDS_AUTH="off", BRACHY_CDS_DATABASE_URL=f"sqlite:///{tmp_path / 'dev.sqlite3'}")
    log_path = tmp_path / "dev.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*COMMAND, "serve", "--port", str(port)], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log
        )
    try:
        wait_until(lambda: discovery_answers(f"http://127.0.0.1:{port}"), "discovery answers", process)
    finally:
        process.terminate()
        process.wait(FAIL_SAFE_SECONDS)
    log = log_path.read_text()
    assert '"msg": "serving (development server)"' in log and "gunicorn" not in log
