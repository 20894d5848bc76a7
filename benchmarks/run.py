"""Benchmark brachy-cds against its floor, in one run on this machine, and print one table.

    .venv/bin/python benchmarks/run.py            # full run (10-15 minutes)
    .venv/bin/python benchmarks/run.py --quick    # a few requests per row: proves it runs (CI)

Everything is on 127.0.0.1: the real test FHIR server (sekmet, from ``.venv-fhir``), a 50 ms delay
proxy in front of it (W3), brachy-cds started with its production command (``brachy-cds serve
--workers N``: gunicorn gthread) and the floor app (``floor_app.py``) started through the same
command, driven by wrk (installed from Debian when missing, full mode only) or a multi-process
Python client. Workloads (docs/performance.md says more):

- W1: the canonical HDR tandem-and-ovoid encounter and its documentation evidence, prefetch from the
  service's own templates; the applicators and afterloader are fetched from the FHIR server (one
  ``Device?_id=`` search), with the Location and Organizations brachy-cds also reads.
- W2: a large encounter: 5 Procedures, 40 Devices, 3 ChargeItems, prefetch searches in pages of 2.
- W3: W1 with no prefetch, every FHIR request delayed 50 ms; reported against one FHIR round trip.
- W4: cold start, process start to the first 200 on a hook call (1 worker).
- W5: resident memory per worker at start, after 1,000 and after 10,000 W1 requests (1 worker).
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import requests  # noqa: E402

from benchmarks import workloads  # noqa: E402
from benchmarks.load import LoadResult, PythonClient, WrkClient, pick_client  # noqa: E402
from benchmarks.report import Row, machine, table, targets  # noqa: E402
from benchmarks.servers import Server, post, rss_mb, tree_cpu_seconds  # noqa: E402
from tests.fhir_server import TEST_TOKEN, DelayProxy, FhirTestServer, sekmet_binary  # noqa: E402

W3_DELAY_SECONDS = 0.05
W1_DEVICE_SEARCH = "Device?_id=dev-afterloader-1,dev-int-ovoid-l,dev-int-ovoid-r,dev-int-tandem&_count=4"
"""The search brachy-cds and the floor send for W1's Devices: the round trip W3 is measured against."""
EXPECTED_CODE = {"W1": "77317-26", "W2": "77318-26", "W3": "77317-26"}
"""The charge each workload's answer must suggest: a benchmark of wrong answers measures nothing."""


@dataclass(frozen=True)
class Plan:
    """Durations and counts of one run."""

    mode: str
    seconds: int | None
    """Length of each W1/W2 row (wrk takes whole seconds); None: rows end at ``requests``."""
    requests: int | None
    """Requests per row when rows are not timed (quick mode)."""
    warmup_seconds: int
    w3_seconds: int | None
    w3_requests: int | None
    rss_counts: tuple[int, int]
    cold_starts: int
    round_trips: int


FULL = Plan("full", 10, None, 2, 15, None, (1000, 10000), 5, 20)
QUICK = Plan("quick", None, 12, 0, None, 3, (16, 48), 0, 3)


