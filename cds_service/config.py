"""Read the ``BRACHY_CDS_*`` configuration once, with strict casting, and fail fast.

Contract section 1: environment variables prefixed ``BRACHY_CDS_`` are read once at start; a bad
value stops start-up with a one-line message naming the variable (Starlette's ``Config`` habit:
the environment is injected, so tests never touch ``os.environ``).
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import yaml

PREFIX = "BRACHY_CDS_"
AUTH_MODES = ("required", "off", "off-insecure")
BILLING_MODELS = ("global", "split")
SITE_KEYS = {"identifier", "pos", "billing", "teaching", "name"}
TRUSTED_ISSUER_KEYS = {"iss", "jwks_url", "jwks", "tenant"}
TOOLING_VARIABLES = frozenset({"PORT", "WRITE_EXPECTED", "TEST_FHIR_SERVER", "TEST_POSTGRES_URL"})
"""``BRACHY_CDS_*`` names read by the project's scripts and test harness, not by the service: never warned about."""

log = logging.getLogger("brachy_cds.config")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the variable (and file) in one line."""


@dataclass(frozen=True)
class SiteEntry:
    """One row of the site table (contract 5.1): an identifier mapped to a place of service."""

    system: str
    value: str
    pos: str
    billing: str = "global"
    teaching: bool = False
    name: str | None = None


@dataclass(frozen=True)
class TrustedIssuer:
    """An EHR whose JWTs the service accepts (contract 1, ``BRACHY_CDS_TRUSTED_ISSUERS``)."""

    iss: str
    jwks_url: str | None = None
    jwks: Mapping[str, Any] | None = None
    tenant: str | None = None


@dataclass(frozen=True)
class Settings:
    """The service configuration, immutable after start-up."""

    auth: str = "required"
    trusted_issuers: tuple[TrustedIssuer, ...] = ()
    public_url: str | None = None
    allowed_fhir_servers: tuple[str, ...] = ()
    max_body_bytes: int = 5 * 1024 * 1024
    lookback_days: int = 30
    sites: tuple[SiteEntry, ...] = ()
    payer_table: str | None = None
    """``BRACHY_CDS_PAYERS``: a YAML/JSON payer table merged before the shipped one (validated by the rule loader)."""
    resident_codes: str | None = None
    """``BRACHY_CDS_RESIDENT_CODES``: a YAML/JSON list of codes that mark a resident among Procedure performers."""
    rules_dir: str | None = None
    """``BRACHY_CDS_RULES_DIR``: a directory of rule files used instead of the shipped ones (to try a rule change)."""
    database_url: str = "sqlite:///var/brachy-cds.sqlite3"
    canonical_base: str = "https://brachy-cds.org/fhir"
    fhir_budget_seconds: float = 3.0
    """Time budget of one hook call, counted from the request's arrival: every FHIR fetch must end within it."""
    fhir_max_response_bytes: int = 20 * 1024 * 1024
    clock_skew_seconds: int = 60
    cors_origins: tuple[str, ...] = ("*",)
    max_json_depth: int = 64
    log_level: str = "INFO"
    extra: Mapping[str, Any] = field(default_factory=dict)


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build Settings from ``BRACHY_CDS_*`` entries of ``environ``; raise ConfigError on a bad value.

    A ``BRACHY_CDS_*`` variable no setting reads (a misspelling such as ``BRACHY_CDS_LOOKBACK_DAY``)
    is warned about by name, with the closest real name; never with its value, which may be a secret.
    """
    env = {k: v for k, v in environ.items() if k.startswith(PREFIX)}
    settings = _settings(env)
    for name in sorted(set(env) - setting_names() - {_name(tool) for tool in TOOLING_VARIABLES}):
        known = sorted(known.removeprefix(PREFIX) for known in setting_names())
        close = difflib.get_close_matches(name.removeprefix(PREFIX), known, n=1, cutoff=0.75)
        log.warning(
            "%s is not a brachy-cds setting and is ignored%s",
            name,
            f"; did you mean {PREFIX}{close[0]}?" if close else " (README, Configuration, lists the settings)",
        )
    return settings


@functools.cache
def setting_names() -> frozenset[str]:
    """Every ``BRACHY_CDS_*`` name the settings read: those asked for while reading an empty environment."""
    env = _Reads()
    _settings(env)
    return frozenset(env.read)


class _Reads(dict[str, str]):
    """An empty environment that remembers every name asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)


