"""JwtVerifier against real keys, real signatures and a real loopback JWK Set server.

CDS Hooks 2.0 "Trusting CDS Clients" (S2 L973-1026), best practices J7, contract 5.6: every attack
below must end in ``Unauthorized``, with a fixed reason and no token material in it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator

import pytest

from cds_service.auth import JwtVerifier
from cds_service.config import Settings, TrustedIssuer
from cds_service.errors import Unauthorized
from cds_service.store import Store
from tests.keys import DROP, JwksServer, TestIssuer, compact

NOW = 1_750_000_000
AUD = "https://cds.example.org/cds-services/brachy-encounter-discharge"
OTHER_AUD = "https://cds.example.org/cds-services/brachy-patient-view"
EHR = "https://ehr.example.org/cds"
OTHER_EHR = "https://other-ehr.example.net"


class Clock:
    """A settable clock (seconds since the epoch), injected into the verifier and the store."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def ehr() -> TestIssuer:
    return TestIssuer(EHR, "ES384")


@pytest.fixture(scope="module")
def other_ehr() -> TestIssuer:
    return TestIssuer(OTHER_EHR, "ES384")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path, clock) -> Iterator[Store]:
    with Store(f"sqlite:///{tmp_path / 'auth.sqlite3'}", clock=clock) as db:
        yield db


@pytest.fixture
def make_verifier(store, clock) -> Iterator[Callable[..., JwtVerifier]]:
    made: list[JwtVerifier] = []

    def make(*issuers: TrustedIssuer, skew: int = 60, on: Store | None = None) -> JwtVerifier:
        settings = Settings(trusted_issuers=issuers, clock_skew_seconds=skew)
        verifier = JwtVerifier(settings, on or store, clock=clock)
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        verifier.close()


@pytest.fixture
def verifier(make_verifier, ehr, other_ehr) -> JwtVerifier:
    return make_verifier(ehr.trusted(), other_ehr.trusted())


def bearer(token: str) -> str:
    return f"Bearer {token}"


def reason_of(verifier: JwtVerifier, header: str | None, audience: str = AUD) -> str:
    with pytest.raises(Unauthorized) as caught:
        verifier.verify(header, audience)
    error = caught.value
    assert error.status == 401
    assert error.message == "unauthorized"
    if header:
        token = header.split()[-1]
        assert token not in error.reason
    return error.reason


# --- tokens that pass -------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES384", "RS384", "ES256", "RS256", "ES512", "RS512", "PS384"])
def test_valid_token_of_each_allowed_algorithm_returns_its_claims(make_verifier, alg):
    issuer = TestIssuer(EHR, alg)
    verifier = make_verifier(issuer.trusted())
    claims = issuer.claims(AUD, now=NOW, jti=f"jti-{alg}")
    token = issuer.sign(AUD, now=NOW, jti=f"jti-{alg}")

    assert verifier.verify(bearer(token), AUD) == claims


def test_aud_may_be_an_array_that_contains_the_url_called(verifier, ehr):
    token = ehr.sign([OTHER_AUD, AUD], now=NOW)
    assert verifier.verify(bearer(token), AUD)["aud"] == [OTHER_AUD, AUD]


@pytest.mark.parametrize(("aud", "audience"), [(AUD + "/", AUD), (AUD, AUD + "/"), (AUD + "/", AUD + "/")])
def test_one_trailing_slash_is_ignored_on_either_side(verifier, ehr, aud, audience):
    assert verifier.verify(bearer(ehr.sign(aud, now=NOW)), audience)["aud"] == aud


def test_bearer_scheme_is_case_insensitive(verifier, ehr):
    assert verifier.verify("bearer " + ehr.sign(AUD, now=NOW), AUD)["iss"] == EHR


def test_typ_is_compared_case_insensitively(verifier, ehr):
    assert verifier.verify(bearer(ehr.sign(AUD, now=NOW, headers={"typ": "jwt"})), AUD)["iss"] == EHR