class Bench:
    """One benchmark run: FHIR server, proxy, bodies, servers, rows."""

    def __init__(self, plan: Plan, client: WrkClient | PythonClient, workdir: Path) -> None:
        self.plan = plan
        self.client = client
        """Drives the timed rows."""
        self.counter = PythonClient()
        """Drives the runs that end at a request count (W5, quick rows): wrk cannot stop at a count."""
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir()
        self.rows: list[Row] = []
        self.cold: dict[str, list[float]] = {"floor": [], "service": []}
        self.fhir: FhirTestServer | None = None
        self.proxy: DelayProxy | None = None
        self.bodies: dict[str, Path] = {}
        self.facts: dict[str, Any] = {}
        self.round_trip_ms = 0.0
        self.replay: dict[str, Any] = {}
        """W3's FHIR requests replayed without the service: requests per round, median ms."""

    # Setup

    def setup(self) -> None:
        self.fhir = FhirTestServer(sekmet_binary(), self.workdir / "sekmet")
        (self.workdir / "sekmet").mkdir()
        self.fhir.start()
        self.fhir.load(workloads.w1_resources())
        self.fhir.load(workloads.w2_resources())
        self.proxy = DelayProxy(self.fhir.base_url, delay=W3_DELAY_SECONDS)
        bodies, self.facts = workloads.request_bodies(self.fhir.base_url, self.proxy.base_url, TEST_TOKEN)
        for name, body in bodies.items():
            path = self.workdir / f"{name}.json"
            path.write_text(json.dumps(body, separators=(",", ":")), encoding="utf-8")
            self.bodies[name] = path
            self.facts[f"{name} body bytes"] = path.stat().st_size

    def env(self) -> dict[str, str]:
        assert self.fhir is not None and self.proxy is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRACHY_CDS_")}
        env.update(
            BRACHY_CDS_AUTH="off",
            BRACHY_CDS_ALLOWED_FHIR_SERVERS=f"{self.fhir.base_url},{self.proxy.base_url}",
            BRACHY_CDS_DATABASE_URL=f"sqlite:///{self.workdir / 'brachy-cds.sqlite3'}",
        )
        return env

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
        if self.fhir is not None:
            self.fhir.close()

    @contextlib.contextmanager
    def server(self, kind: str, workers: int) -> Iterator[Server]:
        server = Server(kind, workers, self.env(), self.logs)
        seconds = server.start(self.bodies["W1"].read_bytes())
        server.rss_at_start = max(rss_mb(pid) for pid in server.worker_pids())
        print(f"  {kind} with {workers} worker(s): first 200 after {seconds:.2f} s", flush=True)
        try:
            if workers == 1:
                self.cold[kind].append(seconds)
            self.check_answers(server)
            yield server
        finally:
            stopping = time.perf_counter()
            server.stop()
            print(f"  {kind} stopped in {time.perf_counter() - stopping:.2f} s", flush=True)

    def check_answers(self, server: Server) -> None:
        """Each workload must get a 200, and brachy-cds the right charge, before it is timed."""
        for name, path in self.bodies.items():
            status, body = post(server.url, path.read_bytes(), timeout=30)
            if status != 200:
                raise RuntimeError(
                    f"{server.kind} answered {name} with HTTP {status}: {body[:300]!r}\n{server.log_tail()}"
                )
            if server.kind == "service" and EXPECTED_CODE[name].encode() not in body:
                raise RuntimeError(f"brachy-cds did not suggest {EXPECTED_CODE[name]} for {name}: {body[:500]!r}")

    # Measuring

    def measure(self, server: Server, workload: str, concurrency: int, seconds: int | None, count: int | None) -> Row:
        """One row: a warm-up (timed plans), then ``seconds`` of load, or ``count`` requests."""
        assert self.fhir is not None and self.fhir.process is not None
        body = self.bodies[workload]
        if self.plan.warmup_seconds:
            self.client.run(server.url, body, concurrency, seconds=self.plan.warmup_seconds)
        server_cpu, fhir_cpu = server.cpu_seconds(), tree_cpu_seconds(self.fhir.process.pid)
        if seconds:
            result = self.client.run(server.url, body, concurrency, seconds=seconds)
        else:
            result = self.counter.run(server.url, body, concurrency, count=count)
        server_cpu = server.cpu_seconds() - server_cpu
        fhir_cpu = tree_cpu_seconds(self.fhir.process.pid) - fhir_cpu
        row = Row(workload, server.kind, server.workers, concurrency, result)
        row.values["load_average"] = os.getloadavg()[0]
        if result.requests:
            row.server_cpu_ms = server_cpu * 1000 / result.requests
            row.fhir_cpu_ms = fhir_cpu * 1000 / result.requests
        if result.errors:
            row.detail = f"{result.errors} errors"
        self.rows.append(row)
        print(f"  {workload} {server.kind:7} {server.workers}w c={concurrency}: {_brief(result)}", flush=True)
        return row

    def round_trip(self) -> float:
        """p50 of one FHIR request through the delay proxy (the W1 Device search), on a new connection each."""
        assert self.proxy is not None
        url = f"{self.proxy.base_url}/{W1_DEVICE_SEARCH}"
        headers = {"Authorization": f"Bearer {TEST_TOKEN}", "Accept": workloads.FHIR_JSON}
        times = []
        for _ in range(self.plan.round_trips):
            started = time.perf_counter()
            with requests.get(url, headers=headers, timeout=10) as response:
                response.raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
        return statistics.median(times)

    def replay_w3(self, server: Server) -> None:
        """Send brachy-cds's own W3 FHIR requests through the proxy, in its two rounds, without the service.

        One W3 call shows which requests it makes: the template queries (round 1) and the ``_id``
        searches of the references (round 2). Replaying them in parallel per round gives what those
        requests cost on this rig (the test FHIR server answers parallel requests one after another),
        so the W3 row can tell the service's own time from the FHIR server's.
        """
        assert self.proxy is not None
        before = len(self.proxy.paths())
        post(server.url, self.bodies["W3"].read_bytes(), timeout=30)
        paths = list(dict.fromkeys(self.proxy.paths()[before:]))
        rounds = [[p for p in paths if "_id=" not in p], [p for p in paths if "_id=" in p]]
        headers = {"Authorization": f"Bearer {TEST_TOKEN}", "Accept": workloads.FHIR_JSON}

        def get(path: str) -> None:
            with requests.get(f"{self.proxy.base_url}/{path}", headers=headers, timeout=10) as response:
                response.raise_for_status()

        times = []
        with ThreadPoolExecutor(max_workers=8) as pool:
            for _ in range(self.plan.round_trips):
                started = time.perf_counter()
                for paths_of_round in rounds:
                    list(pool.map(get, paths_of_round))
                times.append((time.perf_counter() - started) * 1000)
        self.replay = {"requests": [len(r) for r in rounds], "ms": statistics.median(times)}

    def run(self) -> None:
        for workers in (1, 2):
            for kind in ("floor", "service"):
                with self.server(kind, workers) as server:
                    if workers == 1:
                        self.memory(server)
                    for workload in ("W1", "W2"):
                        for concurrency in (1, 8):
                            self.measure(server, workload, concurrency, self.plan.seconds, self.plan.requests)
                    if workers == 1:
                        self.round_trip_ms = self.round_trip()
                        self.measure(server, "W3", 1, self.plan.w3_seconds, self.plan.w3_requests)
                        if kind == "service":
                            self.replay_w3(server)
        for kind in ("floor", "service"):
            for _ in range(max(0, self.plan.cold_starts - len(self.cold[kind]))):
                with self.server(kind, 1):
                    pass
        self.ratios()

    def memory(self, server: Server) -> None:
        """W5 on a fresh 1-worker server: worker RSS at start, after the first and after all counted W1 requests."""
        first, total = self.plan.rss_counts
        workers = server.worker_pids()
        self.counter.run(server.url, self.bodies["W1"], 8, count=first)
        after_first = [rss_mb(pid) for pid in workers]
        result = self.counter.run(server.url, self.bodies["W1"], 8, count=total - first)
        after_all = [rss_mb(pid) for pid in workers]
        row = Row("W5", server.kind, server.workers, 8, None)
        row.values = {"start": server.rss_at_start, "first": max(after_first), "all": max(after_all)}
        row.values["counts"] = (first, total)
        growth = row.values["all"] - row.values["first"]
        row.detail = (
            f"RSS/worker MB: start {row.values['start']:.1f}, {first:,} req {row.values['first']:.1f}, "
            f"{total:,} req {row.values['all']:.1f} (growth {growth:+.1f})"
        )
        if result.errors:
            row.detail += f"; {result.errors} errors"
        self.rows.append(row)
        print(f"  W5 {server.kind:7} 1w: {row.detail}", flush=True)

    def ratios(self) -> None:
        """Fill the ratio column: W1/W2 against the floor's row of the same workers and concurrency, W3 to one RT."""
        floor = {(r.workload, r.workers, r.concurrency): r for r in self.rows if r.server == "floor"}
        for row in self.rows:
            if row.result is None:
                continue
            if row.workload == "W3":
                row.ratio = f"p50 {row.result.p50 / self.round_trip_ms:.2f} RT"
                if row.server == "service" and self.replay:
                    requests_per_round = "+".join(str(n) for n in self.replay["requests"])
                    row.detail = (
                        f"(its {requests_per_round} FHIR requests alone, same rounds: "
                        f"{self.replay['ms'] / self.round_trip_ms:.2f} RT) {row.detail}"
                    ).strip()
            elif row.server == "service":
                base = floor.get((row.workload, row.workers, row.concurrency))
                if base and base.result and base.result.requests:
                    row.ratio = (
                        f"p50 {row.result.p50 / base.result.p50:.2f}x, rps {row.result.rps / base.result.rps:.2f}x"
                    )
        for kind in ("floor", "service"):
            samples = sorted(self.cold[kind])
            row = Row("W4", kind, 1, None, None)
            row.values = {"samples": samples}
            row.detail = (
                f"process start -> first 200: p50 {statistics.median(samples):.2f} s, max {samples[-1]:.2f} s"
                f" ({len(samples)} starts)"
            )
            self.rows.append(row)


