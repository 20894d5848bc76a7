"""Tests for cds_service.fhir_client: contract 5.2 URL matching, and real HTTP against sekmet and loopback servers."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from cds_service.config import Settings
from cds_service.fhir_client import (
    Deadline,
    FhirBadResponse,
    FhirClient,
    FhirConnectionError,
    FhirError,
    FhirNotAllowed,
    FhirServerError,
    FhirTimeout,
    FhirUnauthorized,
    under_base,
)
from tests.fhir_server import (
    TEST_TOKEN,
    FhirTestServer,
    LoopbackServer,
    ScriptedHandler,
    free_port,
    load_fixture,
    with_suffix,
)

ClientFactory = Callable[..., FhirClient]
ServerFactory = Callable[[Callable[[ScriptedHandler], None]], LoopbackServer]


@pytest.fixture
def make_client() -> Iterator[ClientFactory]:
    """Build FhirClients allowed to call the given bases (Settings overrides as keywords); closed after the test."""
    clients: list[FhirClient] = []

    def build(*allowed: str, **overrides: object) -> FhirClient:
        client = FhirClient(replace(Settings(), allowed_fhir_servers=tuple(allowed), **overrides))
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


def searchset(entries: list[dict], next_url: str | None = None) -> dict:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(entries),
        "link": links,
        "entry": [{"resource": resource} for resource in entries],
    }


# Contract 5.2: which fhirServer may be contacted

ALLOWED_CASES = [
    # allowed entry, fhirServer, allowed?
    ("https://ehr.example.org/fhir/R4", "https://ehr.example.org/fhir/R4", True),
    ("https://ehr.example.org/fhir/R4", "https://ehr.example.org/fhir/R4/", True),
    ("https://ehr.example.org/fhir/R4/", "https://ehr.example.org/fhir/R4", True),
    ("https://ehr.example.org/fhir/R4", "https://ehr.example.org/fhir/R4/tenant-7", True),
    ("https://ehr.example.org/fhir/R4", "https://ehr.example.org/fhir/R4x", False),
    ("https://ehr.example.org/fhir/R4", "https://ehr.example.org/fhir/R", False),
    ("https://ehr.example.org/fhir/R4", "https://ehr.example.org/fhir", False),
    ("https://ehr.example.org", "https://ehr.example.org/any/fhir", True),
    ("https://EHR.Example.ORG/fhir", "HTTPS://ehr.example.org/fhir", True),
    ("https://ehr.example.org/fhir", "https://ehr.example.org/FHIR", False),
    ("https://ehr.example.org/fhir", "https://ehr.example.org:443/fhir", True),
    ("https://ehr.example.org:443/fhir", "https://ehr.example.org/fhir", True),
    ("http://127.0.0.1/fhir", "http://127.0.0.1:80/fhir", True),
    ("https://ehr.example.org/fhir", "https://ehr.example.org:8443/fhir", False),
    ("https://ehr.example.org:8443/fhir", "https://ehr.example.org/fhir", False),
    ("https://ehr.example.org/fhir", "http://ehr.example.org/fhir", False),
    ("https://ehr.example.org/fhir", "http://ehr.example.org:443/fhir", False),
    ("http://127.0.0.1:8080/fhir", "https://127.0.0.1:8080/fhir", False),
    ("http://127.0.0.1:8080/fhir", "http://127.0.0.1:8080/fhir", True),
    ("http://127.0.0.5:8080/fhir", "http://127.0.0.5:8080/fhir", True),
    ("http://localhost:8080/fhir", "http://localhost:8080/fhir/", True),
    ("http://[::1]:8080/fhir", "http://[::1]:8080/fhir", True),
    ("http://localhost:8080/fhir", "http://127.0.0.1:8080/fhir", False),
    ("http://127.0.0.1:8080/fhir", "http://localhost:8080/fhir", False),
    ("http://hapi:8080/fhir", "http://hapi:8080/fhir", True),
    ("http://hapi:8080/fhir", "https://hapi:8080/fhir", False),
    ("https://ehr.example.org/fhir", "https://evil.ehr.example.org/fhir", False),
    ("https://ehr.example.org/fhir", "https://ehr.example.org.evil.test/fhir", False),
    ("https://ehr.example.org/fhir", "https://user:secret@ehr.example.org/fhir", False),
    ("https://ehr.example.org/fhir", "https://ehr.example.org@evil.test/fhir", False),
    ("https://ehr.example.org/fhir", "https://ehr.example.org/fhir?_format=json", False),
    ("https://ehr.example.org/fhir", "https://ehr.example.org/fhir#x", False),
    ("https://ehr.example.org/fhir/R4", "https://ehr.example.org/fhir/R4/../admin", False),
    ("https://ehr.example.org/fhir/R4", "https://ehr.example.org/fhir/R4/%2e%2e/admin", False),
    ("https://ehr.example.org/fhir", "ftp://ehr.example.org/fhir", False),
    ("https://ehr.example.org/fhir", "https://ehr.example.org:99999/fhir", False),
    ("https://ehr.example.org/fhir", "ehr.example.org/fhir", False),
]


@pytest.mark.parametrize(("entry", "url", "expected"), ALLOWED_CASES)
def test_allowed_follows_contract_5_2(make_client: ClientFactory, entry: str, url: str, expected: bool):
    assert make_client(entry).allowed(url) is expected


def test_allowed_checks_every_entry_and_refuses_empty_values(make_client: ClientFactory):
    client = make_client("https://a.example.org/fhir", "https://b.example.org/fhir/R4")
    assert client.allowed("https://b.example.org/fhir/R4/x")
    assert not client.allowed(None)
    assert not client.allowed("")
    assert not make_client().allowed("https://a.example.org/fhir")


def test_under_base_allows_queries_below_the_base_only():
    base = "http://127.0.0.1:9/fhir/R4"
    assert under_base("http://127.0.0.1:9/fhir/R4/Procedure?encounter=e1", base)
    assert under_base("http://127.0.0.1:9/fhir/R4?_getpages=abc", base)
    assert not under_base("http://127.0.0.1:9/fhir/R4x/Procedure", base)
    assert not under_base("http://localhost:9/fhir/R4/Procedure", base)


def test_deadline_counts_down_and_never_goes_negative():
    now = [100.0]
    deadline = Deadline(2.0, clock=lambda: now[0])
    assert deadline.remaining() == 2.0
    assert not deadline.expired()
    now[0] = 101.5
    assert deadline.remaining() == 0.5
    assert deadline.elapsed() == 1.5
    now[0] = 103.0
    assert deadline.remaining() == 0.0
    assert deadline.expired()


# Against the real FHIR server


@pytest.fixture(scope="module")
def hdr(fhir_server: FhirTestServer) -> dict:
    """The HDR tandem-and-ovoid case, stored once for this module under the suffix ``-fc``."""
    bundle = with_suffix(load_fixture("hdr-tandem-ovoid.json"), "-fc")
    fhir_server.load(bundle)
    return bundle


def test_read_returns_the_resource(fhir_server: FhirTestServer, make_client: ClientFactory, hdr: dict):
    client = make_client(fhir_server.base_url)
    encounter = client.read(fhir_server.base_url, "Encounter/enc-int-hdr-fc", fhir_server.token, Deadline(5))
    assert encounter is not None
    assert (encounter["resourceType"], encounter["id"]) == ("Encounter", "enc-int-hdr-fc")


def test_read_of_a_missing_or_deleted_resource_returns_none(fhir_server: FhirTestServer, make_client: ClientFactory):
    fhir_server.load({"resourceType": "Patient", "id": "pat-deleted-fc", "gender": "other"})
    with fhir_server.session.delete(
        f"{fhir_server.base_url}/Patient/pat-deleted-fc", headers=fhir_server.auth_headers, timeout=10
    ) as response:
        assert response.status_code in (200, 204)
    client = make_client(fhir_server.base_url)
    assert client.read(fhir_server.base_url, "Patient/no-such-patient", fhir_server.token, Deadline(5)) is None
    assert client.read(fhir_server.base_url, "Patient/pat-deleted-fc", fhir_server.token, Deadline(5)) is None


def test_search_follows_every_next_page(fhir_server: FhirTestServer, make_client: ClientFactory, hdr: dict):
    charges = [
        {
            "resourceType": "ChargeItem",
            "id": f"ci-page-{n}",
            "status": "billable",
            "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "77300"}]},
            "subject": {"reference": "Patient/pat-int-1-fc"},
        }
        for n in range(5)
    ]
    fhir_server.load(charges)
    client = make_client(fhir_server.base_url)
    pages = client.search(
        fhir_server.base_url, "ChargeItem?patient=pat-int-1-fc&_count=2", fhir_server.token, Deadline(5)
    )
    ids = [entry["resource"]["id"] for page in pages for entry in page.get("entry", [])]
    assert len(pages) == 3
    assert sorted(i for i in ids if i.startswith("ci-page-")) == [f"ci-page-{n}" for n in range(5)]


def test_device_search_by_ids_is_one_request_with_the_token(delay_proxy, make_client: ClientFactory, hdr: dict):
    client = make_client(delay_proxy.base_url)
    query = "Device?_id=dev-int-tandem-fc,dev-int-ovoid-l-fc,dev-int-ovoid-r-fc"
    pages = client.search(delay_proxy.base_url, query, TEST_TOKEN, Deadline(5))
    ids = sorted(entry["resource"]["id"] for entry in pages[0]["entry"])
    assert ids == ["dev-int-ovoid-l-fc", "dev-int-ovoid-r-fc", "dev-int-tandem-fc"]
    assert delay_proxy.paths() == [query]
    assert delay_proxy.requests[0].headers["authorization"] == f"Bearer {TEST_TOKEN}"
    assert delay_proxy.requests[0].headers["accept"] == "application/fhir+json"


def test_without_or_with_a_wrong_token_the_server_refuses(fhir_server: FhirTestServer, make_client: ClientFactory):
    client = make_client(fhir_server.base_url)
    with pytest.raises(FhirUnauthorized) as missing:
        client.search(fhir_server.base_url, "Procedure?patient=pat-int-1-fc", None, Deadline(5))
    with pytest.raises(FhirUnauthorized) as wrong:
        client.read(fhir_server.base_url, "Encounter/enc-int-hdr-fc", "not-the-token", Deadline(5))
    assert missing.value.message == (
        "the FHIR server requires an access token and none was given (HTTP 401) while searching Procedure"
    )
    assert wrong.value.message == "the FHIR server refused the access token (HTTP 401) while reading Encounter"
    assert (wrong.value.status, wrong.value.resource_type) == (401, "Encounter")
    assert "not-the-token" not in str(wrong.value)


def test_slow_server_is_abandoned_at_the_deadline(delay_proxy, make_client: ClientFactory):
    delay_proxy.delay = 5.0
    client = make_client(delay_proxy.base_url)
    deadline = Deadline(0.3)
    with pytest.raises(FhirTimeout) as caught:
        client.read(delay_proxy.base_url, "Encounter/enc-int-hdr-fc", TEST_TOKEN, deadline)
    assert caught.value.message == "the FHIR server did not answer in time while reading Encounter"
    assert deadline.expired()


def test_huge_search_result_is_refused(fhir_server: FhirTestServer, make_client: ClientFactory, hdr: dict):
    client = make_client(fhir_server.base_url, fhir_max_response_bytes=2048)
    with pytest.raises(FhirBadResponse) as caught:
        client.search(
            fhir_server.base_url,
            "Device?_id=dev-int-tandem-fc,dev-afterloader-1-fc,dev-int-ovoid-l-fc,dev-int-ovoid-r-fc",
            fhir_server.token,
            Deadline(5),
        )
    assert caught.value.message == "the FHIR server's answer while searching Device is larger than 2048 bytes"


# Faults sekmet cannot produce, from small loopback servers


def test_a_dribbling_server_is_cut_off_at_the_deadline(loopback_server: ServerFactory, make_client: ClientFactory):
    body = json.dumps({"resourceType": "Encounter", "id": "e1", "status": "finished", "note": "x" * 400}).encode()
    server = loopback_server(lambda handler: handler.drip(body, chunk=4, interval=0.05))
    client = make_client(server.base_url)
    deadline = Deadline(0.4)
    with pytest.raises(FhirTimeout):
        client.read(server.base_url, "Encounter/e1", None, deadline)
    assert deadline.expired()


def test_a_body_without_length_is_capped_while_streaming(loopback_server: ServerFactory, make_client: ClientFactory):
    def respond(handler: ScriptedHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/fhir+json")
        handler.end_headers()  # HTTP/1.0 without Content-Length: the body ends when the connection closes
        handler.wfile.write(b'{"resourceType":"Bundle","type":"searchset","entry":[' + b" " * 100_000 + b"]}")

    server = loopback_server(respond)
    client = make_client(server.base_url, fhir_max_response_bytes=4096)
    with pytest.raises(FhirBadResponse) as caught:
        client.search(server.base_url, "Procedure?patient=p1", None, Deadline(5))
    assert "larger than 4096 bytes" in caught.value.message


def test_relative_next_links_are_followed_and_a_repeated_link_ends_paging(
    loopback_server: ServerFactory, make_client: ClientFactory
):
    def respond(handler: ScriptedHandler) -> None:
        if "page=2" in handler.path:
            handler.send_json(200, searchset([{"resourceType": "Procedure", "id": "p2"}], "Procedure?page=2"))
        else:
            handler.send_json(200, searchset([{"resourceType": "Procedure", "id": "p1"}], "Procedure?page=2"))

    server = loopback_server(respond)
    pages = make_client(server.base_url).search(server.base_url, "Procedure?patient=x", None, Deadline(5))
    assert [page["entry"][0]["resource"]["id"] for page in pages] == ["p1", "p2"]
    assert server.paths() == ["Procedure?patient=x", "Procedure?page=2"]


def test_an_endless_next_chain_is_an_error_not_a_hang(loopback_server: ServerFactory, make_client: ClientFactory):
    def respond(handler: ScriptedHandler) -> None:
        page = int(handler.path.rsplit("=", 1)[-1]) if "page=" in handler.path else 0
        handler.send_json(200, searchset([], f"{handler.server.owner.base_url}/Procedure?page={page + 1}"))

    server = loopback_server(respond)
    client = FhirClient(Settings(allowed_fhir_servers=(server.base_url,)), max_pages=5)
    try:
        with pytest.raises(FhirBadResponse) as caught:
            client.search(server.base_url, "Procedure?patient=x", None, Deadline(5))
    finally:
        client.close()
    assert caught.value.message == "the FHIR server's search for Procedure has more than 5 pages"
    assert len(server.requests) == 5


def test_token_never_leaves_fhir_server(loopback_server: ServerFactory, make_client: ClientFactory):
    elsewhere = loopback_server(lambda handler: handler.send_json(200, searchset([])))
    same_server_other_name = "http://localhost:{port}/fhir/Procedure?page=2"

    def respond(handler: ScriptedHandler) -> None:
        if handler.path.startswith("/fhir/Encounter"):
            handler.send_json(302, {}, headers={"Location": f"{elsewhere.base_url}/Encounter/e1"})
        elif "patient=a" in handler.path:
            handler.send_json(200, searchset([], f"{elsewhere.base_url}/Procedure?page=2"))
        else:
            port = handler.server.owner.port
            handler.send_json(200, searchset([], same_server_other_name.format(port=port)))

    server = loopback_server(respond)
    client = make_client(server.base_url, elsewhere.base_url)
    with pytest.raises(FhirBadResponse) as redirect:
        client.read(server.base_url, "Encounter/e1", "secret-token", Deadline(5))
    with pytest.raises(FhirBadResponse) as other_origin:
        client.search(server.base_url, "Procedure?patient=a", "secret-token", Deadline(5))
    with pytest.raises(FhirBadResponse) as other_name:
        client.search(server.base_url, "Procedure?patient=b", "secret-token", Deadline(5))
    assert redirect.value.message == (
        "the FHIR server answered with a redirect (HTTP 302) while reading Encounter; redirects are not followed"
    )
    assert other_origin.value.message == "the FHIR server's next-page link for Procedure points outside fhirServer"
    assert other_name.value.message == other_origin.value.message
    assert elsewhere.requests == []
    assert len(server.requests) == 3


def test_a_cookie_the_server_sets_is_never_sent_back(loopback_server: ServerFactory, make_client: ClientFactory):
    # A FHIR server's session cookie from one hook call must not ride along with the next call's token.
    def respond(handler: ScriptedHandler) -> None:
        handler.send_json(200, searchset([]), headers={"Set-Cookie": "session=from-call-1; Path=/"})

    server = loopback_server(respond)
    client = make_client(server.base_url)
    client.search(server.base_url, "Procedure?patient=a", "token-of-call-1", Deadline(5))
    client.search(server.base_url, "Procedure?patient=b", "token-of-call-2", Deadline(5))

    assert [r.headers.get("cookie") for r in server.requests] == [None, None]
    assert [r.headers.get("authorization") for r in server.requests] == [
        "Bearer token-of-call-1",
        "Bearer token-of-call-2",
    ]
    assert {r.headers.get("user-agent") for r in server.requests} == {"brachy-cds/0.1 (+CDS Hooks 2.0)"}
    assert {r.headers.get("accept") for r in server.requests} == {"application/fhir+json"}


def test_a_server_outside_the_allowed_list_is_never_contacted(
    loopback_server: ServerFactory, make_client: ClientFactory
):
    server = loopback_server(lambda handler: handler.send_json(200, searchset([])))
    client = make_client("https://ehr.example.org/fhir")
    with pytest.raises(FhirNotAllowed):
        client.search(server.base_url, "Procedure?patient=x", "secret-token", Deadline(5))
    assert server.requests == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "the FHIR server's answer for Encounter is not valid JSON"),
        (b"[1, 2]", "the FHIR server's answer for Encounter is not a FHIR resource"),
        (b'{"id": "e1"}', "the FHIR server's answer for Encounter is not a FHIR resource"),
        (
            b'{"resourceType": "OperationOutcome", "issue": []}',
            "the FHIR server answered a read of Encounter with another resource type",
        ),
        (
            b"[" * 100_000 + b"]" * 100_000,
            "the FHIR server's answer for Encounter nests arrays or objects deeper than 64 levels",
        ),
        (b'{"resourceType": "Encounter", "length": NaN}', "the FHIR server's answer for Encounter is not valid JSON"),
        (
            b'{"resourceType": "Encounter", "id": "\xff"}',
            "the FHIR server's answer for Encounter is not valid JSON (not UTF-8 text)",
        ),
    ],
    ids=["malformed", "array", "no-resource-type", "wrong-type", "deeply-nested", "nan", "not-utf-8"],
)
def test_unusable_answers_are_bad_responses(
    loopback_server: ServerFactory, make_client: ClientFactory, body: bytes, message: str
):
    server = loopback_server(lambda handler: handler.send_bytes(200, body))
    with pytest.raises(FhirBadResponse) as caught:
        make_client(server.base_url).read(server.base_url, "Encounter/e1", None, Deadline(5))
    assert caught.value.message == message


def test_a_search_answered_with_a_non_bundle_is_a_bad_response(
    loopback_server: ServerFactory, make_client: ClientFactory
):
    server = loopback_server(lambda handler: handler.send_json(200, {"resourceType": "Procedure", "id": "p1"}))
    with pytest.raises(FhirBadResponse) as caught:
        make_client(server.base_url).search(server.base_url, "Procedure?patient=x", None, Deadline(5))
    assert caught.value.message == "the FHIR server answered a search for Procedure with something other than a Bundle"


def test_a_server_error_is_retried_once(loopback_server: ServerFactory, make_client: ClientFactory):
    answers = iter([500, 200])

    def respond(handler: ScriptedHandler) -> None:
        status = next(answers)
        body = {"resourceType": "Encounter", "id": "e1", "status": "finished"} if status == 200 else {}
        handler.send_json(status, body)

    server = loopback_server(respond)
    encounter = make_client(server.base_url).read(server.base_url, "Encounter/e1", None, Deadline(5))
    assert encounter is not None and encounter["id"] == "e1"
    assert len(server.requests) == 2


@pytest.mark.parametrize("status", [503, 429])
def test_a_failing_server_gives_a_server_error_after_one_retry(
    loopback_server: ServerFactory, make_client: ClientFactory, status: int
):
    server = loopback_server(lambda handler: handler.send_json(status, {"resourceType": "OperationOutcome"}))
    with pytest.raises(FhirServerError) as caught:
        make_client(server.base_url).search(server.base_url, "Coverage?patient=x", None, Deadline(5))
    assert caught.value.message == f"the FHIR server failed (HTTP {status}) while searching Coverage"
    assert len(server.requests) == 2


@pytest.mark.parametrize("status", [400, 404])
def test_a_rejected_search_is_a_bad_response_without_retry(
    loopback_server: ServerFactory, make_client: ClientFactory, status: int
):
    server = loopback_server(lambda handler: handler.send_json(status, {"resourceType": "OperationOutcome"}))
    with pytest.raises(FhirBadResponse) as caught:
        make_client(server.base_url).search(server.base_url, "Coverage?patient=x", None, Deadline(5))
    assert caught.value.message == f"the FHIR server rejected the request (HTTP {status}) while searching Coverage"
    assert len(server.requests) == 1


def test_an_unreachable_server_is_a_connection_error(make_client: ClientFactory):
    base = f"http://127.0.0.1:{free_port()}/fhir"
    with pytest.raises(FhirConnectionError) as caught:
        make_client(base).read(base, "Encounter/e1", None, Deadline(5))
    assert caught.value.message == "the FHIR server could not be reached while reading Encounter"


def test_log_lines_carry_type_status_and_time_only(
    loopback_server: ServerFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
):
    server = loopback_server(lambda handler: handler.send_json(200, searchset([])))
    caplog.set_level(logging.INFO, logger="brachy_cds.fhir")
    make_client(server.base_url).search(server.base_url, "Procedure?patient=pat-secret-42", "tok-secret", Deadline(5))
    records = [r for r in caplog.records if r.name == "brachy_cds.fhir"]
    assert len(records) == 1
    fields = records[0].fields  # type: ignore[attr-defined]
    assert set(fields) == {"interaction", "resourceType", "status", "ms"}
    assert (fields["interaction"], fields["resourceType"], fields["status"]) == ("search", "Procedure", 200)
    rendered = caplog.text + json.dumps(fields)
    assert "pat-secret-42" not in rendered and "tok-secret" not in rendered and "127.0.0.1" not in rendered


def test_every_failure_kind_is_a_fhir_error():
    for kind in (FhirNotAllowed, FhirUnauthorized, FhirServerError, FhirTimeout, FhirBadResponse, FhirConnectionError):
        assert issubclass(kind, FhirError)