def test_clock_skew_of_60_seconds_applies_to_exp_and_iat(verifier, ehr, clock):
    expiring = ehr.sign(AUD, now=NOW)  # exp = NOW + 300
    clock.now = NOW + 300 + 59
    assert verifier.verify(bearer(expiring), AUD)["exp"] == NOW + 300
    early = ehr.sign(AUD, now=clock.now + 59)
    assert verifier.verify(bearer(early), AUD)["iat"] == int(clock.now + 59)


def test_epic_style_nbf_in_the_past_and_extra_claims_pass(verifier, ehr):
    token = ehr.sign(AUD, now=NOW, nbf=NOW - 300, sub="epic-client-id")
    claims = verifier.verify(bearer(token), AUD)
    assert (claims["nbf"], claims["sub"]) == (NOW - 300, "epic-client-id")


def test_tenant_matches_the_trusted_issuer_entry(make_verifier, ehr):
    verifier = make_verifier(ehr.trusted(tenant="hospital-a"))
    assert verifier.verify(bearer(ehr.sign(AUD, now=NOW, tenant="hospital-a")), AUD)["tenant"] == "hospital-a"


def test_issuer_listed_once_per_tenant_selects_the_entry_by_tenant(make_verifier, ehr):
    verifier = make_verifier(ehr.trusted(tenant="hospital-a"), ehr.trusted(tenant="hospital-b"))
    assert verifier.verify(bearer(ehr.sign(AUD, now=NOW, tenant="hospital-b")), AUD)["tenant"] == "hospital-b"
    assert reason_of(verifier, bearer(ehr.sign(AUD, now=NOW, tenant="hospital-c"))) == "wrong tenant"


def test_sandbox_style_inline_keys_with_a_named_jwks_url_accept_that_jku_only(make_verifier):
    # reference/cds-hooks.md section 7: the sandbox always sends its jku; its keys are configured inline,
    # and the entry names the jwks_url so the jku can be matched without ever being fetched.
    sandbox = TestIssuer("https://sandbox.cds-hooks.org", "ES384")
    jku = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
    entry = dataclasses.replace(sandbox.trusted(), jwks_url=jku)
    verifier = make_verifier(entry)
    assert verifier.verify(bearer(sandbox.sign(AUD, now=NOW, headers={"jku": jku})), AUD)["iss"] == sandbox.iss
    other = "https://sandbox.cds-hooks.org/other.json"
    assert reason_of(verifier, bearer(sandbox.sign(AUD, now=NOW, headers={"jku": other}))) == "jku not allowed"


def test_a_token_refused_for_another_reason_does_not_burn_its_jti(verifier, ehr):
    token = ehr.sign(AUD, now=NOW)
    assert reason_of(verifier, bearer(token), OTHER_AUD) == "bad audience"
    assert verifier.verify(bearer(token), AUD)["iss"] == EHR


def test_the_same_jti_from_two_issuers_is_two_different_tokens(verifier, ehr, other_ehr):
    assert verifier.verify(bearer(ehr.sign(AUD, now=NOW, jti="shared")), AUD)["iss"] == EHR
    assert verifier.verify(bearer(other_ehr.sign(AUD, now=NOW, jti="shared")), AUD)["iss"] == OTHER_EHR


# --- attacks and malformed tokens ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing authorization"),
        ("", "missing authorization"),
        ("Basic dXNlcjpwYXNz", "not a bearer token"),
        ("Bearer", "not a bearer token"),
        ("Bearer a.b.c extra", "not a bearer token"),
        ("Bearer garbage", "malformed token"),
        ("Bearer bm90.anNvbg.c2ln", "malformed token"),
        ("Bearer " + "a" * 20_000 + ".b.c", "malformed token"),
    ],
)
def test_missing_or_malformed_authorization_is_refused(verifier, header, reason):
    assert reason_of(verifier, header) == reason


