"""Store on a real SQLite file: feedback round trip, the billing summary, and jti replay across workers."""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from cds_service.config import ConfigError, Settings
from cds_service.feedback import Coding, FeedbackItem
from cds_service.store import Store, feedback_table, seen_jti_table
from tests.postgres_server import URL_ENV, PostgresTestServer

NOW = 1_750_000_000.0
T = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
DISCHARGE = "brachy-encounter-discharge"
PATIENT_VIEW = "brachy-patient-view"
REASONS = "https://brachy-cds.org/fhir/CodeSystem/override-reason"
NOT_PERFORMED = Coding("not-performed", REASONS, "Procedure not performed")
ALREADY_BILLED = Coding("already-billed", REASONS, "Already billed")


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'data' / 'brachy-cds.sqlite3'}"


@pytest.fixture
def store(db_url, clock):
    with Store(db_url, clock=clock) as db:
        yield db


def accepted(card: str, minutes: int, *suggestions: str) -> FeedbackItem:
    return FeedbackItem(card, "accepted", T + timedelta(minutes=minutes), accepted_suggestions=suggestions)


def overridden(card: str, minutes: int, reason: Coding | None = None, comment: str | None = None) -> FeedbackItem:
    return FeedbackItem(
        card, "overridden", T + timedelta(minutes=minutes), override_reason=reason, user_comment=comment
    )


def test_sqlite_file_gets_its_folder_and_wal_mode(tmp_path, db_url):
    with Store(db_url) as db, db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
    assert (tmp_path / "data" / "brachy-cds.sqlite3").is_file()


def test_default_database_url_is_a_file_under_var_of_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Store(Settings().database_url) as db:
        assert db.remember_jti("https://ehr.example.org", "j1", NOW + 300)
    assert (tmp_path / "var" / "brachy-cds.sqlite3").is_file()


def test_feedback_round_trip(store, clock):
    items = [
        accepted("card-1", 0, "sugg-1", "sugg-2"),
        overridden("card-2", 5, NOT_PERFORMED, "Seeds were not implanted"),
        overridden("card-3", 6),
    ]
    assert store.record_feedback(DISCHARGE, items) == 3
    assert store.record_feedback(DISCHARGE, []) == 0

    with store.engine.connect() as conn:
        rows = [row._asdict() for row in conn.execute(sa.select(feedback_table).order_by(feedback_table.c.id))]
    received = datetime(2025, 6, 15, 15, 6, 40)  # NOW, stored as naive UTC by SQLite
    assert rows == [
        {
            "id": 1,
            "received_at": received,
            "service_id": DISCHARGE,
            "card_uuid": "card-1",
            "outcome": "accepted",
            "accepted_suggestions": json.dumps(["sugg-1", "sugg-2"]),
            "override_code": None,
            "override_system": None,
            "override_display": None,
            "user_comment": None,
            "outcome_timestamp": datetime(2025, 6, 1, 12, 0),
        },
        {
            "id": 2,
            "received_at": received,
            "service_id": DISCHARGE,
            "card_uuid": "card-2",
            "outcome": "overridden",
            "accepted_suggestions": "[]",
            "override_code": "not-performed",
            "override_system": REASONS,
            "override_display": "Procedure not performed",
            "user_comment": "Seeds were not implanted",
            "outcome_timestamp": datetime(2025, 6, 1, 12, 5),
        },
        {
            "id": 3,
            "received_at": received,
            "service_id": DISCHARGE,
            "card_uuid": "card-3",
            "outcome": "overridden",
            "accepted_suggestions": "[]",
            "override_code": None,
            "override_system": None,
            "override_display": None,
            "user_comment": None,
            "outcome_timestamp": datetime(2025, 6, 1, 12, 6),
        },
    ]


def test_outcome_timestamp_with_an_offset_is_stored_in_utc(store):
    plus_two = datetime(2025, 6, 1, 16, 0, tzinfo=timezone(timedelta(hours=2)))
    store.record_feedback(DISCHARGE, [FeedbackItem("card-1", "overridden", plus_two)])
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(feedback_table.c.outcome_timestamp)).scalar() == datetime(2025, 6, 1, 14, 0)


