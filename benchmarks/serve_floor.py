"""Run the floor app through ``brachy-cds serve`` itself, so it gets exactly the production server configuration.

``python -m benchmarks.serve_floor serve --workers N --port P`` is the service's own command line
(config checks, logging, gunicorn gthread settings) with only the app factory swapped for the floor's.
"""

from __future__ import annotations

import sys
from typing import Any

import cds_service
from benchmarks import floor_app


def _floor_factory(*_args: Any, **_kwargs: Any) -> Any:
    return floor_app.create_app()


if __name__ == "__main__":
    cds_service.create_app = _floor_factory  # type: ignore[assignment]
    from cds_service.cli import main

    sys.exit(main())
