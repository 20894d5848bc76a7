"""Shared pytest fixtures. Keep each one small and documented; helpers live in their own modules.

Integration fixtures talk to real servers on 127.0.0.1 (``tests/fhir_server.py``); HTTP is never mocked.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from cds_service import create_app
from tests.cds_conformance import check_response
from tests.fhir_server import DelayProxy, FhirTestServer, LoopbackServer, ScriptedHandler, sekmet_binary

pytest_plugins = ("pytester", "tests.leakcheck")
"""``tests.leakcheck`` fails any test whose logs carry a token, a JWT or patient data; pytester proves it does.
(Imported by pytest as a plugin, so this module reaches it through ``leakcheck.REGISTRY`` lazily.)"""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the real FHIR server (directly or through another fixture) ``integration``."""
    for item in items:
        if {"fhir_server", "open_fhir_server"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def fhir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirTestServer]:
    """A real FHIR R4 server (sekmet) on 127.0.0.1, shared by the whole session.

    Fresh data directory, bearer token ``fhir_server.token``, base URL ``fhir_server.base_url``.
    ``fhir_server.load(bundle_or_resources)`` stores data with PUTs (use ``with_suffix`` to keep
    tests apart). Fails, never skips, when sekmet is missing: run ``scripts/install-test-fhir-server``.
    """
    server = FhirTestServer(sekmet_binary(), tmp_path_factory.mktemp("sekmet"))
    registry().add(server.token, "test FHIR server bearer token")
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def open_fhir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirTestServer]:
    """A second real FHIR R4 server (sekmet) on 127.0.0.1 with no authentication, shared by the session.

    Stands in for HAPI FHIR's default and for the open servers the CDS Hooks sandbox reads
    (reference/cds-hooks.md section 7): ``open_fhir_server.token`` is None.
    """
    server = FhirTestServer(sekmet_binary(), tmp_path_factory.mktemp("sekmet-open"), token=None)
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


class CheckedClient(FlaskClient):
    """A Flask test client that checks every 200 hook response against the CDS Hooks rules.

    Every ``POST /cds-services/{id}`` answered 200 goes through ``tests.cds_conformance.check_response``
    (summary < 140, no null/empty values, selectionBehavior, lowercase actions, valid R4 ChargeItems),
    and every error body (401 aside) must be an OperationOutcome: no test can forget the check.
    """

    def open(self, *args: Any, **kwargs: Any) -> TestResponse:
        response = super().open(*args, **kwargs)
        registry().learn_request(_json_of(kwargs), response.request.headers.get("Authorization"))
        request_path = response.request.path
        if response.request.method == "POST" and request_path.startswith("/cds-services/"):
            if response.status_code == 200 and not request_path.rstrip("/").endswith("/feedback"):
                check_response(response.get_json())
            elif response.status_code >= 400 and response.status_code != 401:
                body = response.get_json(silent=True)
                assert isinstance(body, dict) and body.get("resourceType") == "OperationOutcome", body
        assert response.status_code < 500, response.get_data(as_text=True)
        return response


def registry() -> Any:
    """The leak registry of ``tests.leakcheck`` (imported here only after pytest has loaded the plugin)."""
    from tests.leakcheck import REGISTRY

    return REGISTRY


def _json_of(kwargs: Mapping[str, Any]) -> Any:
    """The JSON body a test passed to the client (``json=`` or JSON ``data=``), for the leak registry."""
    if "json" in kwargs:
        return kwargs["json"]
    data = kwargs.get("data")
    if isinstance(data, str | bytes) and registry().learn_from_requests:
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            return None
    return None


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., Flask]]:
    """Build brachy-cds apps from ``BRACHY_CDS_*`` overrides, closed after the test.

    Defaults: auth off (tests of the JWT path pass ``BRACHY_CDS_AUTH="required"``), a SQLite file in
    ``tmp_path``, deterministic uuids. ``make_app({"BRACHY_CDS_ALLOWED_FHIR_SERVERS": url}, clock=...)``.
    The app's ``test_client()`` is a ``CheckedClient``.
    """
    apps: list[Flask] = []

    def build(config: Mapping[str, str] | None = None, **overrides: Any) -> Flask:
        settings = {"BRACHY_CDS_AUTH": "off", "BRACHY_CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'brachy.sqlite3'}"}
        settings.update(config or {})
        numbers = itertools.count(1)
        overrides.setdefault("new_uuid", lambda: f"00000000-0000-4000-8000-{next(numbers):012d}")
        app = create_app(settings, **overrides)
        app.test_client_class = CheckedClient
        apps.append(app)
        return app

    try:
        yield build
    finally:
        for app in apps:
            app.extensions["brachy_cds"].close()


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    """A checked test client of an app with default settings (auth off, prefetch only)."""
    return make_app().test_client()
