"""load_settings and check_bind: every BRACHY_CDS_* variable, its default, good values and bad ones.

Contract section 1: a bad value stops start-up with a one-line message naming the variable; the
site table (5.1) and the trusted-issuer file name the file and the entry.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cds_service.config import (
    ConfigError,
    Settings,
    SiteEntry,
    TrustedIssuer,
    check_bind,
    load_settings,
    setting_names,
)

ALL_INTERFACES = "0.0.0.0"  # noqa: S104 (check_bind is about this address)
JWKS = {"keys": [{"kty": "EC", "crv": "P-384", "kid": "k1", "x": "AAAA", "y": "BBBB"}]}


def config_error(environ: dict[str, str]) -> str:
    """Load ``environ``, expect a ConfigError and return its message after checking it is one line."""
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message, message
    return message


# Defaults


def test_defaults_without_any_variable():
    settings = load_settings({})
    assert settings == Settings()
    assert settings.auth == "required"
    assert settings.trusted_issuers == ()
    assert settings.public_url is None
    assert settings.allowed_fhir_servers == ()
    assert settings.max_body_bytes == 5_242_880
    assert settings.lookback_days == 30
    assert settings.sites == ()
    assert settings.database_url == "sqlite:///var/brachy-cds.sqlite3"
    assert settings.canonical_base == "https://brachy-cds.org/fhir"
    assert settings.fhir_budget_seconds == 3.0
    assert settings.fhir_max_response_bytes == 20_971_520
    assert settings.clock_skew_seconds == 60
    assert settings.cors_origins == ("*",)
    assert settings.max_json_depth == 64
    assert settings.log_level == "INFO"


def test_other_environment_variables_are_ignored():
    assert load_settings({"PATH": "/usr/bin", "AUTH": "bogus", "BRACHY_AUTH": "bogus"}) == Settings()


def test_blank_values_mean_the_default():
    names = ["AUTH", "PUBLIC_URL", "ALLOWED_FHIR_SERVERS", "MAX_BODY_BYTES", "LOOKBACK_DAYS", "SITES",
             "TRUSTED_ISSUERS", "DATABASE_URL", "CANONICAL_BASE", "FHIR_BUDGET_SECONDS", "FHIR_MAX_RESPONSE_BYTES",
             "CLOCK_SKEW_SECONDS", "CORS_ORIGINS", "MAX_JSON_DEPTH", "LOG_LEVEL"]
    assert load_settings({f"BRACHY_CDS_{name}": "  " for name in names}) == Settings()


# Good values


@pytest.mark.parametrize("mode", ["required", "off", "off-insecure", " off "])
def test_auth_modes(mode):
    assert load_settings({"BRACHY_CDS_AUTH": mode}).auth == mode.strip()


def test_numbers_are_read():
    settings = load_settings(
        {
            "BRACHY_CDS_MAX_BODY_BYTES": "1048576",
            "BRACHY_CDS_LOOKBACK_DAYS": " 7 ",
            "BRACHY_CDS_FHIR_BUDGET_SECONDS": "1.5",
            "BRACHY_CDS_FHIR_MAX_RESPONSE_BYTES": "2048",
            "BRACHY_CDS_CLOCK_SKEW_SECONDS": "0",
            "BRACHY_CDS_MAX_JSON_DEPTH": "8",
        }
    )
    assert (settings.max_body_bytes, settings.lookback_days, settings.fhir_budget_seconds) == (1_048_576, 7, 1.5)
    assert (settings.fhir_max_response_bytes, settings.clock_skew_seconds, settings.max_json_depth) == (2048, 0, 8)


def test_minimum_values_are_accepted():
    settings = load_settings({"BRACHY_CDS_MAX_BODY_BYTES": "1024", "BRACHY_CDS_LOOKBACK_DAYS": "1",
                              "BRACHY_CDS_FHIR_BUDGET_SECONDS": "0.1"})
    assert (settings.max_body_bytes, settings.lookback_days, settings.fhir_budget_seconds) == (1024, 1, 0.1)


def test_urls_lose_their_trailing_slash():
    settings = load_settings({"BRACHY_CDS_PUBLIC_URL": "https://cds.example.org/brachy/",
                              "BRACHY_CDS_CANONICAL_BASE": "https://terminology.example.org/fhir/"})
    assert settings.public_url == "https://cds.example.org/brachy"
    assert settings.canonical_base == "https://terminology.example.org/fhir"


def test_allowed_fhir_servers_are_a_comma_separated_list():
    settings = load_settings(
        {"BRACHY_CDS_ALLOWED_FHIR_SERVERS": " https://fhir.example.org/R4 ,,http://127.0.0.1:8080/fhir, "
                                            "http://hapi:8080/fhir"}
    )
    assert settings.allowed_fhir_servers == (
        "https://fhir.example.org/R4",
        "http://127.0.0.1:8080/fhir",
        "http://hapi:8080/fhir",
    )


def test_plain_http_to_another_host_is_allowed_with_a_warning(caplog):
    with caplog.at_level("WARNING", logger="brachy_cds.config"):
        load_settings({"BRACHY_CDS_ALLOWED_FHIR_SERVERS": "http://hapi:8080/fhir"})
    assert any("hapi" in record.getMessage() for record in caplog.records)


def test_a_misspelt_variable_is_warned_about_by_name_with_the_real_one_and_never_its_value(caplog):
    with caplog.at_level("WARNING", logger="brachy_cds.config"):
        settings = load_settings(
            {
                "BRACHY_CDS_LOOKBACK_DAY": "7",
                "BRACHY_CDS_TRUSTED_ISSUER": "/etc/brachy/issuers-secret-path.json",
                "BRACHY_CDS_FROBNICATE": "s3cret-value",
                "BRACHY_CDS_PORT": "9000",  # read by scripts/run, not by the service
                "OTHER_TOOL_SETTING": "x",
            }
        )
    assert settings.lookback_days == 30  # the misspelt variable really is ignored
    assert [record.getMessage() for record in caplog.records] == [
        "BRACHY_CDS_FROBNICATE is not a brachy-cds setting and is ignored (README, Configuration, lists the settings)",
        "BRACHY_CDS_LOOKBACK_DAY is not a brachy-cds setting and is ignored; did you mean BRACHY_CDS_LOOKBACK_DAYS?",
        "BRACHY_CDS_TRUSTED_ISSUER is not a brachy-cds setting and is ignored;"
        " did you mean BRACHY_CDS_TRUSTED_ISSUERS?",
    ]


def test_the_settings_read_exactly_the_variables_the_readme_documents():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(BRACHY_CDS_[A-Z_]+)`", table, flags=re.MULTILINE))
    assert len(documented) == 18
    assert setting_names() == documented


def test_loopback_http_is_allowed_without_a_warning(caplog):
    with caplog.at_level("WARNING", logger="brachy_cds.config"):
        load_settings({"BRACHY_CDS_ALLOWED_FHIR_SERVERS": "http://localhost:8080/fhir,http://[::1]:9/fhir"})
    assert caplog.records == []


@pytest.mark.parametrize(
    "url",
    ["sqlite:////srv/brachy/db.sqlite3", "sqlite:///:memory:", "postgresql+psycopg://brachy@db.example.org/brachy"],
)
def test_database_urls(url):
    assert load_settings({"BRACHY_CDS_DATABASE_URL": url}).database_url == url


def test_cors_origins_and_log_level():
    settings = load_settings({"BRACHY_CDS_CORS_ORIGINS": "https://ehr.example.org, https://sandbox.cds-hooks.org",
                              "BRACHY_CDS_LOG_LEVEL": "DEBUG"})
    assert settings.cors_origins == ("https://ehr.example.org", "https://sandbox.cds-hooks.org")
    assert settings.log_level == "DEBUG"


# Bad values: one line, naming the variable


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("AUTH", "OFF", "is not one of required, off, off-insecure"),
        ("AUTH", "none", "is not one of"),
        ("MAX_BODY_BYTES", "abc", "is not a whole number"),
        ("MAX_BODY_BYTES", "5MB", "is not a whole number"),
        ("MAX_BODY_BYTES", "1e6", "is not a whole number"),
        ("MAX_BODY_BYTES", "1023", "below the minimum 1024"),
        ("MAX_BODY_BYTES", "-5", "below the minimum"),
        ("LOOKBACK_DAYS", "thirty", "is not a whole number"),
        ("LOOKBACK_DAYS", "0", "below the minimum 1"),
        ("LOOKBACK_DAYS", "2.5", "is not a whole number"),
        ("FHIR_BUDGET_SECONDS", "fast", "is not a number"),
        ("FHIR_BUDGET_SECONDS", "0", "at least 0.1"),
        ("FHIR_BUDGET_SECONDS", "nan", "finite number"),
        ("FHIR_BUDGET_SECONDS", "inf", "finite number"),
        ("FHIR_MAX_RESPONSE_BYTES", "big", "is not a whole number"),
        ("FHIR_MAX_RESPONSE_BYTES", "100", "below the minimum 1024"),
        ("CLOCK_SKEW_SECONDS", "-1", "below the minimum 0"),
        ("CLOCK_SKEW_SECONDS", "1m", "is not a whole number"),
        ("MAX_JSON_DEPTH", "7", "below the minimum 8"),
        ("LOG_LEVEL", "debug", "is not one of DEBUG, INFO, WARNING, ERROR"),
        ("LOG_LEVEL", "TRACE", "is not one of"),
        ("PUBLIC_URL", "cds.example.org", "is not an absolute http(s) URL"),
        ("PUBLIC_URL", "ftp://cds.example.org", "is not an absolute http(s) URL"),
        ("PUBLIC_URL", "https://cds.example.org:port", "is not an absolute http(s) URL"),
        ("PUBLIC_URL", "http://[::1", "is not an absolute http(s) URL"),
        ("CANONICAL_BASE", "urn:brachy", "is not an absolute http(s) URL"),
        ("ALLOWED_FHIR_SERVERS", "fhir.example.org/R4", "is not an absolute http(s) URL"),
        ("ALLOWED_FHIR_SERVERS", "https://ok.example.org,file:///etc", "is not an absolute http(s) URL"),
        ("ALLOWED_FHIR_SERVERS", "https://fhir.example.org:99999/R4", "is not an absolute http(s) URL"),
        ("ALLOWED_FHIR_SERVERS", "https://fhir.example.org:abc/R4", "is not an absolute http(s) URL"),
        ("ALLOWED_FHIR_SERVERS", "http://[::1/fhir", "is not an absolute http(s) URL"),
        ("ALLOWED_FHIR_SERVERS", "https://fhir.example.org/R4?_format=json", "must not have a query or fragment"),
        ("ALLOWED_FHIR_SERVERS", "https://fhir.example.org/R4#top", "must not have a query or fragment"),
        ("DATABASE_URL", "not a url", "not a database URL"),
        ("DATABASE_URL", "nosuchdb://host/db", "not a database URL"),
    ],
)
def test_bad_value_names_the_variable_in_one_line(name, value, problem):
    message = config_error({f"BRACHY_CDS_{name}": value})
    assert message.startswith(f"BRACHY_CDS_{name}: ")
    assert problem in message


def test_bad_value_with_a_newline_still_gives_one_line():
    message = config_error({"BRACHY_CDS_MAX_BODY_BYTES": "12\n34"})
    assert message == "BRACHY_CDS_MAX_BODY_BYTES: '12\\n34' is not a whole number"


def test_database_url_message_does_not_echo_a_password():
    message = config_error({"BRACHY_CDS_DATABASE_URL": "nosuchdb://brachy:s3cret-pw@db.example.org/brachy"})
    assert "s3cret-pw" not in message


# Site table (contract 5.1)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def sites(path: str) -> tuple[SiteEntry, ...]:
    return load_settings({"BRACHY_CDS_SITES": path}).sites


def test_site_table_json(tmp_path):
    path = write(tmp_path, "sites.json", json.dumps([
        {"identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}, "pos": "11",
         "billing": "split", "teaching": True, "name": "Riverside Cancer Centre"},
        {"identifier": {"value": "LOC-7"}, "pos": "22"},
    ]))
    assert sites(path) == (
        SiteEntry("http://hl7.org/fhir/sid/us-npi", "1234567893", "11", "split", True, "Riverside Cancer Centre"),
        SiteEntry("", "LOC-7", "22", "global", False, None),
    )


def test_site_table_yaml(tmp_path):
    path = write(tmp_path, "sites.yaml", """
