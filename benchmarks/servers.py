"""The processes of a benchmark run: brachy-cds or the floor under ``brachy-cds serve``, read through /proc."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.workloads import HOOK_PATH
from tests.fhir_server import free_port

REPO = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0


def _stat_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children(pid: int) -> list[int]:
    """Pids of the living processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry.name))
    return sorted(found)


def tree(pid: int) -> list[int]:
    """``pid`` and all its living descendants."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo.extend(children(current))
    return pids


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its living descendants."""
    return sum(_stat_cpu_seconds(p) for p in tree(pid))


def rss_mb(pid: int) -> float:
    """Resident set size of one process in MiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def post(url: str, body: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """POST a JSON body on a new connection; return status and body."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request("POST", parts.path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class Server:
    """brachy-cds or the floor, started with ``brachy-cds serve --workers N`` on a free loopback port."""

    def __init__(self, kind: str, workers: int, env: dict[str, str], logs: Path) -> None:
        self.kind = kind
        self.workers = workers
        self.env = env
        self.log_path = logs / f"{kind}-{workers}w-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.rss_at_start = 0.0
        """Largest worker RSS (MiB) right after the first 200."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{HOOK_PATH}"

    def command(self) -> list[str]:
        args = ["serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)]
        if self.kind == "floor":
            return [sys.executable, "-m", "benchmarks.serve_floor", *args]
        script = Path(sys.executable).parent / "brachy-cds"
        return [str(script), *args] if script.exists() else [sys.executable, "-m", "cds_service.cli", *args]

    def start(self, first_body: bytes) -> float:
        """Start and return the seconds from process start to the first 200 on a hook call (W4).

        A process that exits at once (the free port was taken meanwhile) is started again on
        another port, twice at most; an answer other than 200 stops the run with the server's log.
        """
        for _attempt in range(3):
            self.port = free_port()
            log = self.log_path.open("ab")
            started = time.perf_counter()
            self.process = subprocess.Popen(
                self.command(), cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
            log.close()
            while time.perf_counter() - started < START_TIMEOUT_SECONDS and self.process.poll() is None:
                answer = None
                with contextlib.suppress(OSError, http.client.HTTPException):
                    answer = post(self.url, first_body, timeout=5)
                if answer is not None and answer[0] == 200:
                    return time.perf_counter() - started
                if answer is not None:
                    self.stop()
                    raise RuntimeError(f"{self.kind} answered HTTP {answer[0]}: {answer[1][:300]!r}\n{self.log_tail()}")
                time.sleep(0.01)
            exited = self.process.poll() is not None
            self.stop()
            if not exited:
                break
        raise RuntimeError(f"{self.kind} did not start; its log ends with:\n{self.log_tail()}")

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        return children(self.process.pid)

    def cpu_seconds(self) -> float:
        assert self.process is not None
        return tree_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        """SIGTERM (gunicorn's graceful stop), then SIGKILL if it does not end in time."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                for pid in reversed(tree(self.process.pid)):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
