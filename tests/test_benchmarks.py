"""The benchmark still runs: ``benchmarks/run.py --quick`` end to end, and its load generators.

No timed assertions: the figures depend on the machine and on what else runs on it. These tests
only prove that every workload is driven, answered with 200 and reported (docs/performance.md).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmarks.load import PythonClient, WrkClient, wrk_binary

REPO = Path(__file__).resolve().parents[1]
QUICK_TIMEOUT_SECONDS = 600
ROW_LABELS = {
    "W1": "W1 typical, full prefetch",
    "W2": "W2 large, paged prefetch",
    "W3": "W3 no prefetch, +50 ms/FHIR",
    "W4": "W4 cold start",
    "W5": "W5 memory, W1 requests",
}
TARGETS = (
    "W1 c=1 p50 <= 3x floor p50",
    "W1 c=1 p99 < 15 ms",
    "W1 c=8 2 workers >= 1/3 of floor req/s",
    "W2 c=1 p99 < 40 ms",
    "W3 <= 2.5 FHIR round trips",
    "W4 cold start < 1.5 s",
    "W5 < 150 MB per worker",
    "W5 no growth from 1,000 to 10,000 requests",
    "2 workers >= 1.7x req/s of 1",
)


@pytest.mark.integration
def test_quick_mode_runs_every_workload_and_prints_the_table(tmp_path: Path):
    results = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--quick", "--client", "python", "--json", str(results)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=QUICK_TIMEOUT_SECONDS,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout

    head = next(line for line in out.splitlines() if line.startswith("brachy-cds benchmark (quick): "))
    assert re.search(r": \d+ x .+, Python 3\.\d+\.\d+, Linux ", head), head  # the machine is stated
    rows = [line for line in out.splitlines() if line.startswith(tuple(ROW_LABELS.values()))]
    for workload in ("W1", "W2"):
        for server in ("floor", "service"):
            for workers in ("1", "2"):
                for concurrency in ("1", "8"):
                    assert any(
                        re.match(rf"{re.escape(ROW_LABELS[workload])}\s+{server}\s+{workers}\s+{concurrency}\s", row)
                        for row in rows
                    ), (workload, server, workers, concurrency, out)
    service_w1 = [row for row in rows if re.match(rf"{ROW_LABELS['W1']}\s+service\s", row)]
    assert all(re.search(r"p50 \d+\.\d+x, rps \d+\.\d+x", row) for row in service_w1), service_w1
    w3 = [row for row in rows if row.startswith(ROW_LABELS["W3"])]
    assert {row.split()[5] for row in w3} == {"floor", "service"}
    assert all(re.search(r"p50 \d+\.\d+ RT", row) for row in w3), w3
    assert re.search(rf"{ROW_LABELS['W4']}\s+service\s.*process start -> first 200: p50 \d+\.\d+ s", out)
    assert re.search(rf"{ROW_LABELS['W5']}\s+service\s.*RSS/worker MB: start \d+\.\d+", out)
    for target in TARGETS:
        assert re.search(rf"^  (MET   |MISSED)  {re.escape(target)}", out, re.MULTILINE), target

    data = json.loads(results.read_text())
    timed = [row for row in data["rows"] if row["result"] is not None]
    assert len(timed) == 18  # W1, W2: 2 servers x 2 worker counts x 2 concurrencies; W3: 2 servers
    assert all(row["result"]["requests"] > 0 and row["result"]["errors"] == 0 for row in timed), timed


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"cards":[]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def ok_server() -> Iterator[str]:
    """A loopback HTTP server answering every POST with 200."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/cds-services/x"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_the_python_client_sends_exactly_the_requests_counted(ok_server: str, tmp_path: Path):
    body = tmp_path / "body.json"
    body.write_text("{}")
    result = PythonClient().run(ok_server, body, 3, count=10)
    assert (result.requests, result.errors) == (10, 0)
    assert 0 < result.p50 <= result.p95 <= result.p99 <= result.max
    assert result.rps > 0


def test_the_load_generators_refuse_non_loopback_targets(tmp_path: Path):
    with pytest.raises(ValueError, match="loopback"):
        PythonClient().run("http://fhir.example.invalid/x", tmp_path / "body.json", 1, count=1)


def test_wrk_runs_the_lua_script_and_reports_a_summary(ok_server: str, tmp_path: Path):
    binary = wrk_binary()
    if binary is None:
        pytest.fail("wrk is not installed: scripts/test installs it (scripts/install-test-packages)", pytrace=False)
    body = tmp_path / "body.json"
    body.write_text("{}")
    result = WrkClient(binary).run(ok_server, body, 2, seconds=1)
    assert result.requests > 0 and result.errors == 0
    assert 0 < result.p50 <= result.p99 <= result.max
