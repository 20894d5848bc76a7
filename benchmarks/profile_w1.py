"""Show where a W1 hook call's time goes: a latency breakdown from the service's own logs, then a profile.

    .venv/bin/python benchmarks/profile_w1.py [--calls 500] [--workload W1|W2]

The app is built in-process with the benchmark's settings and called through Flask's test client
(no HTTP server in front); its FHIR calls go over loopback to the real test server (sekmet), as
in ``run.py``. First an unprofiled pass reads the service's JSON log lines (total, gathering,
waiting on FHIR); then a profiled pass prints the call tree of the request thread: pyinstrument
(``pip install pyinstrument``) when it is installed, else cProfile's top entries. Waiting on the
FHIR fetch threads shows up as ``wait``/``lock.acquire`` under ``_fetch``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import workloads  # noqa: E402
from tests.fhir_server import TEST_TOKEN, FhirTestServer, sekmet_binary  # noqa: E402


def breakdown(lines: list[str]) -> dict[str, float]:
    """Medians (ms) of the service's own timings: whole request, gathering, and waiting on FHIR within it."""
    total, gather, fetch = [], [], []
    for line in lines:
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("msg") == "fhir data gathered":
                gather.append(entry["ms"])
                fetch.append(entry["fetchMs"])
            elif entry.get("msg") == "request" and entry.get("status") == 200:
                total.append(entry["ms"])
    if not (total and gather and fetch):
        return {}
    out = {
        "request (server side)": statistics.median(total),
        "gathering FHIR data": statistics.median(gather),
        "  of which waiting on fhirServer": statistics.median(fetch),
    }
    out["  of which parsing prefetch/results, resolving references"] = (
        out["gathering FHIR data"] - out["  of which waiting on fhirServer"]
    )
    out["facts, decision, cards, JSON, Flask"] = out["request (server side)"] - out["gathering FHIR data"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500, help="hook calls in the profiled pass")
    parser.add_argument("--workload", choices=("W1", "W2"), default="W1")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="brachy-profile-") as tmp:
        fhir = FhirTestServer(sekmet_binary(), Path(tmp))
        fhir.start()
        try:
            fhir.load(workloads.w1_resources())
            fhir.load(workloads.w2_resources())
            bodies, _facts = workloads.request_bodies(fhir.base_url, fhir.base_url, TEST_TOKEN)
            profile(bodies[args.workload], fhir.base_url, Path(tmp), args.calls)
        finally:
            fhir.close()
    return 0


def profile(body: dict[str, Any], fhir_base: str, tmp: Path, calls: int) -> None:
    raw = json.dumps(body, separators=(",", ":")).encode()
    logs = io.StringIO()
    real_stderr, sys.stderr = sys.stderr, logs  # the JSON log handler binds sys.stderr when the app is built
    try:
        from cds_service import create_app

        app = create_app(
            {
                "BRACHY_CDS_AUTH": "off",
                "BRACHY_CDS_ALLOWED_FHIR_SERVERS": fhir_base,
                "BRACHY_CDS_DATABASE_URL": f"sqlite:///{tmp / 'brachy-cds.sqlite3'}",
            }
        )
    finally:
        sys.stderr = real_stderr
    client = app.test_client()

    def call() -> None:
        response = client.post(workloads.HOOK_PATH, data=raw, content_type="application/json")
        if response.status_code != 200:
            raise SystemExit(f"the hook call failed: HTTP {response.status_code} {response.get_data()[:300]!r}")

    for _ in range(50):
        call()
    logs.seek(0)
    logs.truncate()
    for _ in range(min(calls, 300)):
        call()
    print(f"Latency breakdown, median of {min(calls, 300)} calls (the service's own log timings, ms):")
    for name, value in breakdown(logs.getvalue().splitlines()).items():
        print(f"  {name:58} {value:6.2f}")
    print()
    try:
        from pyinstrument import Profiler
    except ImportError:
        Profiler = None
    if Profiler is not None:
        profiler = Profiler(interval=0.0005)
        profiler.start()
        for _ in range(calls):
            call()
        profiler.stop()
        print(f"pyinstrument, {calls} calls (wall clock of the request thread):")
        print(profiler.output_text(unicode=False, color=False, show_all=False, short_mode=False))
    else:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(calls):
            call()
        profiler.disable()
        print(f"cProfile, {calls} calls, top entries by cumulative time (pyinstrument is not installed):")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(35)
    app.extensions["brachy_cds"].close()


if __name__ == "__main__":
    sys.exit(main())
