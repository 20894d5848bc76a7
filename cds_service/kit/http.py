"""HTTP plumbing shared by the kit's commands: one session, explicit timeouts, one-line errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests

FHIR_JSON = "application/fhir+json"
TIMEOUT = (5.0, 60.0)
"""(connect, read) seconds for every request the kit sends."""


class KitError(Exception):
    """A failure the command reports in one line (and exits non-zero)."""


def new_session() -> requests.Session:
    """A session for one command run; proxies from the environment apply as for any HTTP client."""
    session = requests.Session()
    session.headers["User-Agent"] = "brachy-cds-kit"
    return session


def base_url(url: str, what: str) -> str:
    """Check that ``url`` is an absolute http(s) URL and return it without a trailing slash."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise KitError(f"{what} must be an absolute http(s) URL without query or fragment, not {url!r}")
    return url.rstrip("/")


def fhir_headers(token: str | None, *, content: bool = False) -> dict[str, str]:
    """Accept (and Content-Type) FHIR JSON, plus the bearer token when there is one."""
    headers = {"Accept": FHIR_JSON}
    if content:
        headers["Content-Type"] = FHIR_JSON
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def problem(response: requests.Response) -> str:
    """Say what a failed response said: the status and the first OperationOutcome diagnostics, if any."""
    detail = ""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        texts = [
            issue.get("diagnostics") or (issue.get("details") or {}).get("text") or issue.get("code")
            for issue in body.get("issue", [])
            if isinstance(issue, dict)
        ]
        detail = "; ".join(str(text) for text in texts if text)
    elif response.text and len(response.text) <= 200 and response.text.isprintable():
        detail = response.text
    reason = f"HTTP {response.status_code}" + (f" {response.reason}" if response.reason else "")
    return f"{reason}: {detail}" if detail else reason


def request_json(
    http: requests.Session,
    method: str,
    url: str,
    *,
    failed: str,
    not_json: str,
    unreachable: Callable[[requests.RequestException], str],
    **kwargs: Any,
) -> Any:
    """Send one request and return its JSON body; raise KitError in the caller's words unless it answers 200 JSON."""
    try:
        with http.request(method, url, timeout=TIMEOUT, **kwargs) as response:
            if response.status_code != 200:
                raise KitError(f"{failed}: {problem(response)}")
            return response.json()
    except requests.RequestException as exc:
        raise KitError(unreachable(exc)) from None
    except ValueError:
        raise KitError(not_json) from None


def same_origin(url: str, base: str) -> bool:
    """True when ``url`` has the scheme, host and port of ``base`` (paging links must not leave the server)."""
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)
