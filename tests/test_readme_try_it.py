"""The README's "Try it with a sandbox FHIR server", followed word by word on a fresh copy of the repository.

There is no Docker engine here, so the test plays the parts Docker would, from the same files a user
has, and runs every other command of the section's ``sh`` blocks as written (continuation lines joined,
comments dropped) in bash:
- a fresh test FHIR server (sekmet, open like HAPI's default) stands in for the ``hapi`` service: its
  URL replaces ``http://hapi:8080/fhir`` (inside the compose network) and ``http://localhost:8090/fhir``
  (from the host);
- ``docker compose up`` runs the ``loader`` service's command and starts the ``brachy-cds`` service's,
  the image's ENTRYPOINT + CMD from the Dockerfile, with the service's ``environment`` and volume
  paths, and waits for ``/healthz`` as its health check does; ``docker compose exec brachy-cds CMD``
  runs CMD with that environment; ``stop``, ``down`` and ``logs`` do what they say;
- ``python3 -m venv .venv && .venv/bin/pip install .`` installs nothing: ``.venv/bin/brachy-cds``
  becomes a launcher of the copy's own code with this interpreter (whose packages are the project's);
- port 8080 becomes a free port; the container's ``--host 0.0.0.0`` becomes 127.0.0.1;
- ``examples/trusted-issuers.sandbox.json`` becomes an entry of the same shape holding a test key,
  and a browser-less CDS Hooks sandbox then makes the call the sandbox makes.
Every ``text`` block after an ``sh`` block must match what its last command printed; a line ``...``
stands for any lines, and a line ending in ``...`` for any line that starts with what precedes it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from cds_service.kit.samples import catalogue, markdown_table
from tests.fhir_server import FhirTestServer, free_port, sekmet_binary
from tests.keys import TestIssuer
from tests.sample_cards import promised_cards

REPO = Path(__file__).resolve().parents[1]
HAPI_IN_NETWORK = "http://hapi:8080/fhir"
HAPI_FROM_HOST = "http://localhost:8090/fhir"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"
START_TIMEOUT = 60.0
pytestmark = pytest.mark.integration  # real servers: a FHIR server, brachy-cds under gunicorn and Werkzeug


def readme_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## Try it with a sandbox FHIR server")
    return text[start : text.index("\n## ", start + 10)]


def fenced_blocks(section: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```\s*$", section, re.M | re.S)]


def commands(block: str) -> list[str]:
    """The shell commands of an ``sh`` block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line for line in (strip_comment(raw).strip() for raw in joined.splitlines()) if line]


def strip_comment(line: str) -> str:
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def matches(expected: str, actual: str) -> bool:
    """``expected`` lines against ``actual`` lines: ``...`` is any run of lines, ``text...`` a prefix."""
    want = [line.rstrip() for line in expected.rstrip("\n").splitlines()]
    have = [line.rstrip() for line in actual.rstrip("\n").splitlines()]
    memo: dict[tuple[int, int], bool] = {}

    def match(i: int, j: int) -> bool:
        if (i, j) not in memo:
            if i == len(want):
                result = j == len(have)
            elif want[i].strip() == "...":
                result = any(match(i + 1, k) for k in range(j, len(have) + 1))
            elif j == len(have):
                result = False
            elif want[i].endswith("..."):
                result = have[j].startswith(want[i][:-3]) and match(i + 1, j + 1)
            else:
                result = want[i] == have[j] and match(i + 1, j + 1)
            memo[(i, j)] = result
        return memo[(i, j)]

    return match(0, 0)


def test_the_ellipsis_matching_itself():
    assert matches("a\n...\nd\n", "a\nb\nc\nd\n")
    assert matches("a\n...\n", "a\n")
    assert matches("ab...\nc", "abz\nc")
    assert not matches("a\nd", "a\nb\nd")
    assert not matches("a\n...\nd", "a\nb")


@dataclass
class Stack:
    """The processes the walk-through started, and what they printed."""

    clone: Path
    fhir: str
    port: int
    issuer: TestIssuer
    workdir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    compose_service: subprocess.Popen[bytes] | None = None
    loader_runs: list[str] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def service_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, process: subprocess.Popen[bytes] | None) -> None:
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)  # its own session: the launcher, python, gunicorn's workers
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def close(self) -> None:
        for process in reversed(self.processes):
            self.stop(process)

    def log_tail(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}" for path in self.logs)


def copy_of_the_repository(target: Path) -> Path:
    """What a fresh clone would hold: tracked files and new files git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def launcher(clone: Path, path: Path) -> None:
    """An executable ``brachy-cds`` that runs the copy's code (what ``pip install .`` would give)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    code = "import sys; from cds_service.cli import main; sys.exit(main(prog_name='brachy-cds'))"
    python, source = shlex.quote(sys.executable), shlex.quote(str(clone))
    path.write_text(f'#!/bin/sh\nPYTHONPATH={source} exec {python} -P -c "{code}" "$@"\n')
    path.chmod(0o755)


