"""The table of a benchmark run and its verdict on each target of the issue."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.load import LoadResult, PythonClient, WrkClient

RSS_GROWTH_TOLERANCE_MB = 2.0
"""RSS change between 1,000 and 10,000 requests below which there is "no growth" (allocator noise)."""


@dataclass
class Row:
    """One line of the table."""

    workload: str
    server: str
    workers: int
    concurrency: int | None
    result: LoadResult | None = None
    server_cpu_ms: float | None = None
    """Server CPU (master + workers) per request."""
    fhir_cpu_ms: float | None = None
    """FHIR test server CPU per request."""
    ratio: str = ""
    detail: str = ""
    values: dict[str, Any] = field(default_factory=dict)


LABELS = {
    "W1": "W1 typical, full prefetch",
    "W2": "W2 large, paged prefetch",
    "W3": "W3 no prefetch, +50 ms/FHIR",
    "W4": "W4 cold start",
    "W5": "W5 memory, W1 requests",
}


def machine(timed: bool, client: WrkClient | PythonClient) -> dict[str, Any]:
    """What the numbers were measured on."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "client": (
            f"{client.name} ({client.version}) for timed rows, pyload.py for counted runs"
            if timed
            else "pyload.py (every run counted)"
        ),
        "load_average_start": os.getloadavg(),
    }


def table(mode: str, rows: list[Row], round_trip_ms: float, info: dict[str, Any]) -> str:
    """The one table of the run, with the machine on top and the targets below."""
    head = (
        f"brachy-cds benchmark ({mode}): {info['nproc']} x {info['cpu']}, Python {info['python']}, "
        f"Linux {info['kernel']}, load generator {info['client']}, load average at start "
        f"{info['load_average_start'][0]:.2f}"
    )
    columns = (
        "workload",
        "server",
        "wk",
        "conc",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "req/s",
        "cpu ms/req",
        "fhir cpu",
        "ratio (to floor / RT)",
    )
    widths = (28, 7, 2, 4, 7, 7, 7, 7, 10, 8, 0)
    loads = [r.values["load_average"] for r in rows if "load_average" in r.values]
    lines = [
        head + (f", max {max(loads):.2f} after a row" if loads else ""),
        f"FHIR round trip (RT) through the 50 ms proxy: {round_trip_ms:.1f} ms p50",
        "",
        _line(columns, widths),
        _line(["-" * w for w in widths[:-1]] + ["-" * 24], widths),
    ]
    order = {"W1": 0, "W2": 1, "W3": 2, "W4": 3, "W5": 4}
    for row in sorted(rows, key=lambda r: (order[r.workload], r.workers, r.concurrency or 0, r.server)):
        if row.result is None:
            lines.append(
                _line(
                    (LABELS[row.workload], row.server, str(row.workers), str(row.concurrency or "-"), row.detail),
                    (28, 7, 2, 4, 0),
                )
            )
            continue
        r = row.result
        cells = (
            LABELS[row.workload],
            row.server,
            str(row.workers),
            str(row.concurrency),
            f"{r.p50:.2f}",
            f"{r.p95:.2f}",
            f"{r.p99:.2f}",
            f"{r.rps:.0f}",
            _num(row.server_cpu_ms),
            _num(row.fhir_cpu_ms),
            " ".join(x for x in (row.ratio, row.detail) if x),
        )
        lines.append(_line(cells, widths))
    lines += ["", "Targets:"] + [f"  {line}" for line in targets(rows, round_trip_ms)]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _line(cells: Any, widths: Any) -> str:
    parts = []
    for cell, width in zip(cells, widths, strict=False):
        parts.append(str(cell).ljust(width) if width else str(cell))
    return "  ".join(parts).rstrip()


def targets(rows: list[Row], round_trip_ms: float) -> list[str]:
    """Each target of the issue, met or missed, with the figure it was judged on."""

    def find(workload: str, server: str, workers: int, concurrency: int | None) -> Row | None:
        return next(
            (
                r
                for r in rows
                if (r.workload, r.server, r.workers, r.concurrency) == (workload, server, workers, concurrency)
            ),
            None,
        )

    out = []

    def judge(name: str, met: bool, figure: str) -> None:
        out.append(f"{'MET   ' if met else 'MISSED'}  {name}: {figure}")

    s1, f1 = find("W1", "service", 1, 1), find("W1", "floor", 1, 1)
    if s1 and f1 and s1.result and f1.result:
        ratio = s1.result.p50 / f1.result.p50
        judge(
            "W1 c=1 p50 <= 3x floor p50", ratio <= 3, f"{s1.result.p50:.2f} ms vs {f1.result.p50:.2f} ms = {ratio:.2f}x"
        )
        judge("W1 c=1 p50 <= 2x floor p50 (stretch)", ratio <= 2, f"{ratio:.2f}x")
        judge("W1 c=1 p99 < 15 ms", s1.result.p99 < 15, f"{s1.result.p99:.2f} ms")
    s8, f8 = find("W1", "service", 2, 8), find("W1", "floor", 2, 8)
    if s8 and f8 and s8.result and f8.result:
        ratio = s8.result.rps / f8.result.rps
        judge(
            "W1 c=8 2 workers >= 1/3 of floor req/s",
            ratio >= 1 / 3,
            f"{s8.result.rps:.0f} vs {f8.result.rps:.0f} req/s = {ratio:.2f}",
        )
    w2 = find("W2", "service", 1, 1)
    if w2 and w2.result:
        judge("W2 c=1 p99 < 40 ms", w2.result.p99 < 40, f"{w2.result.p99:.2f} ms")
    w3 = find("W3", "service", 1, 1)
    if w3 and w3.result and round_trip_ms:
        rts = w3.result.p50 / round_trip_ms
        judge(
            "W3 <= 2.5 FHIR round trips",
            rts <= 2.5,
            f"p50 {w3.result.p50:.1f} ms / RT {round_trip_ms:.1f} ms = {rts:.2f}",
        )
    w4 = find("W4", "service", 1, None)
    if w4:
        samples = w4.values["samples"]
        judge(
            "W4 cold start < 1.5 s",
            max(samples) < 1.5,
            f"p50 {statistics.median(samples):.2f} s, max {max(samples):.2f} s",
        )
    w5 = find("W5", "service", 1, 8)
    if w5:
        v = w5.values
        judge("W5 < 150 MB per worker", v["all"] < 150, f"{v['all']:.1f} MB after {v['counts'][1]:,} requests")
        growth = v["all"] - v["first"]
        judge(
            "W5 no growth from 1,000 to 10,000 requests",
            growth <= RSS_GROWTH_TOLERANCE_MB,
            f"{growth:+.1f} MB from {v['counts'][0]:,} to {v['counts'][1]:,} (tolerance {RSS_GROWTH_TOLERANCE_MB} MB)",
        )
    one, two = find("W1", "service", 1, 8), find("W1", "service", 2, 8)
    if one and two and one.result and two.result:
        ratio = two.result.rps / one.result.rps
        judge(
            "2 workers >= 1.7x req/s of 1 (W1 c=8)",
            ratio >= 1.7,
            f"{two.result.rps:.0f} vs {one.result.rps:.0f} req/s = {ratio:.2f}x",
        )
    return out
