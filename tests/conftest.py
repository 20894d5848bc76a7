"""Shared pytest fixtures. Keep each one small and documented; helpers live in their own modules.

Integration fixtures talk to real servers on 127.0.0.1 (``tests/fhir_server.py``); HTTP is never mocked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.fhir_server import DelayProxy, FhirTestServer, LoopbackServer, ScriptedHandler, sekmet_binary


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the real FHIR server (directly or through another fixture) ``integration``."""
    for item in items:
        if "fhir_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def fhir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirTestServer]:
    """A real FHIR R4 server (sekmet) on 127.0.0.1, shared by the whole session.

    Fresh data directory, bearer token ``fhir_server.token``, base URL ``fhir_server.base_url``.
    ``fhir_server.load(bundle_or_resources)`` stores data with PUTs (use ``with_suffix`` to keep
    tests apart). Fails, never skips, when sekmet is missing: run ``scripts/install-test-fhir-server``.
    """
    server = FhirTestServer(sekmet_binary(), tmp_path_factory.mktemp("sekmet"))
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def delay_proxy(fhir_server: FhirTestServer) -> Iterator[DelayProxy]:
    """A recording loopback proxy in front of ``fhir_server`` (``.base_url``); set ``.delay`` to slow it down.

    ``.requests`` lists what reached it (method, path with query, headers); ``.paths()`` the FHIR paths.
    """
    proxy = DelayProxy(fhir_server.base_url)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def loopback_server() -> Iterator[Callable[[Callable[[ScriptedHandler], None]], LoopbackServer]]:
    """Start scripted loopback HTTP servers for faults sekmet cannot produce; all are closed after the test.

    ``server = loopback_server(lambda handler: handler.send_json(500, {...}))``
    """
    servers: list[LoopbackServer] = []

    def start(respond: Callable[[ScriptedHandler], None]) -> LoopbackServer:
        server = LoopbackServer(respond)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.close()
