"""Act as an EHR against a brachy-cds: ``brachy-cds invoke`` (contract section 1).

The steps an EHR takes (CDS Hooks 2.0 "Discovery", "Prefetch", "Calling a CDS Service"):
1. ``GET {url}/cds-services`` and pick the service for ``--hook``;
2. unless ``--no-prefetch``, run each of its prefetch templates against ``--fhir-server`` with the
   bearer ``--token`` (a template whose token the context lacks is left out, as CDS Hooks asks; a
   search is sent with all its pages merged into one searchset);
3. ``POST {url}/cds-services/{id}`` with ``fhirServer``, ``fhirAuthorization`` (when there is a token),
   the context and the prefetch; with ``--jwt-key`` every call carries a fresh CDS Hooks JWT whose
   ``aud`` is the URL called.
Progress and problems go to ``log`` (stderr); the caller prints the answer.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests

from cds_service.kit.http import (
    TIMEOUT,
    KitError,
    base_url,
    fhir_headers,
    new_session,
    problem,
    request_json,
    same_origin,
)
from cds_service.kit.signing import JwtSigner

TOKEN = re.compile(r"\{\{\s*([A-Za-z][A-Za-z0-9_.]*)\s*\}\}")
USER = "Practitioner/brachy-cds-invoke"
"""The ``userId`` of the simulated EHR user."""
USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}
MAX_PAGES = 20
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@dataclass
class Invocation:
    """What to send: ``url`` is the brachy-cds base URL (without ``/cds-services``)."""

    url: str
    hook: str
    patient: str
    fhir_server: str
    encounter: str | None = None
    token: str | None = None
    prefetch: bool = True
    signer: JwtSigner | None = None
    user: str = USER


@dataclass
class Answer:
    """The service's answer to the hook call."""

    service_url: str
    status: int
    text: str
    body: Any = None
    prefetch_keys: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == 200


