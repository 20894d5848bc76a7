"""Wire the application together: settings, rules, store, JWT verifier, FHIR client, routes.

``create_app`` (in ``cds_service/__init__.py``) calls ``build_app``; nothing here runs at import
time. Tests build a fresh app per test and may inject the uuid factory, the clock and the HTTP
session, so whole card JSON can be compared exactly.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests
from flask import Flask, Response, g, request
from flask_cors import CORS
from werkzeug.exceptions import HTTPException

from cds_service import logs
from cds_service.auth import JwtVerifier
from cds_service.cards import CardRenderer
from cds_service.config import Settings, load_settings
from cds_service.errors import BadRequest, CdsError, MethodNotAllowed, NotFound, PayloadTooLarge, Unauthorized
from cds_service.fhir_client import Deadline, FhirClient
from cds_service.gather import Gatherer
from cds_service.handler import HookHandler
from cds_service.routes import bp, elapsed_ms, json_response
from cds_service.store import Store
from fhir_mappings import resources
from fhir_mappings.rules import RuleSet, load_rules

log = logging.getLogger("brachy_cds.access")
error_log = logging.getLogger("brachy_cds.error")

UNAUTHENTICATED_PATHS = ("/healthz",)


@dataclass
class Services:
    """The long-lived objects of one app, reachable as ``current_app.extensions["brachy_cds"]``."""

    settings: Settings
    rules: RuleSet
    store: Store
    verifier: JwtVerifier
    handler: HookHandler
    client: FhirClient
    executor: ThreadPoolExecutor

    def close(self) -> None:
        """Release threads and database connections (tests and graceful shutdown)."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.verifier.close()
        self.client.close()
        self.store.close()


def build_app(
    config: Mapping[str, Any] | Settings | None = None,
    *,
    new_uuid: Callable[[], str] | None = None,
    clock: Callable[[], float] | None = None,
    session: requests.Session | None = None,
) -> Flask:
    """Create the Flask app from ``BRACHY_CDS_*`` settings (os.environ when ``config`` is None)."""
    settings = config if isinstance(config, Settings) else load_settings(os.environ if config is None else config)
    logs.configure(settings.log_level)
    rules = load_rules(
        settings.canonical_base,
        settings.rules_dir,
        payer_table=settings.payer_table,
        resident_codes=settings.resident_codes,
    )
    resources.warm_up()
    if settings.auth == "required" and not settings.trusted_issuers:
        logging.getLogger("brachy_cds.config").warning(
            "BRACHY_CDS_AUTH=required but BRACHY_CDS_TRUSTED_ISSUERS is not set: every call gets 401"
        )
    if settings.auth == "required" and not settings.public_url:
        logging.getLogger("brachy_cds.config").warning(
            "BRACHY_CDS_PUBLIC_URL is not set: a JWT's aud is checked against the Host header of each request;"
            " set it in production so a token issued for another service cannot be replayed here"
        )

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    store = Store(settings.database_url)
    executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fhir")
    client = FhirClient(settings, session=session)
    now = clock or time.time
    renderer = CardRenderer(rules, settings.canonical_base, new_uuid or (lambda: str(uuid.uuid4())))
    services = Services(
        settings=settings,
        rules=rules,
        store=store,
        verifier=JwtVerifier(settings, store, clock=now),
        handler=HookHandler(
            settings,
            rules,
            Gatherer(settings, rules, client, executor, today=lambda: dt.datetime.fromtimestamp(now(), dt.UTC).date()),
            renderer,
        ),
        client=client,
        executor=executor,
    )
    app.extensions["brachy_cds"] = services
    app.register_blueprint(bp)
    # CDS Hooks C1 (reference/cds-hooks.md 1.11): preflight answered, Authorization and Content-Type
    # allowed, on every response including errors (flask-cors also decorates error handlers' answers).
    # The default "*" is sent as "*" (no credentials: the JWT travels in a header, never a cookie).
    # Configured origins are exact: given as patterns, so flask-cors never reads one as a regex.
    CORS(
        app,
        origins=["*"] if "*" in settings.cors_origins else [_exact(origin) for origin in settings.cors_origins],
        send_wildcard="*" in settings.cors_origins,
        allow_headers=["Authorization", "Content-Type"],
        methods=["GET", "POST", "OPTIONS"],
        max_age=600,
        supports_credentials=False,
    )
    _register_hooks(app, services)
    _register_errors(app)
    return app


def _exact(origin: str) -> re.Pattern[str]:
    return re.compile(re.escape(origin) + r"\Z", re.IGNORECASE)


def _register_hooks(app: Flask, services: Services) -> None:
    @app.before_request
    def authenticate() -> None:
        g.started = time.perf_counter()
        # The time budget of a hook call counts from here: a slow JWK Set fetch leaves less for FHIR.
        g.deadline = Deadline(services.settings.fhir_budget_seconds)
        g.log_fields = {"method": request.method, "route": request.url_rule.rule if request.url_rule else "(none)"}
        if request.method == "OPTIONS" or request.path in UNAUTHENTICATED_PATHS:
            return  # CORS preflight is answered without a JWT (contract 5.5).
        if services.settings.auth != "required":
            return
        claims = services.verifier.verify(request.headers.get("Authorization"), audience_for(services.settings))
        g.log_fields.update(iss=claims.get("iss"), jti=claims.get("jti"))

    @app.after_request
    def access_log(response: Response) -> Response:
        fields = dict(getattr(g, "log_fields", {}))
        fields.update(status=response.status_code, ms=elapsed_ms() if hasattr(g, "started") else None)
        log.info("request", extra={"fields": fields})
        return response


def audience_for(settings: Settings) -> str:
    """The URL a JWT's ``aud`` must name: BRACHY_CDS_PUBLIC_URL + path, else the URL called."""
    if settings.public_url:
        return settings.public_url + request.path
    return request.base_url


def _register_errors(app: Flask) -> None:
    @app.errorhandler(CdsError)
    def cds_error(error: CdsError) -> Response:
        if isinstance(error, Unauthorized):
            g.log_fields["authFailure"] = error.reason
            return Response("unauthorized", 401, mimetype="text/plain", headers={"WWW-Authenticate": "Bearer"})
        g.log_fields["error"] = error.code
        return json_response(error.operation_outcome(), error.status)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        mapped: CdsError
        if error.code == 404:
            mapped = NotFound("No such endpoint; GET /cds-services lists the services", code="no-route")
        elif error.code == 405:
            mapped = MethodNotAllowed(f"Method {request.method} is not allowed on this endpoint")
        elif error.code == 413:
            mapped = PayloadTooLarge(f"The request body is over the limit of {app.config['MAX_CONTENT_LENGTH']} bytes")
        else:
            mapped = BadRequest(f"The request could not be processed (HTTP {error.code})")
            mapped.status = error.code if error.code and 400 <= error.code < 500 else 400
        return cds_error(mapped)

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        # A bug, not the caller's fault: log the exception type only (messages may carry data).
        error_log.error("unhandled error", extra={"fields": {"exception": type(error).__name__}})
        outcome = CdsError("The service failed to process this request; the failure was logged")
        return json_response(outcome.operation_outcome(), 500)
