"""Talk to the EHR's FHIR server: every HTTP call the service makes to FHIR goes through here.

One ``requests.Session`` (keep-alive, a small connection pool), explicit time limits from one
``Deadline`` per hook call, and one exception per failure kind (smart-on-fhir client-py's
``FHIRServer`` habit, style.md "FHIR I/O in one place"). Which servers may be called at all is
contract section 5.2 (``allowed``); the bearer token of ``fhirAuthorization`` goes only to URLs
under the request's ``fhirServer`` (CDS Hooks 2.0 F2/F3: treat it as transient, never log it).

Error messages and log lines carry a resource type, an HTTP status and timings only: never a URL
with its query values, a token or a response body (they may hold patient data).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from cds_service.config import Settings, is_loopback
from cds_service.limits import JsonRejected, parse_json

log = logging.getLogger("brachy_cds.fhir")

FHIR_JSON = "application/fhir+json"
USER_AGENT = "brachy-cds/0.1 (+CDS Hooks 2.0)"
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_PAGES = 50
"""Pages one search may follow before it is an error (an endless ``next`` chain must not hang a call)."""
RETRY_BACKOFF_SECONDS = 0.1
RETRY_MIN_REMAINING_SECONDS = 0.25
"""A retry is tried only when at least this much of the deadline is left after the back-off."""
CHUNK_BYTES = 64 * 1024
_TYPE_NAME = re.compile(r"^[A-Z][A-Za-z]{0,63}$")


class FhirError(Exception):
    """Base of every FHIR failure; ``message`` is PHI-free and safe for a 412 OperationOutcome."""

    kind = "fhir-error"

    def __init__(self, message: str, *, resource_type: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.resource_type = resource_type
        self.status = status


class FhirNotAllowed(FhirError):
    """The fhirServer is not in BRACHY_CDS_ALLOWED_FHIR_SERVERS (contract 5.2); nothing was sent."""

    kind = "not-allowed"


class FhirUnauthorized(FhirError):
    """The FHIR server answered 401 or 403: the access token is missing, expired or lacks a scope."""

    kind = "unauthorized"


class FhirServerError(FhirError):
    """The FHIR server failed (5xx) or asked us to slow down (429)."""

    kind = "server-error"


class FhirTimeout(FhirError):
    """The deadline of the hook call passed before the FHIR server answered in full."""

    kind = "timeout"


class FhirBadResponse(FhirError):
    """The answer is not usable FHIR: malformed or non-FHIR JSON, wrong resourceType, too large, a redirect."""

    kind = "bad-response"


class FhirConnectionError(FhirError):
    """The FHIR server could not be reached (DNS, refused, reset, TLS)."""

    kind = "connection"


class Deadline:
    """A point in monotonic time by which all FHIR work of one hook call must be done."""

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._start = clock()
        self._end = self._start + seconds

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self._end - self._clock())

    def expired(self) -> bool:
        """True once the deadline has passed."""
        return self._clock() >= self._end

    def elapsed(self) -> float:
        """Seconds since the deadline was set."""
        return self._clock() - self._start


@dataclass(frozen=True)
class _Answer:
    """One HTTP answer: status, parsed JSON (None for 404/410 on a read) and body size in bytes."""

    status: int
    body: dict[str, Any] | None
    size: int


@dataclass(frozen=True)
class _Base:
    """A normalised URL: lower-case scheme and host, explicit port, path without trailing slash."""

    scheme: str
    host: str
    port: int
    path: str

    def contains(self, other: _Base) -> bool:
        """True when ``other`` is this URL or below it at a ``/`` boundary (``/R4`` holds ``/R4/x``, not ``/R4x``)."""
        return (
            self.scheme == other.scheme
            and self.host == other.host
            and self.port == other.port
            and (other.path == self.path or other.path.startswith(self.path + "/"))
        )


def _normalise(url: str, *, allow_query: bool = False) -> _Base | None:
    """Normalise a URL for the contract 5.2 comparison; None when it cannot be a FHIR base URL.

    Refused: non-http(s) schemes, no host, a bad port, user info (credentials in a URL would be
    sent along), a query or fragment (unless ``allow_query``, for page links), and ``.``/``..``
    path segments (HTTP libraries collapse them, which could step outside an allowed path).
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except (ValueError, AttributeError):
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.username is not None or "@" in parts.netloc:
        return None
    if not allow_query and (parts.query or parts.fragment or url.strip().endswith(("?", "#"))):
        return None
    if any(segment in (".", "..") for segment in unquote(parts.path).split("/")):
        return None
    return _Base(scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme], parts.path.rstrip("/"))


