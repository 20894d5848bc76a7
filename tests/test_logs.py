"""JsonFormatter and configure(): one JSON object per line, PHI-free exception reporting (style.md, logs)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

from cds_service import logs
from cds_service.logs import JsonFormatter

CREATED = 1_750_000_000.123  # 2025-06-15T15:06:40.123Z


def record(msg: str = "request", *args: object, fields: object = None, exc_info: object = None,
           level: int = logging.INFO) -> logging.LogRecord:
    entry = logging.LogRecord("brachy_cds.access", level, __file__, 10, msg, args, exc_info)
    entry.created = CREATED
    entry.msecs = 123.0
    if fields is not None:
        entry.fields = fields
    return entry


def formatted(entry: logging.LogRecord) -> dict:
    text = JsonFormatter().format(entry)
    assert len(text.splitlines()) == 1, text
    return json.loads(text)


def test_base_fields():
    assert formatted(record()) == {
        "ts": "2025-06-15T15:06:40.123Z",
        "level": "INFO",
        "logger": "brachy_cds.access",
        "msg": "request",
    }


def test_message_arguments_are_applied():
    assert formatted(record("purged %d expired jti rows", 3, level=logging.DEBUG))["msg"] == "purged 3 expired jti rows"
    assert formatted(record(level=logging.WARNING))["level"] == "WARNING"


def test_extra_fields_are_merged_in_order():
    entry = formatted(record(fields={"method": "POST", "route": "/cds-services/<service_id>", "status": 200,
                                     "ms": 12.5, "topics": ["charge-suggestion"], "iss": None}))
    assert entry == {
        "ts": "2025-06-15T15:06:40.123Z",
        "level": "INFO",
        "logger": "brachy_cds.access",
        "msg": "request",
        "method": "POST",
        "route": "/cds-services/<service_id>",
        "status": 200,
        "ms": 12.5,
        "topics": ["charge-suggestion"],
        "iss": None,
    }


def test_values_json_cannot_hold_are_written_as_text():
    moment = dt.datetime(2026, 10, 14, 10, 5, tzinfo=dt.UTC)
    assert formatted(record(fields={"at": moment}))["at"] == "2026-10-14 10:05:00+00:00"


def test_fields_that_are_not_a_mapping_are_ignored():
    assert set(formatted(record(fields=["not", "a", "dict"]))) == {"ts", "level", "logger", "msg"}


def test_newlines_and_non_ascii_stay_on_one_line():
    entry = formatted(record("line one\nline two\r\n\tHôpital Saint-Éloi"))
    assert entry["msg"] == "line one\nline two\r\n\tHôpital Saint-Éloi"


def test_exception_gives_only_the_type_name():
    try:
        raise ValueError("Patient/pat-secret-4711 access_token=tok-SECRET")
    except ValueError:
        text = JsonFormatter().format(record("unhandled error", exc_info=sys.exc_info()))
    assert len(text.splitlines()) == 1
    assert json.loads(text)["exception"] == "ValueError"
    assert "pat-secret-4711" not in text and "tok-SECRET" not in text and "Traceback" not in text


def test_exception_info_without_an_exception_adds_nothing():
    assert "exception" not in formatted(record(exc_info=(None, None, None)))


def test_configure_installs_one_json_handler_and_sets_the_level():
    logger = logging.getLogger("brachy_cds")
    before = (logger.level, list(logger.handlers))
    try:
        logs.configure("WARNING")
        logs.configure("DEBUG")
        ours = [h for h in logger.handlers if getattr(h, "_brachy_cds", False)]
        assert len(ours) == 1
        assert isinstance(ours[0].formatter, JsonFormatter)
        assert logger.level == logging.DEBUG
        assert logger.propagate
    finally:
        logger.setLevel(before[0])
