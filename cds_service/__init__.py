"""brachy-cds: a CDS Hooks 2.0 service that codes brachytherapy isodose planning from FHIR."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def create_app(config: Mapping[str, Any] | None = None, **overrides: Any):
    """Build the Flask application (application factory; nothing happens at import time).

    ``config`` maps ``BRACHY_CDS_*`` names to values (tests inject it; the CLI passes os.environ).
    Flask is imported here, not at module level, so the pure coding core can live in this package.
    """
    from cds_service.app import build_app

    return build_app(config, **overrides)
