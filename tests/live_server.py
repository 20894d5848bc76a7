"""Serve a brachy-cds app on a real loopback socket, for clients that need a URL (``brachy-cds invoke``).

The Flask test client cannot be reached over HTTP; ``LiveApp`` runs Werkzeug's threaded server in a
thread on 127.0.0.1 with a free port, quietly, until ``close()``.
"""

from __future__ import annotations

import threading
from typing import Any

from flask import Flask
from werkzeug.serving import WSGIRequestHandler, make_server


class _QuietHandler(WSGIRequestHandler):
    def log(self, type: str, message: str, *args: Any) -> None:
        """Keep test output free of access lines."""


class LiveApp:
    """``LiveApp(app).url`` is the service's base URL (``http://127.0.0.1:PORT``, without /cds-services)."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
        self.port = self._server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"live-app-{self.port}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> LiveApp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