def base_env(stack: Stack) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRACHY_CDS_", "PYTHONPATH"))}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PATH"] = f"{stack.workdir / 'image-bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def host_text(stack: Stack, text: str) -> str:
    """A host command as the stand-ins need it."""
    text = text.replace(HAPI_FROM_HOST, stack.fhir).replace(HAPI_IN_NETWORK, stack.fhir)
    text = text.replace("http://localhost:8080", stack.service_url).replace("http://127.0.0.1:8080", stack.service_url)
    text = text.replace("--port 8080", f"--port {stack.port}")
    return text.replace("examples/trusted-issuers.sandbox.json", str(stack.workdir / "trusted-issuers.sandbox.json"))


def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def image_command(clone: Path) -> list[str]:
    steps = re.sub(r"\\\n", " ", (clone / "Dockerfile").read_text()).splitlines()
    final = steps[max(i for i, line in enumerate(steps) if line.startswith("FROM ")) :]
    entry = next(json.loads(line.split(" ", 1)[1]) for line in final if line.startswith("ENTRYPOINT "))
    cmd = next(json.loads(line.split(" ", 1)[1]) for line in final if line.startswith("CMD "))
    return entry + cmd


def service_env(stack: Stack, name: str) -> dict[str, str]:
    """The container's environment: the service's ``environment``, volume targets mapped to the copy."""
    service = compose()["services"][name]
    env = base_env(stack)
    mounts = [volume.split(":")[:2] for volume in service.get("volumes", [])]
    for key, value in (service.get("environment") or {}).items():
        value = str(value).replace(HAPI_IN_NETWORK, stack.fhir)
        for source, target in mounts:
            value = value.replace(target, str(stack.clone / source))
        env[key] = value
    return env


def container_command(stack: Stack, args: list[str]) -> list[str]:
    mapped = [a.replace(HAPI_IN_NETWORK, stack.fhir).replace("http://127.0.0.1:8080", stack.service_url) for a in args]
    mapped = ["127.0.0.1" if arg == "0.0.0.0" else arg for arg in mapped]  # noqa: S104
    return [str(stack.port) if arg == "8080" else arg for arg in mapped]


def wait_healthy(stack: Stack, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"brachy-cds exited with {process.returncode}\n{stack.log_tail()}", pytrace=False)
        try:
            with requests.get(f"{stack.service_url}/healthz", timeout=1, proxies={"http": "", "https": ""}) as r:
                if r.status_code == 200:
                    return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    pytest.fail(f"brachy-cds did not become healthy\n{stack.log_tail()}", pytrace=False)


def start(stack: Stack, argv: list[str] | str, env: dict[str, str], cwd: Path, name: str) -> subprocess.Popen[bytes]:
    log = stack.workdir / f"{name}-{len(stack.logs)}.log"
    stack.logs.append(log)
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv if isinstance(argv, list) else ["bash", "-c", argv],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack.processes.append(process)
    wait_healthy(stack, process)
    return process