@pytest.fixture
def billed(store):
    """Eight feedback rows on six cards for discharge (two duplicates), one card for patient-view."""
    store.record_feedback(
        DISCHARGE,
        [
            accepted("c1", 0, "s1"),
            accepted("c1", 0, "s1"),  # the same report twice (S2: duplicates are expected)
            overridden("c2", 1, NOT_PERFORMED),
            overridden("c3", 2, NOT_PERFORMED, "Patient declined"),
        ],
    )
    store.record_feedback(
        DISCHARGE,
        [
            overridden("c4", 3, ALREADY_BILLED),
            overridden("c5", 4, comment="no coded reason"),
            overridden("c6", 5, ALREADY_BILLED),
            accepted("c6", 6, "s6"),  # the latest outcome of c6 counts
        ],
    )
    store.record_feedback(PATIENT_VIEW, [accepted("c7", 60, "s7")])
    return store


def test_feedback_summary_counts_each_card_once_with_its_latest_outcome(billed):
    # discharge: 8 rows, cards c1..c6; accepted c1, c6 = 2; overridden c2, c3 (not-performed),
    # c4 (already-billed), c5 (no reason) = 4; acceptance 2/6 = 0.3333.
    assert billed.feedback_summary() == {
        "since": None,
        "services": {
            DISCHARGE: {
                "received": 8,
                "count": 6,
                "accepted": 2,
                "overridden": 4,
                "acceptance_rate": 0.3333,
                "override_reasons": [
                    {"system": REASONS, "code": "not-performed", "display": "Procedure not performed", "count": 2},
                    {"system": REASONS, "code": "already-billed", "display": "Already billed", "count": 1},
                ],
                "overridden_without_reason": 1,
            },
            PATIENT_VIEW: {
                "received": 1,
                "count": 1,
                "accepted": 1,
                "overridden": 0,
                "acceptance_rate": 1.0,
                "override_reasons": [],
                "overridden_without_reason": 0,
            },
        },
    }


def test_feedback_summary_since_filters_on_the_outcome_timestamp(billed):
    # From 12:03: discharge rows c4, c5, c6 (overridden), c6 (accepted) = 4 rows on 3 cards;
    # accepted c6 = 1; overridden c4 (already-billed), c5 (no reason) = 2; acceptance 1/3.
    summary = billed.feedback_summary(since=T + timedelta(minutes=3))
    assert summary["since"] == "2025-06-01T12:03:00+00:00"
    assert summary["services"][DISCHARGE] == {
        "received": 4,
        "count": 3,
        "accepted": 1,
        "overridden": 2,
        "acceptance_rate": 0.3333,
        "override_reasons": [
            {"system": REASONS, "code": "already-billed", "display": "Already billed", "count": 1},
        ],
        "overridden_without_reason": 1,
    }
    assert summary["services"][PATIENT_VIEW]["count"] == 1
    assert billed.feedback_summary(since=T + timedelta(days=1)) == {
        "since": "2025-06-02T12:00:00+00:00",
        "services": {},
    }


def test_empty_database_has_an_empty_summary(store):
    assert store.feedback_summary() == {"since": None, "services": {}}


def test_jti_is_remembered_until_it_expires(store, clock):
    iss = "https://ehr.example.org"
    assert store.remember_jti(iss, "jti-1", NOW + 360) is True
    assert store.remember_jti(iss, "jti-1", NOW + 360) is False
    assert store.remember_jti("https://other.example.net", "jti-1", NOW + 360) is True
    clock.now = NOW + 359
    assert store.remember_jti(iss, "jti-1", NOW + 720) is False
    clock.now = NOW + 360
    assert store.remember_jti(iss, "jti-1", NOW + 720) is True  # the old row had expired


def test_jti_replay_is_refused_by_a_second_worker_on_the_same_file(db_url, clock):
    with Store(db_url, clock=clock) as worker_1, Store(db_url, clock=clock) as worker_2:
        assert worker_1.remember_jti("https://ehr.example.org", "jti-1", NOW + 360) is True
        assert worker_2.remember_jti("https://ehr.example.org", "jti-1", NOW + 360) is False
        assert worker_2.remember_jti("https://ehr.example.org", "jti-2", NOW + 360) is True
        assert worker_1.remember_jti("https://ehr.example.org", "jti-2", NOW + 360) is False


def test_concurrent_threads_of_two_workers_accept_each_jti_exactly_once(db_url, clock):
    jtis = [f"jti-{n}" for n in range(25)]
    with Store(db_url, clock=clock) as worker_1, Store(db_url, clock=clock) as worker_2:
        attempts = [(worker, jti) for jti in jtis for worker in (worker_1, worker_2, worker_1, worker_2)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda a: (a[1], a[0].remember_jti("iss", a[1], NOW + 60)), attempts))
    accepted_per_jti = {jti: sum(ok for seen, ok in results if seen == jti) for jti in jtis}
    assert accepted_per_jti == dict.fromkeys(jtis, 1)


