"""Loopback load generators: ``wrk`` (Debian package) or a bounded multi-process Python client.

Both send the same POST body over keep-alive connections at a fixed concurrency, for a fixed
duration or a fixed number of requests, and report latency percentiles, requests per second and
the CPU time the generator itself used (it shares the 2 cores with the servers it measures).
Only loopback targets are accepted.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
WRK_SCRIPT = HERE / "wrk_post.lua"
PYLOAD = HERE / "pyload.py"
COUNT_BOUND_SECONDS = 600
"""Duration bound of a run that stops at a request count (it ends earlier, at the count)."""


@dataclass(frozen=True)
class LoadResult:
    """What one load run measured; latencies in milliseconds."""

    requests: int
    errors: int
    seconds: float
    p50: float
    p95: float
    p99: float
    max: float
    cpu_seconds: float
    """CPU time (user + system) the load generator used."""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def wrk_binary() -> str | None:
    """The wrk executable on PATH, or None."""
    return shutil.which("wrk")


def ensure_wrk() -> str | None:
    """Return wrk, installing Debian's package first when it is missing and apt-get can; None when it cannot."""
    found = wrk_binary()
    if found or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    print("wrk is missing: installing Debian's wrk package (apt-get install wrk)", flush=True)
    for update_first in (False, True):
        if update_first:
            _quietly(["apt-get", "update", "-q"])
        if _quietly(["apt-get", "install", "-y", "-q", "--no-install-recommends", "wrk"]) == 0 and wrk_binary():
            return wrk_binary()
    print("could not install wrk: using the Python load client", flush=True)
    return None


def _quietly(command: list[str]) -> int:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return 1
    return done.returncode


def _check_loopback(url: str) -> None:
    host = urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("the load generator only targets loopback addresses")


def _run_summary(command: list[str], bound: float) -> tuple[dict[str, Any], float]:
    """Run a load generator; return its JSON summary line and the CPU seconds it (and its children) used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    process = subprocess.run(command, capture_output=True, text=True, timeout=bound + 120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({process.returncode}): {process.stderr.strip()[:500]}")
    summary = next((json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")), None)
    if summary is None:
        raise RuntimeError(f"{command[0]} printed no summary: {process.stdout[-500:]}")
    return summary, cpu


def _result(summary: dict[str, Any], cpu: float) -> LoadResult:
    return LoadResult(
        requests=summary["requests"],
        errors=sum(summary[k] for k in ("non2xx", "connect", "read", "write", "timeout")),
        seconds=summary["duration_us"] / 1e6,
        p50=summary["p50_us"] / 1000,
        p95=summary["p95_us"] / 1000,
        p99=summary["p99_us"] / 1000,
        max=summary["max_us"] / 1000,
        cpu_seconds=cpu,
    )


class WrkClient:
    """Drive a URL with wrk: ``-t`` threads (at most 2, one per core), ``-c`` connections."""

    name = "wrk"

    def __init__(self, binary: str) -> None:
        self.binary = binary
        version = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
        self.version = (version.stdout + version.stderr).split("\n")[0].split(" [")[0].strip() or "wrk"

    def run(self, url: str, body_path: Path, concurrency: int, *, seconds: float) -> LoadResult:
        """Run for ``seconds`` (whole seconds: wrk takes no fractions)."""
        _check_loopback(url)
        bound = max(1, round(seconds))
        command = [
            self.binary, "-t", str(min(concurrency, 2)), "-c", str(concurrency), "-d", f"{bound}s",
            "--timeout", "10s", "-s", str(WRK_SCRIPT), url, "--", str(body_path),
        ]  # fmt: skip
        return _result(*_run_summary(command, bound))


class PythonClient:
    """Drive a URL with ``pyload.py``: one forked process per connection, requests back to back."""

    name = "python"
    version = "pyload.py, one process per connection"

    def run(
        self, url: str, body_path: Path, concurrency: int, *, seconds: float | None = None, count: int | None = None
    ) -> LoadResult:
        """Run for ``seconds`` or until ``count`` responses in all (split between the processes)."""
        _check_loopback(url)
        bound = seconds or COUNT_BOUND_SECONDS
        command = [sys.executable, str(PYLOAD), url, str(body_path), str(concurrency), str(bound), str(count or 0)]
        return _result(*_run_summary(command, bound))


def pick_client(choice: str, *, install: bool) -> WrkClient | PythonClient:
    """``wrk`` (installed first when ``install`` and missing), ``python``, or ``auto``: wrk when it can be had."""
    if choice == "python":
        return PythonClient()
    binary = ensure_wrk() if install else wrk_binary()
    if binary:
        return WrkClient(binary)
    if choice == "wrk":
        raise SystemExit("wrk is not installed and could not be installed (apt-get install wrk)")
    return PythonClient()