def test_alg_none_is_refused(verifier, ehr):
    token = compact({"alg": "none", "typ": "JWT", "kid": ehr.kid}, ehr.claims(AUD, now=NOW))
    assert reason_of(verifier, bearer(token)) == "alg not allowed"


def test_hs256_signed_with_the_public_key_pem_as_secret_is_refused(verifier, ehr):
    def hs256(signing_input: bytes) -> bytes:
        return hmac.new(ehr.public_pem, signing_input, hashlib.sha256).digest()

    token = compact({"alg": "HS256", "typ": "JWT", "kid": ehr.kid}, ehr.claims(AUD, now=NOW), hs256)
    assert reason_of(verifier, bearer(token)) == "alg not allowed"


def test_alg_that_does_not_fit_the_key_type_is_refused(verifier, ehr):
    header, _, signature = ehr.sign(AUD, now=NOW).split(".")
    relabelled = json.loads(base64.urlsafe_b64decode(header + "=="))
    relabelled["alg"] = "ES256"  # the key is a P-384 EC key
    token = compact(relabelled, ehr.claims(AUD, now=NOW)).rsplit(".", 1)[0] + "." + signature
    assert reason_of(verifier, bearer(token)) == "key does not match alg"


def test_rsa_alg_against_an_ec_key_is_refused(verifier, ehr):
    rsa = TestIssuer(EHR, "RS384", kid=ehr.kid)  # same iss and kid, RSA key not in the JWK Set
    assert reason_of(verifier, bearer(rsa.sign(AUD, now=NOW))) == "key does not match alg"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"aud": "https://cds.example.org/cds-services/other"}, "bad audience"),
        ({"aud": OTHER_AUD}, "bad audience"),
        ({"aud": [OTHER_AUD, "https://elsewhere.example.org/"]}, "bad audience"),
        ({"aud": AUD + "/feedback"}, "bad audience"),
        ({"aud": AUD + "x"}, "bad audience"),
        ({"aud": []}, "bad audience"),
        ({"aud": DROP}, "bad audience"),
        ({"aud": [AUD, 7]}, "bad audience"),
        ({"exp": NOW - 61}, "expired"),
        ({"exp": NOW - 60}, "expired"),
        ({"exp": DROP}, "missing exp"),
        ({"exp": str(NOW + 300)}, "missing exp"),
        ({"exp": True}, "missing exp"),
        ({"exp": 10**400}, "missing exp"),
        ({"iat": DROP}, "missing iat"),
        ({"iat": NOW + 61}, "iat in the future"),
        ({"nbf": NOW + 61}, "not yet valid"),
        ({"nbf": "soon"}, "bad nbf"),
        ({"jti": DROP}, "missing jti"),
        ({"jti": ""}, "missing jti"),
        ({"jti": 12345}, "missing jti"),
        ({"jti": "j" * 256}, "missing jti"),
        ({"iss": DROP}, "untrusted iss"),
        ({"iss": EHR + "/"}, "untrusted iss"),
    ],
    ids=lambda value: json.dumps(value, default=str)[:40] if isinstance(value, dict) else value,
)
def test_bad_claims_are_refused(verifier, ehr, claims, reason):
    overrides = dict(claims)
    aud = overrides.pop("aud", AUD)
    assert reason_of(verifier, bearer(ehr.sign(aud, now=NOW, **overrides))) == reason


def test_replayed_jti_is_refused(verifier, ehr):
    token = ehr.sign(AUD, now=NOW)
    verifier.verify(bearer(token), AUD)
    assert reason_of(verifier, bearer(token)) == "replayed jti"
    assert reason_of(verifier, bearer(ehr.sign(AUD, now=NOW + 1, jti=ehr_jti(token)))) == "replayed jti"


def ehr_jti(token: str) -> str:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=="))["jti"]