def test_expired_jtis_are_purged(store, clock):
    store.remember_jti("iss", "short", NOW + 10)  # the first call also runs a (then empty) purge
    store.remember_jti("iss", "long", NOW + 1000)
    clock.now = NOW + 100
    store.remember_jti("iss", "no-purge-yet", NOW + 1000)
    assert _jtis(store) == ["long", "no-purge-yet", "short"]

    clock.now = NOW + 300  # five minutes after the last purge: the next insert purges
    store.remember_jti("iss", "later", NOW + 1000)
    assert _jtis(store) == ["later", "long", "no-purge-yet"]

    clock.now = NOW + 1000
    assert store.purge_expired_jtis() == 3
    assert _jtis(store) == []


def _jtis(store: Store) -> list[str]:
    with store.engine.connect() as conn:
        return sorted(conn.execute(sa.select(seen_jti_table.c.jti)).scalars())


def test_in_memory_database_works_across_threads(clock):
    with Store("sqlite://", clock=clock) as db:
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda _: db.remember_jti("iss", "same", NOW + 60), range(8)))
        assert sorted(results) == [False] * 7 + [True]
        assert db.record_feedback(DISCHARGE, [accepted("c1", 0, "s1")]) == 1
        assert db.feedback_summary()["services"][DISCHARGE]["accepted"] == 1


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL database: BRACHY_CDS_TEST_POSTGRES_URL, or a throwaway local server."""
    configured = os.environ.get(URL_ENV)
    if configured:
        yield configured
        return
    server = PostgresTestServer()
    server.start()
    try:
        yield server.url
    finally:
        server.close()


def test_postgresql_round_trip_and_jti_shared_by_two_workers(clock, postgres_url):
    with Store(postgres_url, clock=clock) as first, Store(postgres_url, clock=clock) as second:
        try:
            jti = f"pg-{datetime.now(UTC).timestamp()}"
            assert first.remember_jti("iss", jti, NOW + 60) is True
            assert second.remember_jti("iss", jti, NOW + 60) is False  # another worker sees the replay
            with ThreadPoolExecutor(max_workers=8) as pool:
                stores = [first, second] * 4
                results = list(pool.map(lambda db: db.remember_jti("iss", jti + "-race", NOW + 60), stores))
            assert sorted(results) == [False] * 7 + [True]
            assert first.record_feedback("pg-test", [overridden("c1", 0, NOT_PERFORMED)]) == 1
            summary = second.feedback_summary()["services"]["pg-test"]
            assert summary["overridden"] == 1 and summary["override_reasons"][0]["code"] == "not-performed"
        finally:
            with first.engine.begin() as conn:
                conn.execute(sa.delete(feedback_table).where(feedback_table.c.service_id == "pg-test"))
                conn.execute(sa.delete(seen_jti_table).where(seen_jti_table.c.iss == "iss"))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://user:secret@127.0.0.1:1/brachy", "driver is not installed"),
        ("sqlite:////proc/no-such-folder/brachy.sqlite3", "cannot be created"),
    ],
)
def test_an_unusable_database_stops_start_up_with_one_line_naming_the_variable(url, expected):
    if url.startswith("postgresql") and importlib.util.find_spec("psycopg") is not None:
        expected = "cannot be opened"  # with the driver present, nothing listens on port 1
    with pytest.raises(ConfigError) as caught:
        Store(url)
    message = str(caught.value)
    assert message.startswith("BRACHY_CDS_DATABASE_URL:") and expected in message
    assert "\n" not in message and "secret" not in message


def _open_store(url: str) -> str:
    try:
        Store(url).close()
    except ConfigError as exc:
        return str(exc)
    return "ok"


def test_workers_that_start_together_on_a_fresh_sqlite_file_all_open_it(tmp_path):
    # gunicorn --workers N: each worker creates the tables at the same moment (Dockerfile CMD).
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for attempt in range(8):
        url = f"sqlite:///{tmp_path / f'race-{attempt}' / 'var' / 'brachy.sqlite3'}"
        with context.Pool(3) as pool:
            assert pool.map(_open_store, [url] * 3) == ["ok"] * 3