def under_base(url: str, base: str) -> bool:
    """True when ``url`` (a request or page link, query allowed) lies under the FHIR base URL ``base``."""
    normal_base = _normalise(base)
    normal_url = _normalise(url, allow_query=True)
    return normal_base is not None and normal_url is not None and normal_base.contains(normal_url)


class FhirClient:
    """Read and search the request's FHIR server within a deadline, with one shared HTTP session.

    ``session`` may be injected (tests, proxies, custom CA bundles); otherwise one is built with a
    pool of 16 keep-alive connections. Only its ``send`` is used: its connection pools, ``verify``,
    ``cert`` and ``proxies`` apply, its default headers and cookies do not (each request carries its
    own). The session ignores environment proxies and ``.netrc`` (``trust_env = False``): a
    ``.netrc`` entry would otherwise replace or add credentials.
    """

    def __init__(
        self,
        settings: Settings,
        session: requests.Session | None = None,
        *,
        max_pages: int = MAX_PAGES,
        retry_backoff: float = RETRY_BACKOFF_SECONDS,
    ) -> None:
        self.settings = settings
        self.max_pages = max_pages
        self.retry_backoff = retry_backoff
        self.max_response_bytes = settings.fhir_max_response_bytes
        self._allowed = [base for base in (_normalise(entry) for entry in settings.allowed_fhir_servers) if base]
        self._owns_session = session is None
        self.session = session if session is not None else _new_session()

    def close(self) -> None:
        """Close the session when this client created it."""
        if self._owns_session:
            self.session.close()

    def allowed(self, fhir_server: str | None) -> bool:
        """Return True when ``fhir_server`` may be contacted (contract 5.2).

        Both URLs are normalised (lower-case scheme and host, explicit default port, no trailing
        slash); scheme, host and port must be equal and the allowed path must be the same path or a
        parent at a ``/`` boundary. Host names are compared as written (``localhost`` is not
        ``127.0.0.1``). ``http`` is accepted for loopback hosts, and for another host only when the
        allowed entry itself says ``http://``; everything else needs ``https``.
        """
        if not fhir_server:
            return False
        target = _normalise(fhir_server)
        if target is None:
            return False
        for entry in self._allowed:
            if not entry.contains(target):
                continue
            if target.scheme == "https" or is_loopback(target.host) or entry.scheme == "http":
                return True
        return False

    def read(self, base: str, path: str, token: str | None, deadline: Deadline) -> dict[str, Any] | None:
        """Read ``Type/id`` from ``base``; None when the server says 404 or 410 (not found, deleted)."""
        resource_type = _path_type(path)
        url = _join(base, path)
        answer = self._get(base, url, token, deadline, resource_type, "read", allow_missing=True)
        if answer.body is None:
            return None
        if answer.body.get("resourceType") != resource_type:
            raise FhirBadResponse(
                f"the FHIR server answered a read of {resource_type} with another resource type",
                resource_type=resource_type,
                status=answer.status,
            )
        return answer.body

    def search(self, base: str, query: str, token: str | None, deadline: Deadline) -> list[dict[str, Any]]:
        """Run the search ``Type?params`` on ``base`` and return every page's Bundle, first page first.

        ``next`` links (relative or absolute) are followed while they stay under ``base``; a link
        elsewhere is an error (the rest of the data cannot be had safely), a repeated link ends the
        paging, and more than ``max_pages`` pages or ``fhir_max_response_bytes`` in total is an error.
        """
        resource_type = _path_type(query)
        return list(self._pages(base, _join(base, query), token, deadline, resource_type, []))

    def next_pages(
        self, base: str, bundle: dict[str, Any], token: str | None, deadline: Deadline
    ) -> list[dict[str, Any]]:
        """Fetch the pages after ``bundle`` (a prefetched first page) by its ``next`` links; [] without one."""
        resource_type = _bundle_type(bundle)
        link = next_link(bundle)
        if link is None:
            return []
        seen = [url for url in (_self_link(bundle),) if url]
        first = self._page_url(base, link, resource_type)
        return list(self._pages(base, first, token, deadline, resource_type, seen, pages_before=1))

    def _pages(
        self,
        base: str,
        url: str,
        token: str | None,
        deadline: Deadline,
        resource_type: str,
        seen: list[str],
        *,
        pages_before: int = 0,
    ) -> Iterator[dict[str, Any]]:
        total_bytes = 0
        pages = pages_before
        visited = {_canonical(u) for u in seen}
        next_url: str | None = url
        while next_url is not None:
            if _canonical(next_url) in visited:
                log.warning("fhir paging loop", extra={"fields": {"resourceType": resource_type, "pages": pages}})
                return
            if pages >= self.max_pages:
                raise FhirBadResponse(
                    f"the FHIR server's search for {resource_type} has more than {self.max_pages} pages",
                    resource_type=resource_type,
                )
            visited.add(_canonical(next_url))
            interaction = "search" if pages == 0 else "page"
            answer = self._get(base, next_url, token, deadline, resource_type, interaction)
            bundle = answer.body
            if bundle is None or bundle.get("resourceType") != "Bundle":
                raise FhirBadResponse(
                    f"the FHIR server answered a search for {resource_type} with something other than a Bundle",
                    resource_type=resource_type,
                    status=answer.status,
                )
            total_bytes += answer.size
            if total_bytes > self.max_response_bytes:
                raise FhirBadResponse(
                    f"the FHIR server's search for {resource_type} is larger than {self.max_response_bytes} bytes",
                    resource_type=resource_type,
                )
            pages += 1
            yield bundle
            link = next_link(bundle)
            next_url = self._page_url(base, link, resource_type) if link else None

    def _page_url(self, base: str, link: str, resource_type: str) -> str:
        url = urljoin(base.rstrip("/") + "/", link)
        if not under_base(url, base):
            raise FhirBadResponse(
                f"the FHIR server's next-page link for {resource_type} points outside fhirServer",
                resource_type=resource_type,
            )
        return url

    def _get(
        self,
        base: str,
        url: str,
        token: str | None,
        deadline: Deadline,
        resource_type: str,
        interaction: str,
        *,
        allow_missing: bool = False,
    ) -> _Answer:
        """GET ``url`` once, retrying once on a connection error, 5xx or 429 when the deadline leaves room."""
        if not self.allowed(base) or not under_base(url, base):
            raise FhirNotAllowed(
                f"fhirServer is not an allowed FHIR server; {resource_type} was not requested",
                resource_type=resource_type,
            )
        try:
            return self._get_once(url, token, deadline, resource_type, interaction, allow_missing)
        except (FhirConnectionError, FhirServerError):
            if deadline.remaining() < self.retry_backoff + RETRY_MIN_REMAINING_SECONDS:
                raise
            time.sleep(self.retry_backoff)
            return self._get_once(url, token, deadline, resource_type, interaction, allow_missing)

    def _get_once(
        self,
        url: str,
        token: str | None,
        deadline: Deadline,
        resource_type: str,
        interaction: str,
        allow_missing: bool,
    ) -> _Answer:
        where = f"{'reading' if interaction == 'read' else 'searching'} {resource_type}"
        remaining = deadline.remaining()
        if remaining <= 0:
            raise FhirTimeout(f"the deadline passed before {where}", resource_type=resource_type)
        headers = {"Accept": FHIR_JSON, "User-Agent": USER_AGENT}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        started = time.monotonic()
        status: int | None = None
        try:
            # A prepared request sent as is: no session headers, cookies or environment merged in (the
            # merging cost 0.3-0.4 ms of CPU a request, docs/performance.md), and no cookie a FHIR server
            # set during one hook call is ever sent with another call's token.
            prepared = requests.Request("GET", url, headers=headers).prepare()
            response = self.session.send(prepared, timeout=(remaining, remaining), allow_redirects=False, stream=True)
        except requests.exceptions.Timeout:
            self._log(interaction, resource_type, None, started, "timeout")
            raise FhirTimeout(
                f"the FHIR server did not answer in time while {where}", resource_type=resource_type
            ) from None
        except requests.exceptions.RequestException:
            self._log(interaction, resource_type, None, started, "connection")
            raise FhirConnectionError(
                f"the FHIR server could not be reached while {where}", resource_type=resource_type
            ) from None
        try:
            status = response.status_code
            _check_status(status, resource_type, where, token, allow_missing)
            if status in (404, 410):
                self._log(interaction, resource_type, status, started)
                return _Answer(status, None, 0)
            raw = self._read_body(response, deadline, resource_type, where)
        except FhirError as exc:
            self._log(interaction, resource_type, status, started, exc.kind)
            raise
        finally:
            response.close()
        try:
            body = _parse_json(raw, resource_type, status, self.settings.max_json_depth)
        except FhirError as exc:
            self._log(interaction, resource_type, status, started, exc.kind)
            raise
        self._log(interaction, resource_type, status, started)
        return _Answer(status, body, len(raw))

    def _read_body(self, response: requests.Response, deadline: Deadline, resource_type: str, where: str) -> bytes:
        """Read the body in chunks, holding it to the byte cap and to the deadline (a dribbling server is cut off)."""
        limit = self.max_response_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise FhirBadResponse(
                f"the FHIR server's answer while {where} is larger than {limit} bytes", resource_type=resource_type
            )
        chunks: list[bytes] = []
        size = 0
        raw = response.raw
        try:
            while True:
                remaining = deadline.remaining()
                if remaining <= 0:
                    raise FhirTimeout(
                        f"the FHIR server did not answer in time while {where}", resource_type=resource_type
                    )
                _set_read_timeout(raw, remaining)
                chunk = raw.read1(CHUNK_BYTES)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise FhirBadResponse(
                        f"the FHIR server's answer while {where} is larger than {limit} bytes",
                        resource_type=resource_type,
                    )
                chunks.append(chunk)
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError):
            raise FhirTimeout(
                f"the FHIR server did not answer in time while {where}", resource_type=resource_type
            ) from None
        except (urllib3.exceptions.HTTPError, OSError):
            raise FhirConnectionError(
                f"the connection to the FHIR server broke while {where}", resource_type=resource_type
            ) from None
        return b"".join(chunks)

    def _log(
        self, interaction: str, resource_type: str, status: int | None, started: float, error: str | None = None
    ) -> None:
        fields: dict[str, Any] = {
            "interaction": interaction,
            "resourceType": resource_type,
            "status": status,
            "ms": round((time.monotonic() - started) * 1000, 1),
        }
        if error:
            fields["error"] = error
        log.log(logging.WARNING if error else logging.INFO, "fhir request", extra={"fields": fields})


