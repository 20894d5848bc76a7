"""Parse a CDS Hooks 2.0 service request into a typed HookRequest at the edge.

CDS Hooks 2.0 "HTTP Request" (https://cds-hooks.hl7.org/2.0/#http-request): ``hook``,
``hookInstance`` and ``context`` are required; ``fhirServer`` is required when
``fhirAuthorization`` is given (invariant cds-r-1); ``prefetch`` maps template keys to a FHIR
resource, a Bundle, an OperationOutcome or null. A malformed request is a 400 whose message names
the field, never its value (values may be patient data or tokens).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cds_service.discovery import ServiceDefinition
from cds_service.errors import BadRequest

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
MAX_TEXT = 2048


@dataclass(frozen=True)
class HookRequest:
    """A validated hook call; ``access_token`` never appears in repr or logs."""

    hook: str
    hook_instance: str
    patient_id: str
    context: Mapping[str, Any]
    encounter_id: str | None = None
    user_id: str | None = None
    fhir_server: str | None = None
    access_token: str | None = field(default=None, repr=False)
    prefetch: Mapping[str, Any] | None = field(default=None, repr=False)
    """Raw prefetch values by key; a key that is absent differs from a key whose value is None."""


def parse_hook_request(body: Any, service: ServiceDefinition) -> HookRequest:
    """Validate the JSON body of ``POST /cds-services/{id}`` against CDS Hooks 2.0 and the service."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object")
    hook = body.get("hook")
    if not isinstance(hook, str) or not hook:
        raise BadRequest("'hook' is required and must be a string")
    if hook != service.hook:
        raise BadRequest(f"Service '{service.id}' answers hook '{service.hook}', not '{_clip(hook)}'")
    hook_instance = body.get("hookInstance")
    if not isinstance(hook_instance, str) or not hook_instance.strip() or len(hook_instance) > 200:
        raise BadRequest("'hookInstance' is required and must be a non-empty string of at most 200 characters")

    context = body.get("context")
    if not isinstance(context, dict):
        raise BadRequest("'context' is required and must be a JSON object")
    patient_id = _fhir_id(context, "patientId", required=True)
    encounter_id = _fhir_id(context, "encounterId", required=service.hook == "encounter-discharge")
    user_id = context.get("userId")
    if user_id is not None and (not isinstance(user_id, str) or len(user_id) > MAX_TEXT):
        raise BadRequest("'context.userId' must be a string such as 'Practitioner/123'")

    fhir_server = body.get("fhirServer")
    if fhir_server is not None:
        try:
            # urlsplit and .port raise ValueError on a malformed host or port (e.g. "http://[::1"): a 400, not a 500.
            parts = urlsplit(fhir_server) if isinstance(fhir_server, str) and len(fhir_server) <= MAX_TEXT else None
            _ = parts.port if parts is not None else None
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadRequest("'fhirServer' must be an absolute http(s) URL")
    access_token = _access_token(body.get("fhirAuthorization"), fhir_server)

    prefetch = body.get("prefetch")
    if prefetch is not None:
        if not isinstance(prefetch, dict):
            raise BadRequest("'prefetch' must be a JSON object of FHIR resources")
        for key, value in prefetch.items():
            if value is not None and not (isinstance(value, dict) and isinstance(value.get("resourceType"), str)):
                raise BadRequest(f"prefetch '{_clip(key)}' must be a FHIR resource, a Bundle or null")
    # Prefetch templates are rendered from the context: give them the logical ids, not "Patient/123".
    context = {**context, "patientId": patient_id}
    if encounter_id is not None:
        context["encounterId"] = encounter_id
    return HookRequest(
        hook=hook,
        hook_instance=hook_instance,
        patient_id=patient_id,
        context=context,
        encounter_id=encounter_id,
        user_id=user_id,
        fhir_server=fhir_server,
        access_token=access_token,
        prefetch=prefetch,
    )


def _fhir_id(context: Mapping[str, Any], name: str, *, required: bool) -> str | None:
    value = context.get(name)
    if value is None:
        if required:
            raise BadRequest(f"'context.{name}' is required")
        return None
    if isinstance(value, str) and "/" in value:
        # Some EHRs send "Patient/123"; the logical id is what the templates need.
        value = value.rsplit("/", 1)[-1]
    if not isinstance(value, str) or not FHIR_ID.match(value):
        raise BadRequest(f"'context.{name}' must be a FHIR logical id")
    return value


def _access_token(authorization: Any, fhir_server: Any) -> str | None:
    if authorization is None:
        return None
    if not isinstance(authorization, dict):
        raise BadRequest("'fhirAuthorization' must be a JSON object")
    if fhir_server is None:
        raise BadRequest("'fhirServer' is required when 'fhirAuthorization' is given")
    token = authorization.get("access_token")
    if not isinstance(token, str) or not token or len(token) > 16384:
        raise BadRequest("'fhirAuthorization.access_token' is required and must be a string")
    token_type = authorization.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise BadRequest("'fhirAuthorization.token_type' must be 'Bearer'")
    return token


def _clip(text: Any) -> str:
    """Echo at most a short, printable part of a caller's string (hook names, prefetch keys)."""
    value = str(text)
    clipped = "".join(ch for ch in value[:40] if ch.isprintable())
    return clipped + ("..." if len(value) > 40 else "")