def invoke(
    call: Invocation,
    *,
    session: requests.Session | None = None,
    log: Callable[[str], None] = lambda _line: None,
    new_uuid: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> Answer:
    """Discover, prefetch and call the hook; raise KitError when the service cannot be reached or used."""
    base = base_url(call.url, "--url")
    if base.endswith("/cds-services"):
        base = base.removesuffix("/cds-services")
        log(f"--url is the base URL without /cds-services: using {base}")
    fhir_server = base_url(call.fhir_server, "--fhir-server")
    for name, value in (("--patient", call.patient), ("--encounter", call.encounter)):
        if value is not None and not FHIR_ID.match(value):
            raise KitError(f"{name} must be a FHIR logical id (letters, digits, '-' and '.'), not {value!r}")
    owned = session is None
    http = session or new_session()
    try:
        service = discover(http, base, call.hook, call.signer, log)
        context: dict[str, Any] = {"userId": call.user, "patientId": call.patient}
        if call.encounter:
            context["encounterId"] = call.encounter
        body: dict[str, Any] = {
            "hook": call.hook,
            "hookInstance": new_uuid(),
            "fhirServer": fhir_server,
        }
        if call.token:
            body["fhirAuthorization"] = {
                "access_token": call.token,
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "patient/*.read user/*.read",
                "subject": "brachy-cds-invoke",
            }
        body["context"] = context
        keys: list[str] = []
        if call.prefetch:
            prefetch = run_prefetch(http, service.get("prefetch") or {}, context, fhir_server, call.token, log)
            body["prefetch"] = prefetch
            keys = sorted(prefetch)
        else:
            log("prefetch: none sent (--no-prefetch); the service fetches from the FHIR server")
        service_url = f"{base}/cds-services/{quote(service['id'], safe='')}"
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if call.signer:
            headers["Authorization"] = f"Bearer {call.signer.sign(service_url)}"
        try:
            with http.post(service_url, json=body, headers=headers, timeout=TIMEOUT) as response:
                answer = Answer(service_url, response.status_code, response.text, prefetch_keys=keys)
        except requests.RequestException as exc:
            raise KitError(f"cannot reach {service_url} ({exc.__class__.__name__})") from None
        if not answer.ok:
            log(f"{service['id']}: {problem(response)}")
            return answer
        try:
            answer.body = response.json()
        except ValueError:
            answer.body = None
        if isinstance(answer.body, dict) and isinstance(answer.body.get("cards"), list):
            count = len(answer.body["cards"])
            log(f"{service['id']}: HTTP 200, {count} card{'s' if count != 1 else ''}")
        else:
            log(f"{service['id']}: HTTP 200, but the body is not a CDS Hooks response with 'cards'")
        return answer
    finally:
        if owned:
            http.close()


def discover(
    http: requests.Session, base: str, hook: str, signer: JwtSigner | None, log: Callable[[str], None]
) -> dict[str, Any]:
    """``GET /cds-services`` and return the first service for ``hook``."""
    url = f"{base}/cds-services"
    headers = {"Accept": "application/json"}
    if signer:
        headers["Authorization"] = f"Bearer {signer.sign(url)}"
    body = request_json(
        http,
        "GET",
        url,
        headers=headers,
        failed=f"discovery {url} failed",
        not_json=f"discovery {url} did not answer JSON",
        unreachable=lambda exc: f"cannot reach {url} ({exc.__class__.__name__})",
    )
    services = body.get("services") if isinstance(body, dict) else None
    if not isinstance(services, list):
        raise KitError(f"discovery {url} has no 'services' list")
    for service in services:
        if isinstance(service, dict) and service.get("hook") == hook and isinstance(service.get("id"), str):
            log(f"discovery: service {service['id']} answers {hook}")
            return service
    hooks = sorted({str(s.get("hook")) for s in services if isinstance(s, dict)})
    raise KitError(f"no service at {url} answers hook {hook!r} (hooks offered: {', '.join(hooks) or 'none'})")


def render_template(query: str, context: Mapping[str, Any]) -> str | None:
    """Fill a prefetch template's tokens from the context; None when one has no value (CDS Hooks: skip it)."""
    missing = False

    def value(match: re.Match[str]) -> str:
        nonlocal missing
        token = match.group(1)
        found: Any = None
        if token.startswith("context."):
            found = context.get(token.removeprefix("context."))
        elif token in USER_TOKENS:
            user, prefix = context.get("userId"), USER_TOKENS[token] + "/"
            if isinstance(user, str) and user.startswith(prefix):
                found = user.removeprefix(prefix)
        if not isinstance(found, str) or not found:
            missing = True
            return ""
        return quote(found, safe="")

    rendered = TOKEN.sub(value, query)
    return None if missing else rendered


def run_prefetch(
    http: requests.Session,
    templates: Mapping[str, Any],
    context: Mapping[str, Any],
    fhir_server: str,
    token: str | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Run the service's prefetch templates like an EHR; a key that fails is left out (the service fetches it)."""
    prefetch: dict[str, Any] = {}
    for key, query in templates.items():
        if not isinstance(query, str):
            continue
        rendered = render_template(query, context)
        if rendered is None:
            log(f"prefetch {key}: skipped, the context lacks a token of {query}")
            continue
        try:
            value = _read(http, fhir_server, rendered, token) if "?" not in rendered else _search(
                http, fhir_server, rendered, token
            )
        except KitError as exc:
            log(f"prefetch {key}: left out ({exc})")
            continue
        prefetch[key] = value
        if value is None:
            log(f"prefetch {key}: {rendered} not found, sent as null")
        elif value.get("resourceType") == "Bundle":
            log(f"prefetch {key}: {rendered} -> {len(value.get('entry') or [])} entries")
        else:
            log(f"prefetch {key}: {rendered} -> {value.get('resourceType')}")
    return prefetch


def _read(http: requests.Session, server: str, path: str, token: str | None) -> dict[str, Any] | None:
    """Read one resource; None (JSON null: no such resource) on 404 or 410."""
    return _get(http, f"{server}/{path}", token)


def _get(http: requests.Session, url: str, token: str | None) -> dict[str, Any] | None:
    try:
        with http.get(url, headers=fhir_headers(token), timeout=TIMEOUT) as response:
            if response.status_code in (404, 410):
                return None
            if response.status_code != 200:
                raise KitError(problem(response))
            body = response.json()
    except requests.RequestException as exc:
        raise KitError(exc.__class__.__name__) from None
    except ValueError:
        raise KitError("the answer is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
        raise KitError("the answer is not a FHIR resource")
    return body


def _search(http: requests.Session, server: str, query: str, token: str | None) -> dict[str, Any]:
    """Run a search and merge every page into one searchset Bundle (no paging links left)."""
    url = f"{server}/{query}"
    entries: list[Any] = []
    total = None
    for page in range(MAX_PAGES):
        bundle = _get(http, url, token)
        if bundle is None or bundle.get("resourceType") != "Bundle":
            raise KitError("the search did not answer a Bundle")
        if page == 0:
            total = bundle.get("total")
        entries += [entry for entry in bundle.get("entry") or [] if isinstance(entry, dict)]
        links = [link.get("url") for link in bundle.get("link") or [] if link.get("relation") == "next"]
        if not links or not isinstance(links[0], str):
            merged: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
            if isinstance(total, int):
                merged["total"] = total
            if entries:
                merged["entry"] = entries
            return merged
        url = links[0] if "://" in links[0] else f"{server}/{links[0].lstrip('/')}"
        if not same_origin(url, server):
            raise KitError("a next link leaves the FHIR server")
    raise KitError(f"more than {MAX_PAGES} pages")