- identifier: {system: "urn:oid:2.16.840.1.113883.4.6", value: "1234567893"}
  pos: 19
  teaching: false
- identifier: {system: "urn:site", value: "office-a"}
  pos: "11"
  billing: global
  name: Office <A>
""")
    assert sites(path) == (
        SiteEntry("urn:oid:2.16.840.1.113883.4.6", "1234567893", "19", "global", False, None),
        SiteEntry("urn:site", "office-a", "11", "global", False, "Office <A>"),
    )


def test_site_table_yml_suffix_and_single_digit_pos_number(tmp_path):
    path = write(tmp_path, "sites.yml", "- {identifier: {value: x}, pos: 5}\n")
    assert sites(path) == (SiteEntry("", "x", "05"),)


def test_empty_site_list_is_no_sites(tmp_path):
    assert sites(write(tmp_path, "sites.json", "[]")) == ()


GOOD_ROW = {"identifier": {"system": "urn:site", "value": "a"}, "pos": "11"}


@pytest.mark.parametrize("suffix", ["json", "yaml"])
@pytest.mark.parametrize(
    ("bad_row", "problem"),
    [
        ({**GOOD_ROW, "modifier": "26"}, "unknown key(s) modifier"),
        ({**GOOD_ROW, "Billing": "split"}, "unknown key(s) Billing"),
        ({"identifier": {"value": "b"}}, "'pos' is required"),
        ({"identifier": {"value": "b"}, "pos": None}, "'pos' is required"),
        ({"identifier": {"value": "b"}, "pos": "office"}, "'pos' is required and must be a two-digit"),
        ({"identifier": {"value": "b"}, "pos": "111"}, "two-digit"),
        ({"identifier": {"value": "b"}, "pos": True}, "two-digit"),
        ({**GOOD_ROW, "billing": "professional"}, "'billing' must be one of global, split"),
        ({**GOOD_ROW, "billing": "SPLIT"}, "'billing' must be one of global, split"),
        ({**GOOD_ROW, "teaching": "no"}, "'teaching' must be true or false"),
        ({**GOOD_ROW, "teaching": 1}, "'teaching' must be true or false"),
        ({**GOOD_ROW, "name": 42}, "'name' must be text"),
        ({"pos": "11"}, "'identifier' must be {system, value}"),
        ({"identifier": {"system": "urn:site"}, "pos": "11"}, "'identifier' must be {system, value}"),
        ({"identifier": {"value": ""}, "pos": "11"}, "'identifier' must be {system, value}"),
        ({"identifier": {"value": "b", "use": "official"}, "pos": "11"}, "'identifier' must be {system, value}"),
        ("just text", "expected a mapping"),
    ],
)
def test_bad_site_entry_names_the_file_and_the_entry(tmp_path, suffix, bad_row, problem):
    # The bad row is the second entry; the message points at it, not at the good first one.
    path = write(tmp_path, f"sites.{suffix}", json.dumps([GOOD_ROW, bad_row]))
    message = config_error({"BRACHY_CDS_SITES": path})
    assert message.startswith(f"BRACHY_CDS_SITES: {path} entry 2: ")
    assert problem in message


def test_yaml_teaching_must_be_a_boolean_not_a_string(tmp_path):
    path = write(tmp_path, "sites.yaml", "- identifier: {value: a}\n  pos: '11'\n  teaching: 'yes'\n")
    assert config_error({"BRACHY_CDS_SITES": path}) == (
        f"BRACHY_CDS_SITES: {path} entry 1: 'teaching' must be true or false"
    )


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("sites.json", '{"identifier": {"value": "a"}, "pos": "11"}', "must contain a list"),
        ("sites.yaml", "", "must contain a list"),
        ("sites.json", "[{", "is not valid JSON/YAML"),
        ("sites.yaml", "- identifier: {value: a\n  pos: [", "is not valid JSON/YAML"),
    ],
)
def test_site_file_that_is_not_a_list_names_the_file(tmp_path, name, text, problem):
    path = write(tmp_path, name, text)
    message = config_error({"BRACHY_CDS_SITES": path})
    assert message.startswith(f"BRACHY_CDS_SITES: {path} ")
    assert problem in message


def test_missing_site_file_names_the_variable_and_the_file(tmp_path):
    path = str(tmp_path / "nowhere.yaml")
    assert config_error({"BRACHY_CDS_SITES": path}) == f"BRACHY_CDS_SITES: cannot read {path} (FileNotFoundError)"


# Trusted issuers (contract 1, 5.6)


def issuers(tmp_path: Path, rows: object, suffix: str = "json") -> tuple[TrustedIssuer, ...]:
    path = write(tmp_path, f"issuers.{suffix}", json.dumps(rows))
    return load_settings({"BRACHY_CDS_TRUSTED_ISSUERS": path}).trusted_issuers


def test_trusted_issuers_inline_keys_url_and_tenant(tmp_path):
    rows = [
        {"iss": "https://ehr.example.org", "jwks": JWKS},
        {"iss": "https://sandbox.cds-hooks.org", "jwks_url": "https://sandbox.cds-hooks.org/.well-known/jwks.json",
         "tenant": "t-1"},
        {"iss": "http://localhost:8081", "jwks_url": "http://127.0.0.1:8081/jwks.json", "jwks": JWKS},
    ]
    assert issuers(tmp_path, rows) == (
        TrustedIssuer("https://ehr.example.org", None, JWKS, None),
        TrustedIssuer("https://sandbox.cds-hooks.org", "https://sandbox.cds-hooks.org/.well-known/jwks.json",
                      None, "t-1"),
        TrustedIssuer("http://localhost:8081", "http://127.0.0.1:8081/jwks.json", JWKS, None),
    )


def test_trusted_issuers_yaml(tmp_path):
    path = write(tmp_path, "issuers.yaml", "- iss: https://ehr.example.org\n  jwks_url: https://ehr.example.org/jwks\n")
    assert load_settings({"BRACHY_CDS_TRUSTED_ISSUERS": path}).trusted_issuers == (
        TrustedIssuer("https://ehr.example.org", "https://ehr.example.org/jwks"),
    )


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"iss": "https://ehr.example.org", "jwks": JWKS, "secret": "x"}, "unknown key(s) secret"),
        ({"jwks": JWKS}, "'iss' must be a non-empty string"),
        ({"iss": "", "jwks": JWKS}, "'iss' must be a non-empty string"),
        ({"iss": "https://ehr.example.org"}, "give 'jwks_url', 'jwks' or both"),
        ({"iss": "https://ehr.example.org", "jwks_url": "http://ehr.example.org/jwks"}, "'jwks_url' must be an https"),
        ({"iss": "https://ehr.example.org", "jwks_url": "jwks.json"}, "'jwks_url' must be an https"),
        ({"iss": "https://ehr.example.org", "jwks_url": "https://[::1/jwks"}, "'jwks_url' must be an https"),
        ({"iss": "https://ehr.example.org", "jwks_url": 7}, "'jwks_url' must be an https"),
        ({"iss": "https://ehr.example.org", "jwks": {"kty": "EC"}}, "'jwks' must be a JWK Set"),
        ({"iss": "https://ehr.example.org", "jwks": JWKS, "tenant": 3}, "'tenant' must be text"),
        (["https://ehr.example.org"], "expected a mapping"),
    ],
)
def test_bad_trusted_issuer_names_the_file_and_the_entry(tmp_path, row, problem):
    path = write(tmp_path, "issuers.json", json.dumps([{"iss": "https://ok.example.org", "jwks": JWKS}, row]))
    message = config_error({"BRACHY_CDS_TRUSTED_ISSUERS": path})
    assert message.startswith(f"BRACHY_CDS_TRUSTED_ISSUERS: {path} entry 2: ")
    assert problem in message


def test_trusted_issuer_file_must_be_a_list(tmp_path):
    path = write(tmp_path, "issuers.json", json.dumps({"iss": "https://ehr.example.org", "jwks": JWKS}))
    assert config_error({"BRACHY_CDS_TRUSTED_ISSUERS": path}) == (
        f"BRACHY_CDS_TRUSTED_ISSUERS: {path} must contain a list"
    )


# check_bind (contract 1: auth off only on loopback)


@pytest.mark.parametrize("host", [ALL_INTERFACES, "::", "192.168.1.20", "cds.example.org", ""])
def test_auth_off_is_refused_on_a_non_loopback_address(host):
    with pytest.raises(ConfigError) as caught:
        check_bind(Settings(auth="off"), host)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("BRACHY_CDS_AUTH=off is refused on non-loopback address")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_auth_off_is_allowed_on_loopback(host):
    check_bind(Settings(auth="off"), host)


@pytest.mark.parametrize("host", [ALL_INTERFACES, "::", "127.0.0.1", "cds.example.org"])
@pytest.mark.parametrize("auth", ["off-insecure", "required"])
def test_off_insecure_and_required_bind_anywhere(auth, host):
    check_bind(Settings(auth=auth), host)
