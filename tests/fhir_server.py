"""Real HTTP servers on 127.0.0.1 for integration tests: the FHIR test server and small scripted helpers.

- ``FhirTestServer`` runs sekmet-fhir (a complete FHIR R4 server, reference/fhir-test-servers.md) in
  a subprocess with a fresh data directory and a bearer token. Install it with
  ``scripts/install-test-fhir-server`` (its own ``.venv-fhir``), or point
  ``BRACHY_CDS_TEST_FHIR_SERVER`` at a ``sekmet`` binary.
- ``LoopbackServer`` answers with whatever a test scripts, for faults sekmet cannot produce (a
  dribbling body, a redirect, broken JSON, an endless ``next`` link). It records every request.
- ``DelayProxy`` forwards to a real server after a configurable delay and records every request
  with its headers: "slow server" tests, request counting, and proof that nothing was sent.

No HTTP mocking anywhere: every byte crosses a real loopback socket.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
SERVER_ENV = "BRACHY_CDS_TEST_FHIR_SERVER"
DEFAULT_BINARY = REPO / ".venv-fhir" / "bin" / "sekmet"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "integration"
START_TIMEOUT_SECONDS = 30.0
FHIR_JSON = "application/fhir+json"
TEST_TOKEN = "test-token-5b0c1e"
"""The bearer token the test FHIR server accepts (a made-up value, valid only there)."""


def sekmet_binary() -> Path:
    """Return the sekmet executable; fail the test run (never skip) when it is not installed."""
    configured = os.environ.get(SERVER_ENV, "").strip()
    binary = Path(configured) if configured else DEFAULT_BINARY
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        where = f"{SERVER_ENV}={configured}" if configured else str(binary)
        pytest.fail(
            f"The test FHIR server is not installed ({where} is not an executable).\n"
            "Run scripts/install-test-fhir-server from the repository root (it creates .venv-fhir), "
            f"or set {SERVER_ENV} to a sekmet binary.",
            pytrace=False,
        )
    return binary


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_fixture(name: str) -> dict[str, Any]:
    """Read a JSON fixture from ``tests/fixtures/integration/``."""
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


class FhirTestServer:
    """A sekmet FHIR R4 server in a subprocess on 127.0.0.1, with a bearer token and its own data directory.

    ``token=None`` makes an open server (no authentication), like HAPI FHIR's default and the servers
    the CDS Hooks sandbox talks to.
    """

    def __init__(self, binary: Path, workdir: Path, token: str | None = TEST_TOKEN) -> None:
        self.binary = binary
        self.workdir = workdir
        self.token = token
        self.port = 0
        self.base_url = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "sekmet.log"
        self._log_file: Any = None
        self.session = requests.Session()
        self.session.trust_env = False

    def start(self, attempts: int = 3) -> None:
        """Start on a free port and wait until ``/fhir/metadata`` answers; fail with the server log otherwise."""
        for attempt in range(1, attempts + 1):
            self.port = free_port()
            self.base_url = f"http://127.0.0.1:{self.port}/fhir"
            data_dir = self.workdir / f"data-{attempt}"
            shutil.rmtree(data_dir, ignore_errors=True)
            config = self.workdir / "settings.yaml"
            config.write_text(
                json.dumps(  # JSON is YAML: no quoting surprises
                    {
                        "host": "127.0.0.1",
                        "port": self.port,
                        "base_url": self.base_url,
                        "data_dir": str(data_dir),
                        "server_auth": (
                            {"types": ["bearer"], "tokens": [self.token]} if self.token else {"types": ["none"]}
                        ),
                        "simulator": {"enabled": False},
                        "log_inbound": False,
                    }
                ),
                encoding="utf-8",
            )
            env = {k: v for k, v in os.environ.items() if not k.startswith("SEKMET_")}
            env["SEKMET_CONFIG"] = str(config)
            self._log_file = self.log_path.open("ab")
            self.process = subprocess.Popen(
                [str(self.binary), "serve"],
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
            )
            if self._wait_ready():
                return
            self.stop()
        pytest.fail(f"sekmet did not start; its log says:\n{self.log_tail()}", pytrace=False)

    def _wait_ready(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False  # exited: port taken, bad config
            try:
                with self.session.get(f"{self.base_url}/metadata", timeout=1) as response:
                    if response.status_code == 200:
                        return True
            except requests.RequestException:
                pass
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        """Terminate the server (kill it when it does not stop within 10 s) and close the log."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
            self.process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def close(self) -> None:
        """Stop the server and close the loading session."""
        self.stop()
        self.session.close()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's output, for failure messages."""
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def auth_headers(self) -> dict[str, str]:
        """Headers that let a test talk to the server directly."""
        if self.token is None:
            return {"Accept": FHIR_JSON}
        return {"Authorization": f"Bearer {self.token}", "Accept": FHIR_JSON}

    def load(self, data: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Store resources with one transaction of ``PUT Type/id`` entries (idempotent); return the response Bundle.

        ``data`` is a Bundle (any type: its entries' resources are stored), one resource, or a list of
        resources. Every resource needs an ``id``.
        """
        resources = _resources_of(data)
        transaction = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": f"{self.base_url}/{r['resourceType']}/{r['id']}",
                    "resource": r,
                    "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
                }
                for r in resources
            ],
        }
        headers = {**self.auth_headers, "Content-Type": FHIR_JSON}
        with self.session.post(self.base_url, json=transaction, headers=headers, timeout=30) as response:
            if response.status_code != 200:
                raise AssertionError(
                    f"loading {len(resources)} resources failed: HTTP {response.status_code}\n{response.text[:2000]}"
                )
            return response.json()

    def read(self, path: str) -> dict[str, Any]:
        """GET ``Type/id`` from the server (a test's way to build prefetch from stored data)."""
        return self._get(path)

    def search(self, query: str) -> dict[str, Any]:
        """GET a search (``Procedure?encounter=x``) and return the first page's Bundle."""
        return self._get(query)

    def _get(self, path: str) -> dict[str, Any]:
        with self.session.get(f"{self.base_url}/{path}", headers=self.auth_headers, timeout=30) as response:
            if response.status_code != 200:
                raise AssertionError(f"GET {path} failed: HTTP {response.status_code}")
            return response.json()


def _resources_of(data: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if isinstance(data, Mapping):
        if data.get("resourceType") == "Bundle":
            return [entry["resource"] for entry in data.get("entry", []) if "resource" in entry]
        return [data]
    return list(data)


def with_suffix(data: Any, suffix: str) -> Any:
    """Copy a Bundle (or resource, or list) giving every resource id, and every ``Type/id`` reference to it, ``suffix``.

    Tests share one server for the whole session; a suffix per test keeps their data apart.
    """
    resources = _resources_of(data) if not isinstance(data, list) else data
    known = {f"{r['resourceType']}/{r['id']}" for r in resources if "id" in r}

    def rewrite(node: Any, is_resource: bool = False) -> Any:
        if isinstance(node, list):
            return [rewrite(item) for item in node]
        if not isinstance(node, dict):
            return node
        copy = {}
        for key, value in node.items():
            if key == "reference" and isinstance(value, str) and value in known:
                copy[key] = value + suffix
            elif key == "id" and is_resource and isinstance(value, str):
                copy[key] = value + suffix
            elif key == "resource":
                copy[key] = rewrite(value, is_resource=True)
            else:
                copy[key] = rewrite(value)
        return copy

    if isinstance(data, list):
        return [rewrite(item, is_resource=True) for item in data]
    return rewrite(data, is_resource=data.get("resourceType") != "Bundle")


@dataclass(frozen=True)
class RecordedRequest:
    """One request a loopback server received: method, path with query, headers (lower-case names)."""

    method: str
    path: str
    headers: Mapping[str, str]

    @property
    def resource_path(self) -> str:
        """The path below ``/fhir/`` with its query, e.g. ``Device?_id=a,b``."""
        return re.sub(r"^/fhir/?", "", self.path)


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins handler threads: nothing outlives the test
    block_on_close = True
    owner: LoopbackServer


class ScriptedHandler(BaseHTTPRequestHandler):
    """Request handler of ``LoopbackServer``: records the request, then calls the test's ``respond``."""

    protocol_version = "HTTP/1.0"  # one request per connection: no keep-alive to wait for on close
    timeout = 10
    server: _Server

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        owner = self.server.owner
        owner.record(RecordedRequest(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        try:
            owner.respond(self)
        except OSError:
            pass  # the client gave up (timeout, deadline): nothing to answer

    def body(self) -> bytes:
        """The request body (by Content-Length)."""
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send_json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        """Answer with a JSON body."""
        self.send_bytes(status, json.dumps(body).encode(), headers)

    def send_bytes(
        self, status: int, data: bytes, headers: Mapping[str, str] | None = None, content_type: str = FHIR_JSON
    ) -> None:
        """Answer with raw bytes and a Content-Length."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def drip(self, data: bytes, *, chunk: int = 1, interval: float = 0.1) -> None:
        """Answer 200 and send the body a few bytes at a time (a server that dribbles); stops when the server closes."""
        self.send_response(200)
        self.send_header("Content-Type", FHIR_JSON)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        for start in range(0, len(data), chunk):
            self.wfile.write(data[start : start + chunk])
            self.wfile.flush()
            if self.server.owner.stopping.wait(interval):
                return

    def pause(self, seconds: float) -> bool:
        """Sleep, waking early when the server closes; True when it is closing."""
        return self.server.owner.stopping.wait(seconds)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 whose answers a test scripts; records every request.

    ``respond(handler)`` writes the answer with the handler's ``send_json``/``send_bytes``/``drip``.
    ``base_url`` ends in ``/fhir`` so it reads like a FHIR base.
    """

    def __init__(self, respond: Callable[[ScriptedHandler], None], host: str = "127.0.0.1") -> None:
        self.respond = respond
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self._server = _Server((host, 0), ScriptedHandler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self.origin = f"http://{host}:{self.port}"
        self.base_url = f"{self.origin}/fhir"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"loopback-{self.port}"
        )
        self._thread.start()

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def paths(self) -> list[str]:
        """The paths below ``/fhir/`` received so far, in order."""
        with self._lock:
            return [r.resource_path for r in self.requests]

    def close(self) -> None:
        """Wake sleeping handlers, stop serving and join every thread."""
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> LoopbackServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_FORWARDED_HEADERS = {"accept", "authorization", "content-type", "prefer", "if-none-exist"}


class DelayProxy(LoopbackServer):
    """Forward every request to ``upstream`` (a FHIR base URL) after ``delay`` seconds; record what passed.

    The upstream origin in response bodies (absolute ``next`` links, fullUrls) is rewritten to the
    proxy's, as a reverse proxy with forwarded-host support would, so paging stays on the proxy.
    """

    def __init__(self, upstream: str, delay: float = 0.0) -> None:
        self.delay = delay
        self.upstream_origin = "{0.scheme}://{0.netloc}".format(urlsplit(upstream))
        self._session = requests.Session()
        self._session.trust_env = False
        super().__init__(self._forward)

    def _forward(self, handler: ScriptedHandler) -> None:
        if self.delay and handler.pause(self.delay):
            return
        body = handler.body() if handler.command in ("POST", "PUT") else None
        headers = {k: v for k, v in handler.headers.items() if k.lower() in _FORWARDED_HEADERS}
        with self._session.request(
            handler.command,
            self.upstream_origin + handler.path,
            headers=headers,
            data=body,
            timeout=30,
            allow_redirects=False,
        ) as upstream:
            content = upstream.content.replace(self.upstream_origin.encode(), self.origin.encode())
            content_type = upstream.headers.get("Content-Type", FHIR_JSON)
            handler.send_bytes(upstream.status_code, content, content_type=content_type)

    def close(self) -> None:
        super().close()
        self._session.close()
