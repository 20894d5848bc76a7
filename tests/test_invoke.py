"""``brachy-cds invoke``: an EHR simulator against a real brachy-cds over HTTP (contract section 1).

End to end: the samples are loaded into the real test FHIR server, brachy-cds runs on a loopback
socket allowed to call that server back, and ``invoke`` fires the hooks for every sample, with and
without prefetch, with ``--json`` and for a person. The request ``invoke`` sends (context, prefetch,
fhirAuthorization, JWT) is checked on a scripted loopback server that records it.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import jwt
import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask

from cds_service.cli import main
from cds_service.kit.samples import SampleInfo, catalogue, load_samples, site_table_path
from cds_service.kit.show import render
from cds_service.kit.signing import JwtSigner, jwk_thumbprint
from tests.fhir_server import FhirTestServer, LoopbackServer, ScriptedHandler, free_port
from tests.live_server import LiveApp
from tests.sample_cards import promised_cards

SAMPLES = catalogue()
REPO = Path(__file__).resolve().parents[1]
CANONICAL = SAMPLES[0]


@pytest.fixture(scope="module")
def loaded(fhir_server: FhirTestServer) -> FhirTestServer:
    """The test FHIR server with the samples in it."""
    load_samples(fhir_server.base_url, fhir_server.token)
    return fhir_server


@pytest.fixture
def service(make_app: Callable[..., Flask], loaded: FhirTestServer) -> Iterator[LiveApp]:
    """brachy-cds on a loopback socket, allowed to call the test FHIR server, with the samples' site table."""
    app = make_app(
        {
            "BRACHY_CDS_ALLOWED_FHIR_SERVERS": loaded.base_url,
            "BRACHY_CDS_SITES": str(site_table_path()),
            "BRACHY_CDS_LOOKBACK_DAYS": "3650",
        }
    )
    with LiveApp(app) as live:
        yield live


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["invoke", *args])


def sample_args(
    service: LiveApp, server: FhirTestServer, info: SampleInfo, hook: str = "encounter-discharge"
) -> list[str]:
    args = ["--url", service.url, "--hook", hook, "--patient", info.patient]
    if hook == "encounter-discharge":
        args += ["--encounter", info.encounter]
    return [*args, "--fhir-server", server.base_url, "--token", server.token]


@pytest.mark.parametrize("prefetch", [True, False], ids=["prefetch", "no-prefetch"])
@pytest.mark.parametrize("info", SAMPLES, ids=lambda info: info.name)
def test_every_sample_prints_the_cards_its_readme_row_promises(
    info: SampleInfo, prefetch: bool, service: LiveApp, loaded: FhirTestServer
):
    args = sample_args(service, loaded, info) + ([] if prefetch else ["--no-prefetch"])

    as_json = run(*args, "--json")
    assert as_json.exit_code == 0, as_json.output
    body = json.loads(as_json.stdout)  # stdout is the service's JSON and nothing else
    cards = promised_cards(info, body)
    assert ("prefetch encounter:" in as_json.stderr) is prefetch
    assert ("--no-prefetch" in as_json.stderr) is not prefetch

    printed = run(*args)
    assert printed.exit_code == 0, printed.output
    assert printed.stdout == click.unstyle(render(body))
    for card in cards:
        assert f"[{card['indicator'].upper()}] {card['summary']}" in printed.stdout
    for want in info.expect["cards"]:
        for line in want["charges"]:
            for charge in line:
                assert f"create ChargeItem {charge}, quantity 1, on {info.date}, Encounter/{info.encounter}" in (
                    printed.stdout
                )
        for target in want.get("deletes", []):
            assert f"delete {target}" in printed.stdout
    if not cards:
        assert printed.stdout == "No cards: nothing to suggest for this patient or encounter.\n"


@pytest.mark.parametrize("info", SAMPLES, ids=lambda info: info.name)
def test_patient_view_without_an_encounter_finds_each_sample(
    info: SampleInfo, service: LiveApp, loaded: FhirTestServer
):
    result = run(*sample_args(service, loaded, info, hook="patient-view"), "--json")
    assert result.exit_code == 0, result.output
    promised_cards(info, json.loads(result.stdout))
    assert "brachytherapy-planning-review" in result.stderr