def test_replay_is_refused_by_a_second_worker_sharing_the_database(make_verifier, ehr, tmp_path, clock):
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    with Store(url, clock=clock) as first_db, Store(url, clock=clock) as second_db:
        first = make_verifier(ehr.trusted(), on=first_db)
        second = make_verifier(ehr.trusted(), on=second_db)
        token = ehr.sign(AUD, now=NOW)
        assert first.verify(bearer(token), AUD)["iss"] == EHR
        assert reason_of(second, bearer(token)) == "replayed jti"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"kid": DROP}, "missing kid"),
        ({"kid": ""}, "missing kid"),
        ({"kid": "not-in-the-jwks"}, "unknown kid"),
        ({"typ": "JWS"}, "typ is not JWT"),
        ({"typ": "at+jwt"}, "typ is not JWT"),
        ({"typ": DROP}, "typ is not JWT"),
        ({"crit": ["exp"], "exp": NOW}, "malformed token"),  # PyJWT refuses unknown critical extensions
    ],
)
def test_bad_headers_are_refused(verifier, ehr, headers, reason):
    assert reason_of(verifier, bearer(ehr.sign(AUD, now=NOW, headers=headers))) == reason


def test_critical_extension_is_refused_even_when_pyjwt_knows_it(verifier, ehr):
    from jwt.algorithms import ECAlgorithm

    header = {"alg": "ES384", "typ": "JWT", "kid": ehr.kid, "b64": True, "crit": ["b64"]}
    es384 = ECAlgorithm(ECAlgorithm.SHA384)
    token = compact(header, ehr.claims(AUD, now=NOW), lambda data: es384.sign(data, ehr.private_key))
    assert reason_of(verifier, bearer(token)) == "crit header not supported"


def test_untrusted_issuer_with_its_own_valid_key_is_refused(verifier):
    stranger = TestIssuer("https://attacker.example.com", "ES384")
    assert reason_of(verifier, bearer(stranger.sign(AUD, now=NOW))) == "untrusted iss"


def test_untrusted_issuer_claiming_a_trusted_iss_is_refused(verifier, ehr):
    impostor = TestIssuer(EHR, "ES384")  # right iss, its own key and kid
    assert reason_of(verifier, bearer(impostor.sign(AUD, now=NOW))) == "unknown kid"
    same_kid = TestIssuer(EHR, "ES384", kid=ehr.kid)
    assert reason_of(verifier, bearer(same_kid.sign(AUD, now=NOW))) == "bad signature"


def test_key_of_another_trusted_issuer_does_not_verify_for_this_iss(verifier, ehr, other_ehr):
    with_other_kid = other_ehr.sign(AUD, now=NOW, iss=EHR)
    assert reason_of(verifier, bearer(with_other_kid)) == "unknown kid"
    with_own_kid = ehr.sign(AUD, now=NOW, key=other_ehr.private_key)
    assert reason_of(verifier, bearer(with_own_kid)) == "bad signature"


def test_tampered_payload_is_refused(verifier, ehr):
    header, _, signature = ehr.sign(OTHER_AUD, now=NOW).split(".")
    forged = compact({}, ehr.claims(AUD, now=NOW)).split(".")[1]
    assert reason_of(verifier, bearer(f"{header}.{forged}.{signature}")) == "bad signature"


def test_tampered_signature_is_refused(verifier, ehr):
    header, payload, signature = ehr.sign(AUD, now=NOW).split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    assert reason_of(verifier, bearer(f"{header}.{payload}.{flipped}")) == "bad signature"


def test_deeply_nested_header_is_a_malformed_token_not_a_crash(verifier):
    header = base64.urlsafe_b64encode(b"[" * 5000).rstrip(b"=").decode()
    assert reason_of(verifier, bearer(f"{header}.e30.c2ln")) == "malformed token"


@pytest.mark.parametrize(
    ("tenant", "reason"),
    [("hospital-b", "wrong tenant"), (DROP, "wrong tenant"), (["hospital-a"], "wrong tenant")],
)
def test_wrong_or_missing_tenant_is_refused(make_verifier, ehr, tenant, reason):
    verifier = make_verifier(ehr.trusted(tenant="hospital-a"))
    assert reason_of(verifier, bearer(ehr.sign(AUD, now=NOW, tenant=tenant))) == reason