def _brief(result: LoadResult) -> str:
    return (
        f"p50 {result.p50:.2f} ms, p99 {result.p99:.2f} ms, {result.rps:.0f} req/s, "
        f"{result.requests} requests, {result.errors} errors"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few requests per row: only proves the benchmark runs")
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator (auto: wrk, installed from Debian when missing in a full run)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (server logs) afterwards")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    client = pick_client(args.client, install=not args.quick)
    info = machine(plan.seconds is not None, client)
    workdir = Path(tempfile.mkdtemp(prefix="brachy-bench-"))
    bench = Bench(plan, client, workdir)
    print(f"brachy-cds benchmark ({plan.mode}), work directory {workdir}", flush=True)
    signal.signal(signal.SIGTERM, _stop)  # a terminated run still stops its servers (the finally below)
    try:
        byte_compile()
        bench.setup()
        bench.run()
    finally:
        bench.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    info["load_average_end"] = os.getloadavg()
    print()
    print(table(plan.mode, bench.rows, bench.round_trip_ms, info))
    print(f"load average at end {info['load_average_end'][0]:.2f}; facts: {json.dumps(bench.facts)}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "plan": asdict(plan),
                    "round_trip_ms": bench.round_trip_ms,
                    "w3_replay": bench.replay,
                    "facts": bench.facts,
                    "rows": [_row_json(r) for r in bench.rows],
                    "targets": targets(bench.rows, bench.round_trip_ms),
                },
                indent=2,
                default=str,
            )
        )
    return 0


def byte_compile() -> None:
    """Write the ``.pyc`` files of the project's own packages, as installing its wheel does (pip compiles).

    This checkout is an editable install: with ``PYTHONDONTWRITEBYTECODE=1`` (set on the project's
    machines) each server start would compile their ~8,000 lines again, ~0.1 s of W4 (cold start)
    that a deployed image does not pay. Python checks each ``.pyc`` against its source, so an edited
    file is never run stale.
    """
    for package in ("cds_service", "fhir_mappings", "benchmarks"):
        compileall.compile_dir(REPO / package, quiet=1)


def _stop(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _row_json(row: Row) -> dict[str, Any]:
    data = asdict(row)
    if row.result is not None:
        data["result"]["rps"] = row.result.rps
    return data


if __name__ == "__main__":
    sys.exit(main())
