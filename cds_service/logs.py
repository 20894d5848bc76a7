"""Structured JSON logs, one object per line, keyed by hookInstance and service id.

Never log prefetch bodies, patient identifiers, names, access tokens or JWTs (style.md; CDS Hooks
F3 "treat access_token as transient, never log it"). Callers pass only PHI-free fields.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object; extra fields given with ``extra={"fields": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type only: messages and tracebacks may carry request data.
            entry["exception"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: str = "INFO") -> None:
    """Send the ``brachy_cds`` loggers to stderr as JSON lines (idempotent)."""
    logger = logging.getLogger("brachy_cds")
    logger.setLevel(level)
    if not any(getattr(h, "_brachy_cds", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._brachy_cds = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = True