def test_jku_other_than_the_issuers_jwks_url_is_refused(make_verifier, ehr):
    with JwksServer(ehr.jwks) as server:
        verifier = make_verifier(ehr.trusted(jwks_url=server.url))
        evil = ehr.sign(AUD, now=NOW, headers={"jku": "https://attacker.example.com/jwks.json"})
        assert reason_of(verifier, bearer(evil)) == "jku not allowed"
        near_miss = ehr.sign(AUD, now=NOW, headers={"jku": server.url + "?x=1"})
        assert reason_of(verifier, bearer(near_miss)) == "jku not allowed"
        assert server.hits == 0  # refused before any key is fetched
        exact = ehr.sign(AUD, now=NOW, headers={"jku": server.url})
        assert verifier.verify(bearer(exact), AUD)["iss"] == EHR


@pytest.mark.parametrize(
    "jku",
    [
        "https://attacker.example.com/jwks.json",
        "http://ehr.example.org/jwks.json",
        "https://ehr.example.org:8443/k",
        "https://ehr.example.org/.well-known/jwks.json",
        5,
    ],
)
def test_any_jku_is_refused_for_an_inline_jwks_without_jwks_url(verifier, ehr, jku):
    assert reason_of(verifier, bearer(ehr.sign(AUD, now=NOW, headers={"jku": jku}))) == "jku not allowed"


# --- JWK Set by URL: cache and refresh -----------------------------------------------------------


def test_jwks_url_is_fetched_once_and_cached(make_verifier, ehr):
    with JwksServer(ehr.jwks) as server:
        verifier = make_verifier(ehr.trusted(jwks_url=server.url))
        for _ in range(3):
            assert verifier.verify(bearer(ehr.sign(AUD, now=NOW)), AUD)["iss"] == EHR
        assert server.hits == 1


def test_unknown_kid_refetches_at_most_once_a_minute(make_verifier, ehr, clock):
    rotated = TestIssuer(EHR, "ES384")  # the EHR's next key
    with JwksServer(ehr.jwks) as server:
        verifier = make_verifier(ehr.trusted(jwks_url=server.url))
        assert verifier.verify(bearer(ehr.sign(AUD, now=clock.now)), AUD)["iss"] == EHR
        assert server.hits == 1

        server.jwks = {"keys": [ehr.public_jwk, rotated.public_jwk]}
        clock.now = NOW + 30
        assert reason_of(verifier, bearer(rotated.sign(AUD, now=clock.now))) == "unknown kid"
        assert server.hits == 1  # the last fetch was 30 s ago

        clock.now = NOW + 60
        assert verifier.verify(bearer(rotated.sign(AUD, now=clock.now)), AUD)["iss"] == EHR
        assert server.hits == 2

        clock.now = NOW + 90
        made_up = ehr.sign(AUD, now=clock.now, headers={"kid": "made-up"})
        assert reason_of(verifier, bearer(made_up)) == "unknown kid"
        assert reason_of(verifier, bearer(made_up)) == "unknown kid"
        assert server.hits == 2

        clock.now = NOW + 121
        assert reason_of(verifier, bearer(ehr.sign(AUD, now=clock.now, headers={"kid": "x"}))) == "unknown kid"
        assert server.hits == 3


def test_removed_key_stops_verifying_after_the_hourly_refresh(make_verifier, ehr, clock):
    successor = TestIssuer(EHR, "ES384")
    with JwksServer(ehr.jwks) as server:
        verifier = make_verifier(ehr.trusted(jwks_url=server.url))
        assert verifier.verify(bearer(ehr.sign(AUD, now=clock.now)), AUD)["iss"] == EHR

        server.jwks = successor.jwks
        clock.now = NOW + 3599
        assert verifier.verify(bearer(ehr.sign(AUD, now=clock.now)), AUD)["iss"] == EHR
        assert server.hits == 1

        clock.now = NOW + 3600
        assert reason_of(verifier, bearer(ehr.sign(AUD, now=clock.now))) == "unknown kid"
        assert server.hits == 2