def _settings(env: Mapping[str, str]) -> Settings:
    return Settings(
        auth=_choice(env, "AUTH", AUTH_MODES, "required"),
        trusted_issuers=_trusted_issuers(env),
        public_url=_url(env, "PUBLIC_URL"),
        allowed_fhir_servers=_allowed_servers(env),
        max_body_bytes=_int(env, "MAX_BODY_BYTES", 5 * 1024 * 1024, minimum=1024),
        lookback_days=_int(env, "LOOKBACK_DAYS", 30, minimum=1),
        sites=_sites(env),
        payer_table=_file(env, "PAYERS"),
        resident_codes=_file(env, "RESIDENT_CODES"),
        rules_dir=_directory(env, "RULES_DIR"),
        database_url=_database_url(env),
        canonical_base=(_url(env, "CANONICAL_BASE") or "https://brachy-cds.org/fhir").rstrip("/"),
        fhir_budget_seconds=_float(env, "FHIR_BUDGET_SECONDS", 3.0, minimum=0.1),
        fhir_max_response_bytes=_int(env, "FHIR_MAX_RESPONSE_BYTES", 20 * 1024 * 1024, minimum=1024),
        clock_skew_seconds=_int(env, "CLOCK_SKEW_SECONDS", 60, minimum=0),
        cors_origins=_origins(env),
        max_json_depth=_int(env, "MAX_JSON_DEPTH", 64, minimum=8),
        log_level=_choice(env, "LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
    )


def check_bind(settings: Settings, host: str) -> None:
    """Refuse ``BRACHY_CDS_AUTH=off`` on a non-loopback bind address (contract 1)."""
    if settings.auth == "off" and not is_loopback(host):
        raise ConfigError(
            f"BRACHY_CDS_AUTH=off is refused on non-loopback address {host}: use a loopback address,"
            " BRACHY_CDS_AUTH=required, or off-insecure for a throwaway sandbox"
        )


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _name(key: str) -> str:
    return PREFIX + key


def _choice(env: Mapping[str, str], key: str, allowed: tuple[str, ...], default: str) -> str:
    raw = env.get(_name(key))
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip()
    if value not in allowed:
        raise ConfigError(f"{_name(key)}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _int(env: Mapping[str, str], key: str, default: int, *, minimum: int) -> int:
    raw = env.get(_name(key))
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{_name(key)}: {raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{_name(key)}: {value} is below the minimum {minimum}")
    return value


def _float(env: Mapping[str, str], key: str, default: float, *, minimum: float) -> float:
    raw = env.get(_name(key))
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{_name(key)}: {raw!r} is not a number") from None
    if not value >= minimum or value == float("inf"):
        raise ConfigError(f"{_name(key)}: {raw!r} must be a finite number of at least {minimum}")
    return value


def _list(env: Mapping[str, str], key: str) -> tuple[str, ...]:
    raw = env.get(_name(key), "")
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _split_http_url(raw: str) -> SplitResult | None:
    """Split an absolute http(s) URL; None when it is not one (bad scheme, no host, malformed host or port)."""
    try:
        parts = urlsplit(raw)
        _ = parts.port  # raises ValueError for a port that is not a number in 0-65535
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts


def _url(env: Mapping[str, str], key: str) -> str | None:
    raw = env.get(_name(key), "").strip()
    if not raw:
        return None
    if _split_http_url(raw) is None:
        raise ConfigError(f"{_name(key)}: {raw!r} is not an absolute http(s) URL")
    return raw.rstrip("/")


def _database_url(env: Mapping[str, str]) -> str:
    raw = env.get(_name("DATABASE_URL"), "").strip()
    if not raw:
        return "sqlite:///var/brachy-cds.sqlite3"
    from sqlalchemy.engine import make_url  # here, not at the top: the pure coding core imports this module
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(raw).get_dialect()
    except ArgumentError:
        # The message would echo the URL, which may hold a password: name the variable only.
        raise ConfigError(
            f"{_name('DATABASE_URL')}: not a database URL SQLAlchemy knows (e.g. sqlite:///var/brachy-cds.sqlite3"
            " or postgresql+psycopg://user@host/db)"
        ) from None
    return raw


def _origins(env: Mapping[str, str]) -> tuple[str, ...]:
    """``*`` or exact browser origins (``scheme://host[:port]``, as the Origin header has them)."""
    origins = _list(env, "CORS_ORIGINS") or ("*",)
    for origin in origins:
        if origin == "*":
            continue
        parts = _split_http_url(origin)
        if parts is None or origin.rstrip("/") != f"{parts.scheme}://{parts.netloc}" or set("@*") & set(parts.netloc):
            raise ConfigError(
                f"{_name('CORS_ORIGINS')}: {origin!r} is not '*' or an origin such as https://ehr.example.org"
                " (scheme, host and port only)"
            )
    return tuple(origin.rstrip("/") for origin in origins)


def _allowed_servers(env: Mapping[str, str]) -> tuple[str, ...]:
    servers = []
    for entry in _list(env, "ALLOWED_FHIR_SERVERS"):
        parts = _split_http_url(entry)
        if parts is None:
            raise ConfigError(f"{_name('ALLOWED_FHIR_SERVERS')}: {entry!r} is not an absolute http(s) URL")
        if parts.query or parts.fragment:
            raise ConfigError(f"{_name('ALLOWED_FHIR_SERVERS')}: {entry!r} must not have a query or fragment")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            log.warning(
                "BRACHY_CDS_ALLOWED_FHIR_SERVERS: plain http to a non-loopback host is allowed by an explicit"
                " http:// entry (host %s); use https outside a closed sandbox network",
                parts.hostname,
            )
        servers.append(entry)
    return tuple(servers)


def _file(env: Mapping[str, str], key: str) -> str | None:
    """A path to a readable file, or None when the variable is unset; its content is checked by its reader."""
    raw = env.get(_name(key), "").strip()
    if not raw:
        return None
    if not Path(raw).is_file():
        raise ConfigError(f"{_name(key)}: {raw} is not a readable file")
    return raw


def _directory(env: Mapping[str, str], key: str) -> str | None:
    raw = env.get(_name(key), "").strip()
    if not raw:
        return None
    if not Path(raw).is_dir():
        raise ConfigError(f"{_name(key)}: {raw} is not a directory")
    return raw


def _read_table(env: Mapping[str, str], key: str) -> tuple[str, Any] | None:
    raw = env.get(_name(key), "").strip()
    if not raw:
        return None
    path = Path(raw)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{_name(key)}: cannot read {raw} ({exc.__class__.__name__})") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise ConfigError(f"{_name(key)}: {raw} is not valid JSON/YAML ({first_line})") from None
    if not isinstance(data, list):
        raise ConfigError(f"{_name(key)}: {raw} must contain a list")
    return raw, data


def _table_entries(env: Mapping[str, str], key: str, keys: set[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(where, row)`` for each entry of a table file: a mapping using only ``keys``, else ConfigError."""
    table = _read_table(env, key)
    if table is None:
        return
    path, rows = table
    for number, row in enumerate(rows, start=1):
        where = f"{_name(key)}: {path} entry {number}"
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: expected a mapping")
        unknown = sorted(set(row) - keys)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
        yield where, row


def _sites(env: Mapping[str, str]) -> tuple[SiteEntry, ...]:
    sites = []
    for where, row in _table_entries(env, "SITES", SITE_KEYS):
        identifier = row.get("identifier")
        if (
            not isinstance(identifier, dict)
            or set(identifier) - {"system", "value"}
            or not isinstance(identifier.get("value"), str)
            or not identifier["value"]
            or not isinstance(identifier.get("system", ""), str)
        ):
            raise ConfigError(f"{where}: 'identifier' must be {{system, value}} with a non-empty string value")
        pos = row.get("pos")
        if isinstance(pos, int) and not isinstance(pos, bool):
            pos = f"{pos:02d}"
        if not isinstance(pos, str) or not pos.isdigit() or len(pos) != 2:
            raise ConfigError(f"{where}: 'pos' is required and must be a two-digit CMS Place of Service code")
        billing = row.get("billing", "global")
        if billing not in BILLING_MODELS:
            raise ConfigError(f"{where}: 'billing' must be one of {', '.join(BILLING_MODELS)}")
        teaching = row.get("teaching", False)
        if not isinstance(teaching, bool):
            raise ConfigError(f"{where}: 'teaching' must be true or false")
        name = row.get("name")
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"{where}: 'name' must be text")
        sites.append(SiteEntry(identifier.get("system", ""), identifier["value"], pos, billing, teaching, name))
    return tuple(sites)


def _trusted_issuers(env: Mapping[str, str]) -> tuple[TrustedIssuer, ...]:
    issuers = []
    for where, row in _table_entries(env, "TRUSTED_ISSUERS", TRUSTED_ISSUER_KEYS):
        iss = row.get("iss")
        if not isinstance(iss, str) or not iss:
            raise ConfigError(f"{where}: 'iss' must be a non-empty string")
        jwks_url, jwks = row.get("jwks_url"), row.get("jwks")
        if jwks_url is None and jwks is None:
            raise ConfigError(f"{where}: give 'jwks_url', 'jwks' or both (inline keys are then used as they are)")
        if jwks_url is not None:
            parts = _split_http_url(jwks_url) if isinstance(jwks_url, str) else None
            loopback_http = parts is not None and parts.scheme == "http" and is_loopback(parts.hostname or "")
            if parts is None or (parts.scheme != "https" and not loopback_http):
                raise ConfigError(f"{where}: 'jwks_url' must be an https URL (http only for loopback)")
        if jwks is not None and (not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list)):
            raise ConfigError(f"{where}: 'jwks' must be a JWK Set object with a 'keys' list")
        tenant = row.get("tenant")
        if tenant is not None and not isinstance(tenant, str):
            raise ConfigError(f"{where}: 'tenant' must be text")
        issuers.append(TrustedIssuer(iss, jwks_url, jwks, tenant))
    return tuple(issuers)