def test_the_canonical_card_as_a_person_reads_it(service: LiveApp, loaded: FhirTestServer):
    result = run(*sample_args(service, loaded, CANONICAL))
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "[INFO] Bill 77317-26: intermediate brachytherapy isodose plan, 3 channels on 2026-10-14"
    assert lines[1] == "    topic charge-suggestion, source brachy-cds"
    assert "    **3 afterloading channels** counted from 3 linked applicators" in result.stdout
    assert "    Suggestions (at-most-one):" in lines
    assert "      * Add charge 77317-26 [recommended]" in lines
    assert (
        "          create ChargeItem 77317-26, quantity 1, on 2026-10-14, Encounter/bcds-cervix-hdr-enc, "
        "for Procedure/bcds-cervix-hdr-brachy"
    ) in lines
    assert "[INFO] Payer Medicare: no prior authorisation found for planning; check NCCI and MUE edits" in lines


def test_the_console_script_keeps_stdout_to_the_json_response(service: LiveApp, loaded: FhirTestServer):
    script = Path(sys.executable).with_name("brachy-cds")
    completed = subprocess.run(
        [str(script), "invoke", *sample_args(service, loaded, CANONICAL), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.endswith("}\n") and completed.stdout.count("\n") == 1
    promised_cards(CANONICAL, json.loads(completed.stdout))
    assert "discovery: service brachytherapy-planning-charge answers encounter-discharge" in completed.stderr


def test_a_service_error_exits_non_zero_with_the_outcome_on_stderr(
    make_app: Callable[..., Flask], loaded: FhirTestServer
):
    # The service may not call this FHIR server back and gets no prefetch: 412.
    with LiveApp(make_app()) as live:
        result = run(*sample_args(live, loaded, CANONICAL), "--no-prefetch", "--json")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "HTTP 412" in result.stderr and '"resourceType":"OperationOutcome"' in result.stderr


def test_an_unknown_hook_or_an_unreachable_service_exits_non_zero(service: LiveApp, loaded: FhirTestServer):
    unknown = run("--url", service.url, "--hook", "order-sign", "--patient", "p", "--fhir-server", loaded.base_url)
    assert unknown.exit_code == 1
    assert "no service at" in unknown.output and "encounter-discharge, patient-view" in unknown.output

    gone = run("--url", f"http://127.0.0.1:{free_port()}", "--hook", "patient-view", "--patient", "p",
               "--fhir-server", loaded.base_url)
    assert gone.exit_code == 1
    assert gone.output.startswith("Error: cannot reach http://127.0.0.1:")


def test_jwt_key_and_iss_go_together(tmp_path: Path):
    result = run("--url", "http://127.0.0.1:1", "--hook", "patient-view", "--patient", "p",
                 "--fhir-server", "http://127.0.0.1:2/fhir", "--jwt-key", str(tmp_path / "k.pem"))
    assert result.exit_code == 2
    assert "--jwt-key and --iss go together" in result.output


# The request invoke sends, recorded by a scripted stand-in for brachy-cds.


class FakeService:
    """A loopback server answering like brachy-cds: discovery with the given templates, then empty cards."""

    def __init__(self, prefetch: dict[str, str], status: int = 200) -> None:
        self.prefetch = prefetch
        self.status = status
        self.calls: list[tuple[str, str, dict[str, str], Any]] = []
        self.server = LoopbackServer(self.respond)
        self.url = self.server.origin

    def respond(self, handler: ScriptedHandler) -> None:
        body = json.loads(handler.body() or b"null") if handler.command == "POST" else None
        self.calls.append((handler.command, handler.path, {k.lower(): v for k, v in handler.headers.items()}, body))
        if handler.command == "GET":
            services = [
                {"hook": "patient-view", "id": "review", "title": "t", "description": "d", "prefetch": self.prefetch},
                {"hook": "encounter-discharge", "id": "charge", "title": "t", "description": "d"},
            ]
            handler.send_json(200, {"services": services})
        else:
            handler.send_json(self.status, {"cards": []})

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def fake_service() -> Iterator[Callable[..., FakeService]]:
    made: list[FakeService] = []

    def make(prefetch: dict[str, str], status: int = 200) -> FakeService:
        made.append(FakeService(prefetch, status))
        return made[-1]

    yield make
    for fake in made:
        fake.close()


def test_the_hook_call_carries_context_fhir_server_authorization_and_filled_templates(
    fake_service: Callable[..., FakeService], loaded: FhirTestServer
):
    fake = fake_service(
        {
            "patient": "Patient/{{context.patientId}}",
            "procedures": "Procedure?patient={{context.patientId}}",
            "encounter-procedures": "Procedure?encounter={{context.encounterId}}",
            "user": "Practitioner/{{userPractitionerId}}",
            "missing": "Patient/does-not-exist-{{context.patientId}}",
        }
    )
    result = run("--url", fake.url + "/", "--hook", "patient-view", "--patient", CANONICAL.patient,
                 "--fhir-server", loaded.base_url + "/", "--token", loaded.token)
    assert result.exit_code == 0, result.output
    (get, post) = fake.calls
    assert get[:2] == ("GET", "/cds-services")
    assert post[:2] == ("POST", "/cds-services/review")
    body = post[3]
    assert body["hook"] == "patient-view" and body["hookInstance"]
    assert body["fhirServer"] == loaded.base_url
    assert body["fhirAuthorization"]["access_token"] == loaded.token
    assert body["fhirAuthorization"]["token_type"] == "Bearer"
    assert body["context"] == {"userId": "Practitioner/brachy-cds-invoke", "patientId": CANONICAL.patient}
    prefetch = body["prefetch"]
    # No encounterId in the context: that template is left out (CDS Hooks: never send an unfilled query).
    assert sorted(prefetch) == ["missing", "patient", "procedures", "user"]
    assert "prefetch encounter-procedures: skipped" in result.stderr
    assert prefetch["patient"]["id"] == CANONICAL.patient
    assert prefetch["missing"] is None and prefetch["user"] is None
    procedure_ids = sorted(e["resource"]["id"] for e in prefetch["procedures"]["entry"])
    assert procedure_ids == sorted(
        r["id"] for r in (e["resource"] for e in CANONICAL.bundle()["entry"]) if r["resourceType"] == "Procedure"
    )
    assert "link" not in prefetch["procedures"]
    assert "authorization" not in get[2] and "authorization" not in post[2]


def test_a_prefetch_search_is_sent_with_all_its_pages(fake_service: Callable[..., FakeService], loaded: FhirTestServer):
    fake = fake_service({"devices": "Device?_count=2&_id=" + ",".join(f"{CANONICAL.patient}-{s}" for s in (
        "tandem", "ovoid-left", "ovoid-right"))})
    result = run("--url", fake.url, "--hook", "patient-view", "--patient", CANONICAL.patient,
                 "--fhir-server", loaded.base_url, "--token", loaded.token)
    assert result.exit_code == 0, result.output
    devices = fake.calls[1][3]["prefetch"]["devices"]
    assert len(devices["entry"]) == 3 and "link" not in devices


def test_without_token_there_is_no_fhir_authorization_and_with_no_prefetch_no_prefetch(
    fake_service: Callable[..., FakeService], open_fhir_server: FhirTestServer
):
    fake = fake_service({"patient": "Patient/{{context.patientId}}"})
    result = run("--url", fake.url, "--hook", "encounter-discharge", "--patient", "p1", "--encounter", "e1",
                 "--fhir-server", open_fhir_server.base_url, "--no-prefetch")
    assert result.exit_code == 0, result.output
    body = fake.calls[1][3]
    assert "fhirAuthorization" not in body and "prefetch" not in body
    assert body["context"]["encounterId"] == "e1"
    assert fake.calls[1][1] == "/cds-services/charge"


def test_exit_code_follows_the_status_of_the_hook_call(fake_service: Callable[..., FakeService]):
    fake = fake_service({}, status=503)
    result = run("--url", fake.url, "--hook", "patient-view", "--patient", "p", "--fhir-server",
                 "http://127.0.0.1:9/fhir", "--json")
    assert result.exit_code == 1 and result.stdout == ""


# JWTs


def write_key(path: Path, key: Any) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def b64json(part: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


@pytest.mark.parametrize(
    ("key", "alg"),
    [(lambda: ec.generate_private_key(ec.SECP384R1()), "ES384"),
     (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS384")],
    ids=["ec-p384", "rsa-2048"],
)
def test_every_call_carries_a_fresh_jwt_for_the_url_called(
    key: Callable[[], Any], alg: str, tmp_path: Path, fake_service: Callable[..., FakeService]
):
    private = key()
    pem = write_key(tmp_path / "ehr.pem", private)
    signer = JwtSigner(private, "https://ehr.example.org")
    fake = fake_service({})
    result = run("--url", fake.url, "--hook", "patient-view", "--patient", "p", "--fhir-server",
                 "http://127.0.0.1:9/fhir", "--jwt-key", str(pem), "--iss", "https://ehr.example.org")
    assert result.exit_code == 0, result.output
    tokens = []
    for _method, path, headers, _body in fake.calls:
        scheme, token = headers["authorization"].split(" ")
        assert scheme == "Bearer"
        header = b64json(token.split(".")[0])
        assert header == {"alg": alg, "kid": signer.kid, "typ": "JWT"}
        claims = jwt.decode(token, private.public_key(), algorithms=[alg], audience=fake.url + path)
        assert claims["iss"] == "https://ehr.example.org"
        assert claims["exp"] - claims["iat"] == 300
        tokens.append(claims)
    assert [c["aud"] for c in tokens] == [f"{fake.url}/cds-services", f"{fake.url}/cds-services/review"]
    assert tokens[0]["jti"] != tokens[1]["jti"]
    assert f"signing CDS Hooks JWTs: {alg}, kid {signer.kid}" in result.stderr


def test_a_service_that_requires_jwts_accepts_invoke_signed_with_a_trusted_key(
    tmp_path: Path, make_app: Callable[..., Flask], loaded: FhirTestServer
):
    private = ec.generate_private_key(ec.SECP384R1())
    pem = write_key(tmp_path / "ehr.pem", private)
    signer = JwtSigner(private, "https://ehr.example.org")
    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps([{"iss": "https://ehr.example.org", "jwks": signer.public_jwks}]))
    app = make_app(
        {
            "BRACHY_CDS_AUTH": "required",
            "BRACHY_CDS_TRUSTED_ISSUERS": str(issuers),
            "BRACHY_CDS_ALLOWED_FHIR_SERVERS": loaded.base_url,
        }
    )
    with LiveApp(app) as live:
        signed = run(*sample_args(live, loaded, CANONICAL), "--jwt-key", str(pem), "--iss", "https://ehr.example.org",
                     "--json")
        unsigned = run(*sample_args(live, loaded, CANONICAL), "--json")
    assert signed.exit_code == 0, signed.output
    promised_cards(CANONICAL, json.loads(signed.stdout))
    assert unsigned.exit_code == 1 and "HTTP 401" in unsigned.output


def test_the_kid_is_the_rfc_7638_thumbprint():
    # RFC 7638 section 3.1: the example RSA key and its thumbprint.
    jwk = {
        "kty": "RSA",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWK"
            "RXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMic"
            "AtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3"
            "XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
        ),
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_an_unusable_key_file_is_a_one_line_error(tmp_path: Path):
    bad = tmp_path / "not-a-key.pem"
    bad.write_text("hello")
    small = write_key(tmp_path / "small.pem", rsa.generate_private_key(public_exponent=65537, key_size=1024))  # noqa: S505
    secp256k1 = write_key(tmp_path / "k1.pem", ec.generate_private_key(ec.SECP256K1()))
    common = ["--url", "http://127.0.0.1:1", "--hook", "patient-view", "--patient", "p",
              "--fhir-server", "http://127.0.0.1:2/fhir", "--iss", "https://ehr.example.org"]
    for path, message in ((bad, "is not a PEM private key"), (small, "at least 2048 bits"),
                          (secp256k1, "is not usable"), (tmp_path / "absent.pem", "cannot read")):
        result = run(*common, "--jwt-key", str(path))
        assert result.exit_code == 1, path
        assert message in result.output and "Traceback" not in result.output


def test_a_url_given_with_cds_services_is_taken_as_its_base(fake_service: Callable[..., FakeService]):
    fake = fake_service({})
    result = run("--url", f"{fake.url}/cds-services/", "--hook", "patient-view", "--patient", "p",
                 "--fhir-server", "http://127.0.0.1:9/fhir")
    assert result.exit_code == 0, result.output
    assert [call[1] for call in fake.calls] == ["/cds-services", "/cds-services/review"]
    assert f"using {fake.url}" in result.stderr
