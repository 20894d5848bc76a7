"""A throwaway PostgreSQL server on 127.0.0.1 for the store tests (a real database, never mocked).

``BRACHY_CDS_TEST_POSTGRES_URL`` points the tests at an existing scratch database instead. Otherwise
the Debian PostgreSQL binaries (``initdb``, ``pg_ctl``; scripts/test installs them when missing) run
a fresh cluster in a temporary folder, as the ``postgres`` user when the tests run as root (PostgreSQL
refuses to run as root), with trust authentication on loopback only.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.fhir_server import free_port

URL_ENV = "BRACHY_CDS_TEST_POSTGRES_URL"


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class PostgresTestServer:
    """Run ``initdb`` + ``pg_ctl start`` in a temporary folder; ``url`` is a SQLAlchemy URL."""

    def __init__(self) -> None:
        initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
        if not (initdb and pg_ctl):
            pytest.fail(
                "PostgreSQL server binaries (initdb, pg_ctl) are missing: run scripts/test, which installs the "
                f"Debian 'postgresql' package, or set {URL_ENV}.",
                pytrace=False,
            )
        self.initdb, self.pg_ctl = initdb, pg_ctl
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="brachy-pg-", dir="/tmp"))
        self.data = self.root / "data"
        self.run_as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self.run_as = ["runuser", "-u", "postgres", "--"]
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        result = subprocess.run([*self.run_as, *args], capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed: {result.stderr[-2000:]}")

    def start(self) -> None:
        """Create the cluster and start it, listening on 127.0.0.1 only."""
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        self._run(self.pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")

    def close(self) -> None:
        """Stop the server and remove its folder."""
        try:
            if self.data.exists():
                self._run(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
