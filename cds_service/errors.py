"""A small error hierarchy with stable codes, rendered as FHIR OperationOutcomes by one handler.

Contract section 2: 400 malformed request or wrong hook, 401 bad JWT (no detail), 404 unknown
service, 412 data needed for the decision cannot be had, 413 body over the limit. No client input
ever produces a 5xx. Messages must never carry patient identifiers, tokens or JWTs.
"""

from __future__ import annotations

from typing import Any


class CdsError(Exception):
    """Base of every error the service answers with; ``message`` is safe to show the caller."""

    status = 500
    issue_code = "exception"
    code = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def operation_outcome(self) -> dict[str, Any]:
        """Render the error as a FHIR R4 OperationOutcome (CDS Hooks 3.0 ballot R3 recommends one)."""
        return {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "error",
                    "code": self.issue_code,
                    "details": {"text": self.message},
                    "diagnostics": f"brachy-cds:{self.code}",
                }
            ],
        }


class BadRequest(CdsError):
    """The request is malformed, or its hook does not match the service (400)."""

    status = 400
    issue_code = "invalid"
    code = "bad-request"


class Unauthorized(CdsError):
    """The CDS Hooks JWT is missing or invalid (401, rendered without detail)."""

    status = 401
    issue_code = "security"
    code = "unauthorized"

    def __init__(self, reason: str = "unauthorized") -> None:
        # The reason is kept for the (PHI-free) log line only; the response never shows it.
        super().__init__("unauthorized")
        self.reason = reason


class NotFound(CdsError):
    """No service with this id (404)."""

    status = 404
    issue_code = "not-found"
    code = "unknown-service"


class MethodNotAllowed(CdsError):
    """The route exists but not for this HTTP method (405)."""

    status = 405
    issue_code = "not-supported"
    code = "method-not-allowed"


class DataUnavailable(CdsError):
    """Data needed for the decision can be had neither from prefetch nor from an allowed fhirServer (412)."""

    status = 412
    issue_code = "incomplete"
    code = "data-unavailable"


class PayloadTooLarge(CdsError):
    """The request body is over BRACHY_CDS_MAX_BODY_BYTES (413)."""

    status = 413
    issue_code = "too-costly"
    code = "body-too-large"