def _new_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=16, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _check_status(status: int, resource_type: str, where: str, token: str | None, allow_missing: bool) -> None:
    if 200 <= status < 300:
        if status != 200:
            raise FhirBadResponse(
                f"the FHIR server answered HTTP {status} without a resource while {where}",
                resource_type=resource_type,
                status=status,
            )
        return
    if status in (401, 403):
        reason = "refused the access token" if token else "requires an access token and none was given"
        raise FhirUnauthorized(
            f"the FHIR server {reason} (HTTP {status}) while {where}", resource_type=resource_type, status=status
        )
    if status in (404, 410) and allow_missing:
        return
    if status == 429 or status >= 500:
        raise FhirServerError(
            f"the FHIR server failed (HTTP {status}) while {where}", resource_type=resource_type, status=status
        )
    if 300 <= status < 400:
        raise FhirBadResponse(
            f"the FHIR server answered with a redirect (HTTP {status}) while {where}; redirects are not followed",
            resource_type=resource_type,
            status=status,
        )
    raise FhirBadResponse(
        f"the FHIR server rejected the request (HTTP {status}) while {where}",
        resource_type=resource_type,
        status=status,
    )


def _parse_json(raw: bytes, resource_type: str, status: int, max_depth: int) -> dict[str, Any]:
    try:
        body = parse_json(raw, max_depth)
    except JsonRejected as exc:
        raise FhirBadResponse(
            f"the FHIR server's answer for {resource_type} {exc}",
            resource_type=resource_type,
            status=status,
        ) from None
    if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
        raise FhirBadResponse(
            f"the FHIR server's answer for {resource_type} is not a FHIR resource",
            resource_type=resource_type,
            status=status,
        )
    return body


