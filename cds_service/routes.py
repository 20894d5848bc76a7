"""HTTP routes: discovery, the hook call and feedback (CDS Hooks 2.0), each a thin view.

Discovery and dispatch read the same registry (``discovery.SERVICES``), so they cannot drift apart.
A trailing slash on ``/cds-services/`` works too (contract 5.5: the sandbox concatenates URLs).
"""

from __future__ import annotations

import json
import time
from typing import Any

from flask import Blueprint, Response, current_app, g, request

from cds_service.discovery import SERVICES, ServiceDefinition, find_service
from cds_service.errors import BadRequest, NotFound
from cds_service.feedback import parse_feedback

bp = Blueprint("cds", __name__)


@bp.get("/cds-services")
@bp.get("/cds-services/")
def discovery() -> Response:
    """List the services (CDS Hooks 2.0 "Discovery")."""
    return json_response({"services": [service.discovery_entry() for service in SERVICES]})


@bp.post("/cds-services/<service_id>")
@bp.post("/cds-services/<service_id>/")
def call_service(service_id: str) -> Response:
    """Answer a hook call with cards (CDS Hooks 2.0 "Calling a CDS Service")."""
    service = _service(service_id)
    outcome = current_app.extensions["brachy_cds"].handler.handle(service, read_json())
    g.log_fields.update(
        hookInstance=outcome.hook_instance,
        cards=len(outcome.body["cards"]),
        topics=outcome.topics,
        encounters=outcome.encounters,
        fhirFetches=outcome.fetches,
    )
    return json_response(outcome.body)


@bp.post("/cds-services/<service_id>/feedback")
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


def read_json() -> Any:
    """Parse the request body as JSON, with a clear 400 for anything else."""
    raw = request.get_data(cache=False)
    if not raw:
        raise BadRequest("The request body is empty; a JSON object is required")
    try:
        return json.loads(raw)
    except RecursionError:
        raise BadRequest("The request body nests JSON too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The request body is not valid JSON") from None


def json_response(body: Any, status: int = 200) -> Response:
    """Serialise ``body`` compactly as application/json."""
    return Response(json.dumps(body, separators=(",", ":"), ensure_ascii=False), status, mimetype="application/json")


def elapsed_ms() -> float:
    """Milliseconds since the request started (set by the app's before_request hook)."""
    return round((time.perf_counter() - g.started) * 1000, 1)