def test_jwks_outage_refuses_until_a_fetch_succeeds_and_then_keeps_known_keys(make_verifier, ehr, clock):
    with JwksServer(ehr.jwks) as server:
        server.status = 503
        verifier = make_verifier(ehr.trusted(jwks_url=server.url))
        assert reason_of(verifier, bearer(ehr.sign(AUD, now=clock.now))) == "jwks unavailable"
        assert reason_of(verifier, bearer(ehr.sign(AUD, now=clock.now))) == "jwks unavailable"
        assert server.hits == 1  # no hammering of a failing EHR

        server.status = 200
        clock.now = NOW + 60
        assert verifier.verify(bearer(ehr.sign(AUD, now=clock.now)), AUD)["iss"] == EHR

        server.status = 503
        clock.now = NOW + 60 + 3600  # keys are old: a refresh is tried, fails, and the known keys stay
        assert verifier.verify(bearer(ehr.sign(AUD, now=clock.now)), AUD)["iss"] == EHR
        assert server.hits == 3


@pytest.mark.parametrize(
    "body",
    [{"not": "a jwk set"}, {"keys": "nope"}, {"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}],
)
def test_a_document_that_is_not_a_usable_jwk_set_gives_no_keys(make_verifier, ehr, body):
    with JwksServer(body) as server:
        verifier = make_verifier(ehr.trusted(jwks_url=server.url))
        reason = reason_of(verifier, bearer(ehr.sign(AUD, now=NOW)))
        assert reason in ("jwks unavailable", "unknown kid")


def test_unreachable_jwks_url_is_refused_quickly(make_verifier, ehr):
    with JwksServer(ehr.jwks) as server:
        url = server.url
    verifier = make_verifier(ehr.trusted(jwks_url=url))  # the server is gone: connection refused
    assert reason_of(verifier, bearer(ehr.sign(AUD, now=NOW))) == "jwks unavailable"


def test_private_members_in_a_jwks_are_ignored(make_verifier, ehr):
    from jwt.algorithms import ECAlgorithm

    private = dict(ECAlgorithm.to_jwk(ehr.private_key, as_dict=True), kid=ehr.kid, alg="ES384")
    verifier = make_verifier(TrustedIssuer(EHR, None, {"keys": [private]}))
    assert verifier.verify(bearer(ehr.sign(AUD, now=NOW)), AUD)["iss"] == EHR


def test_rsa_key_shorter_than_2048_bits_is_refused(make_verifier, ehr):
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    weak_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the point of the test
    jwk = dict(RSAAlgorithm.to_jwk(weak_key.public_key(), as_dict=True), kid="weak", alg="RS384")
    verifier = make_verifier(TrustedIssuer(EHR, None, {"keys": [jwk]}))
    rs384 = RSAAlgorithm(RSAAlgorithm.SHA384)
    header = {"alg": "RS384", "typ": "JWT", "kid": "weak"}
    token = compact(header, ehr.claims(AUD, now=NOW), lambda data: rs384.sign(data, weak_key))
    assert reason_of(verifier, bearer(token)) == "unusable key or token"


@pytest.mark.parametrize("broken", [{"x": 5}, {"x": "AAAA", "y": "AAAA"}, {"crv": "P-384", "x": DROP}])
def test_malformed_key_in_the_jwks_is_refused_not_a_crash(make_verifier, ehr, broken):
    jwk = {**ehr.public_jwk, **broken}
    jwk = {name: value for name, value in jwk.items() if value is not DROP}
    verifier = make_verifier(TrustedIssuer(EHR, None, {"keys": [jwk]}))
    assert reason_of(verifier, bearer(ehr.sign(AUD, now=NOW))) == "unusable key or token"