def run_loader(stack: Stack) -> str:
    loader = compose()["services"]["loader"]
    argv = container_command(stack, [image_command(stack.clone)[0], *loader["command"]])
    done = subprocess.run(argv, cwd=stack.workdir, env=service_env(stack, "loader"), capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    stack.loader_runs.append(done.stdout)
    return done.stdout


def compose_up(stack: Stack, services: list[str]) -> None:
    wanted = services or list(compose()["services"])
    if "loader" in wanted:
        run_loader(stack)  # depends_on: hapi healthy (the stand-in is up)
    if "brachy-cds" in wanted and (stack.compose_service is None or stack.compose_service.poll() is not None):
        app_dir = stack.workdir / "container-app"  # WORKDIR /app
        app_dir.mkdir(exist_ok=True)
        argv = container_command(stack, image_command(stack.clone))
        stack.compose_service = start(stack, argv, service_env(stack, "brachy-cds"), app_dir, "container")


def run_command(stack: Stack, command: str) -> str:
    """Run one README command; return what it printed on stdout."""
    words = shlex.split(command)
    if words[:2] == ["docker", "compose"]:
        action, rest = words[2], words[3:]
        if action == "up":
            compose_up(stack, [w for w in rest if not w.startswith("-")])
            return ""
        if action == "exec":
            assert rest[0] == "brachy-cds", command
            done = subprocess.run(container_command(stack, rest[1:]), cwd=stack.workdir,
                                  env=service_env(stack, "brachy-cds"), capture_output=True, text=True,
                                  timeout=120, check=False)
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
            return done.stdout
        if action == "logs":
            assert rest == ["loader"], command
            return "".join(stack.loader_runs)
        if action in ("stop", "down"):
            stack.stop(stack.compose_service)
            return ""
        pytest.fail(f"the test does not know how to play: {command}")
    if command == "python3 -m venv .venv && .venv/bin/pip install .":
        launcher(stack.clone, stack.clone / ".venv" / "bin" / "brachy-cds")
        return ""
    if command == "kill %1":
        host = [p for p in stack.processes if p is not stack.compose_service and p.poll() is None]
        assert host, "kill %1 with no background job"
        stack.stop(host[-1])
        return ""
    text = host_text(stack, command)
    if text.endswith("&"):
        start(stack, text[:-1].strip(), base_env(stack), stack.clone, "host")
        return ""
    done = subprocess.run(["bash", "-c", text], cwd=stack.clone, env=base_env(stack), capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def fresh_hapi(tmp_path: Path) -> Iterator[FhirTestServer]:
    """A new, empty, open FHIR server: what `docker compose up` gives (HAPI keeps its data in memory)."""
    server = FhirTestServer(sekmet_binary(), tmp_path / "hapi-stand-in", token=None)
    server.workdir.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def stack(tmp_path: Path, fresh_hapi: FhirTestServer) -> Iterator[Stack]:
    clone = copy_of_the_repository(tmp_path / "clone")
    issuer = TestIssuer("https://sandbox.cds-hooks.org", "ES384", kid=SANDBOX_KID)
    entry = json.loads((clone / "examples" / "trusted-issuers.sandbox.json").read_text())[0]
    entry["jwks"] = issuer.jwks  # the same entry, with a key the test can sign with
    (tmp_path / "trusted-issuers.sandbox.json").write_text(json.dumps([entry]))
    launcher(clone, tmp_path / "image-bin" / "brachy-cds")  # the console script pip installs in the image
    running = Stack(clone, fresh_hapi.base_url, free_port(), issuer, tmp_path)
    try:
        yield running
    finally:
        running.close()


def test_the_launchers_run_the_copy_not_this_checkout(stack: Stack):
    done = subprocess.run(
        [str(stack.workdir / "image-bin" / "brachy-cds"), "--help"],
        env={**base_env(stack), "PYTHONPATH": str(stack.clone)}, capture_output=True, text=True, check=True,
    )
    assert done.stdout.startswith("Usage: brachy-cds")
    probe = subprocess.run(
        [sys.executable, "-P", "-c", "import cds_service; print(cds_service.__file__)"],
        env={**base_env(stack), "PYTHONPATH": str(stack.clone)}, cwd=REPO, capture_output=True, text=True, check=True,
    )
    assert probe.stdout.strip() == str(stack.clone / "cds_service" / "__init__.py")


def test_the_section_followed_word_by_word_gives_the_cards_it_shows(stack: Stack):
    section = readme_section()
    blocks = fenced_blocks(section)
    assert [lang for lang, _ in blocks].count("sh") >= 5
    checked = 0
    last_output = None
    for lang, body in blocks:
        if lang == "sh":
            for command in commands(body):
                last_output = run_command(stack, command)
        elif lang == "text":
            assert last_output is not None, "a text block before any command"
            assert matches(body, last_output), f"README shows:\n{body}\nbut the command printed:\n{last_output}"
            checked += 1
            last_output = None
    assert checked >= 3

    # What the prose promises: the loader's summary line, and the sandbox's cards for bcds-cervix-hdr.
    summary = re.search(r"`(10 samples, [^`]*)`", section)
    assert summary is not None
    first_load = stack.loader_runs[0].splitlines()[-1]
    assert summary.group(1).replace(HAPI_IN_NETWORK, stack.fhir) == first_load
    assert all(run.splitlines()[-1].endswith(" 0 created, 0 updated, 136 unchanged") for run in stack.loader_runs[1:])
    sandbox_call(stack)


def sandbox_call(stack: Stack) -> None:
    """What the CDS Hooks sandbox does against the service the last README block started (JWT required)."""
    canonical = catalogue()[0]
    base = f"http://localhost:{stack.port}"  # the sandbox user typed localhost
    session = requests.Session()
    session.trust_env = False
    discovery_url = f"{base}/cds-services"
    token = stack.issuer.sign(discovery_url, headers={"jku": SANDBOX_JKU})
    preflight = session.options(discovery_url, headers={"Origin": "https://sandbox.cds-hooks.org",
                                                        "Access-Control-Request-Method": "GET",
                                                        "Access-Control-Request-Headers": "authorization"}, timeout=10)
    assert preflight.status_code == 200
    services = session.get(discovery_url, headers={"Authorization": f"Bearer {token}"}, timeout=10).json()["services"]
    review = next(s for s in services if s["hook"] == "patient-view")
    url = f"{discovery_url}/{review['id']}"
    body = {
        "hook": "patient-view",
        "hookInstance": "2f0e6a3c-5d1b-4c7e-9a8f-6b5c4d3e2f1a",
        "fhirServer": stack.fhir,
        "context": {"patientId": canonical.patient, "userId": "Practitioner/COREPRACTITIONER1"},
    }
    token = stack.issuer.sign(url, headers={"jku": SANDBOX_JKU})
    answer = session.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    promised_cards(canonical, answer.json())
    unsigned = session.post(url, json=body, timeout=30)
    assert unsigned.status_code == 401


def test_the_sample_table_is_the_one_the_samples_promise():
    assert markdown_table(catalogue()) in readme_section()