def _set_read_timeout(raw: Any, seconds: float) -> None:
    """Shorten the socket timeout of a streamed response to what is left of the deadline.

    urllib3 sets the read timeout once per request; a server that sends a byte now and then would
    keep each read alive. The socket is the one under the response's file object (http.client
    detaches it from the connection when the server will close), else the connection's.
    """
    reader = getattr(getattr(raw, "_fp", None), "fp", None)
    sock = getattr(getattr(reader, "raw", None), "_sock", None)
    if sock is None:
        sock = getattr(getattr(raw, "connection", None), "sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.001))


def _join(base: str, relative: str) -> str:
    return base.rstrip("/") + "/" + relative.lstrip("/")


def _path_type(path: str) -> str:
    resource_type = path.lstrip("/").split("?", 1)[0].split("/", 1)[0]
    if not _TYPE_NAME.match(resource_type):
        raise ValueError("a FHIR query must start with a resource type")
    return resource_type


def _bundle_type(bundle: dict[str, Any]) -> str:
    """The resource type a searchset Bundle is about, from its first entry or its self link ('Bundle' if unknown)."""
    link = _self_link(bundle)
    if link:
        segment = urlsplit(link).path.rstrip("/").rsplit("/", 1)[-1]
        if _TYPE_NAME.match(segment):
            return segment
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str):
            if _TYPE_NAME.match(resource["resourceType"]):
                return resource["resourceType"]
    return "Bundle"


def _link(bundle: dict[str, Any], relation: str) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == relation:
            url = link.get("url")
            return url if isinstance(url, str) and url.strip() else None
    return None


def next_link(bundle: dict[str, Any]) -> str | None:
    """Return a Bundle's ``next`` link as written (relative or absolute), or None."""
    return _link(bundle, "next")


def _self_link(bundle: dict[str, Any]) -> str | None:
    return _link(bundle, "self")


def _canonical(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower(), 0)
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{port}{parts.path}?{parts.query}"
