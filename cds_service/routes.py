"""HTTP routes: discovery, the hook call and feedback (CDS Hooks 2.0), each a thin view.

Discovery and dispatch read the same registry (``discovery.SERVICES``), so they cannot drift apart.
A trailing slash on ``/cds-services/`` works too (contract 5.5: the sandbox concatenates URLs).
"""

from __future__ import annotations

import json
import time
from typing import Any

from flask import Blueprint, Response, current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from cds_service.discovery import SERVICES, ServiceDefinition, find_service
from cds_service.errors import BadRequest, NotFound
from cds_service.feedback import parse_feedback
from cds_service.limits import JsonRejected, parse_json

bp = Blueprint("cds", __name__)


@bp.get("/cds-services")
@bp.get("/cds-services/")
def discovery() -> Response:
    """List the services (CDS Hooks 2.0 "Discovery")."""
    return json_response({"services": [service.discovery_entry() for service in SERVICES]})


@bp.post("/cds-services/<service_id>")
@bp.post("/cds-services/<service_id>/")
@bp.post("/cds-services//<service_id>", merge_slashes=False)
def call_service(service_id: str) -> Response:
    """Answer a hook call with cards (CDS Hooks 2.0 "Calling a CDS Service")."""
    service = _service(service_id)
    body = read_json()
    g.log_fields["hookInstance"] = hook_instance_of(body)
    outcome = current_app.extensions["brachy_cds"].handler.handle(service, body, g.deadline)
    g.log_fields.update(
        hookInstance=outcome.hook_instance,
        cards=len(outcome.body["cards"]),
        topics=outcome.topics,
        encounters=outcome.encounters,
        fhirFetches=outcome.fetches,
    )
    return json_response(outcome.body)


@bp.post("/cds-services/<service_id>/feedback")
@bp.post("/cds-services//<service_id>/feedback", merge_slashes=False)
def feedback(service_id: str) -> Response:
    """Store feedback on cards (CDS Hooks 2.0 "Feedback"); 200 once every item is stored."""
    service = _service(service_id)
    items = parse_feedback(read_json())
    stored = current_app.extensions["brachy_cds"].store.record_feedback(service.id, items)
    g.log_fields.update(feedbackItems=stored)
    return json_response({"stored": stored})


@bp.get("/healthz")
def health() -> Response:
    """Report liveness for container health checks (no patient data, no authentication)."""
    return json_response({"status": "ok"})


def _service(service_id: str) -> ServiceDefinition:
    service = find_service(service_id)
    g.log_fields["service"] = service.id if service else "(unknown)"
    if service is None:
        raise NotFound("No CDS service with this id; GET /cds-services lists the services")
    return service


def hook_instance_of(body: Any) -> str | None:
    """The request's ``hookInstance`` for the access log, also on a 400/412 (an opaque id, at most 200 characters)."""
    value = body.get("hookInstance") if isinstance(body, dict) else None
    if not isinstance(value, str) or not 0 < len(value) <= 200 or not value.isprintable():
        return None
    return value


def read_json() -> Any:
    """Parse the request body as strict JSON within BRACHY_CDS_MAX_JSON_DEPTH, with a clear 400 for anything else.

    Over BRACHY_CDS_MAX_BODY_BYTES it is a 413, with or without a Content-Length: Werkzeug refuses a
    declared length over the limit, but stops reading a chunked body at the limit without a word,
    so one more byte is asked of the server's input to tell "exactly the limit" from "more".
    """
    raw = request.get_data(cache=False)
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is None and limit is not None and len(raw) >= limit:
        if request.environ["wsgi.input"].read(1):
            raise RequestEntityTooLarge()
    if not raw:
        raise BadRequest("The request body is empty; a JSON object is required")
    try:
        return parse_json(raw, current_app.extensions["brachy_cds"].settings.max_json_depth)
    except JsonRejected as exc:
        raise BadRequest(f"The request body {exc}") from None


def json_response(body: Any, status: int = 200) -> Response:
    """Serialise ``body`` compactly as application/json."""
    return Response(json.dumps(body, separators=(",", ":"), ensure_ascii=False), status, mimetype="application/json")


def elapsed_ms() -> float:
    """Milliseconds since the request started (set by the app's before_request hook)."""
    return round((time.perf_counter() - g.started) * 1000, 1)
