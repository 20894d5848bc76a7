"""A bounded multi-process HTTP load client, standard library only: the fallback when wrk is missing.

    python benchmarks/pyload.py URL BODY_FILE CONCURRENCY SECONDS COUNT

Forks CONCURRENCY processes (this process has no threads to fork with), each holding one keep-alive
connection and POSTing BODY_FILE back to back until SECONDS have passed or, when COUNT > 0, COUNT
responses in all were received. Prints one JSON line with the keys ``wrk_post.lua`` prints, so the
two generators are read the same way. Only loopback URLs are accepted.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import sys
import time
from urllib.parse import urlsplit

MAX_ERRORS = 1000


def _client(url: str, body: bytes, seconds: float, count: int, go: int, out: int) -> None:
    parts = urlsplit(url)
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    latencies: list[int] = []
    errors = 0
    os.read(go, 1)
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline and (count == 0 or len(latencies) < count) and errors < MAX_ERRORS:
        sent = time.perf_counter()
        try:
            connection.request("POST", parts.path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            connection.close()
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
            ok = False
        if ok:
            latencies.append(round((time.perf_counter() - sent) * 1e6))
        else:
            errors += 1
    ended = time.perf_counter()
    connection.close()
    report = {"latencies": latencies, "errors": errors, "started": started, "ended": ended}
    with os.fdopen(out, "w") as pipe:
        json.dump(report, pipe)


def _percentile(values: list[int], pct: float) -> int:
    if not values:
        return 0
    return values[max(1, math.ceil(pct / 100 * len(values))) - 1]


def main(argv: list[str]) -> int:
    url, body_path, concurrency, seconds, count = argv[0], argv[1], int(argv[2]), float(argv[3]), int(argv[4])
    if urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        print("pyload: only loopback URLs are accepted", file=sys.stderr)
        return 2
    with open(body_path, "rb") as file:
        body = file.read()
    go_read, go_write = os.pipe()
    children: list[tuple[int, int]] = []
    for n in range(concurrency):
        share = count // concurrency + (1 if n < count % concurrency else 0) if count else 0
        out_read, out_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: measure, report, leave without running the parent's cleanup
            os.close(out_read)
            try:
                _client(url, body, seconds, share, go_read, out_write)
            finally:
                os._exit(0)
        os.close(out_write)
        children.append((pid, out_read))
    os.write(go_write, b"g" * concurrency)
    reports = []
    for pid, out_read in children:
        with os.fdopen(out_read) as pipe:
            text = pipe.read()
        os.waitpid(pid, 0)
        reports.append(json.loads(text) if text else {"latencies": [], "errors": 1, "started": 0, "ended": 0})
    latencies = sorted(ms for report in reports for ms in report["latencies"])
    started = min(report["started"] for report in reports)
    ended = max(report["ended"] for report in reports)
    summary = {
        "requests": len(latencies),
        "duration_us": round((ended - started) * 1e6),
        "non2xx": sum(report["errors"] for report in reports),
        "connect": 0,
        "read": 0,
        "write": 0,
        "timeout": 0,
        "p50_us": _percentile(latencies, 50),
        "p95_us": _percentile(latencies, 95),
        "p99_us": _percentile(latencies, 99),
        "max_us": latencies[-1] if latencies else 0,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
