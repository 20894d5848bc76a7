"""Keep the service's own data: CDS Hooks feedback and the JWT ids already seen.

Contract section 1 ("data"): an embedded SQLite file under ``./var/`` by default,
``BRACHY_CDS_DATABASE_URL`` for anything else (e.g. ``postgresql+psycopg://...``). SQLAlchemy Core,
no ORM. Several workers may share one database, so every check-and-set is one transaction guarded
by a unique constraint. Nothing here ever holds a token, a JWT or a claim other than ``iss``/``jti``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool

from cds_service.config import ConfigError
from cds_service.feedback import FeedbackItem

PURGE_INTERVAL_SECONDS = 300.0
SQLITE_BUSY_TIMEOUT_MS = 10_000
CREATE_ATTEMPTS = 5
"""Attempts at creating the tables (workers starting together race for a fresh database)."""

log = logging.getLogger("brachy_cds.store")

metadata = sa.MetaData()

feedback_table = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("service_id", sa.String(200), nullable=False),
    sa.Column("card_uuid", sa.Text, nullable=False),
    sa.Column("outcome", sa.String(20), nullable=False),
    sa.Column("accepted_suggestions", sa.Text, nullable=False),
    sa.Column("override_code", sa.Text),
    sa.Column("override_system", sa.Text),
    sa.Column("override_display", sa.Text),
    sa.Column("user_comment", sa.Text),
    sa.Column("outcome_timestamp", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_feedback_service_outcome_ts", "service_id", "outcome_timestamp"),
)

seen_jti_table = sa.Table(
    "seen_jti",
    metadata,
    sa.Column("iss", sa.Text, nullable=False),
    sa.Column("jti", sa.Text, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
    sa.UniqueConstraint("iss", "jti", name="uq_seen_jti_iss_jti"),
    sa.Index("ix_seen_jti_expires_at", "expires_at"),
)


class Store:
    """The service database: feedback rows and the replay cache of JWT ids.

    Safe to share between the threads of one process and between processes (gunicorn workers)
    that point at the same database.
    """

    def __init__(self, database_url: str, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._engine, in_memory = _create_engine(database_url)
        # An in-memory SQLite database lives on one shared connection, which threads must take in turn.
        self._serial: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if in_memory else contextlib.nullcontext()
        )
        self._purge_lock = threading.Lock()
        self._next_purge = 0.0
        self._create_tables()

    def _create_tables(self) -> None:
        """Create the tables that are missing; raise StoreUnavailable when the database cannot be used.

        Gunicorn workers start together: two of them can both find a fresh database empty and both
        create a table, and the loser's CREATE TABLE fails ("already exists"). Checking again a moment
        later settles it, so an OperationalError is retried a few times before it counts.
        """
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            try:
                metadata.create_all(self._engine)
                return
            except sa.exc.OperationalError:
                if attempt < CREATE_ATTEMPTS:
                    time.sleep(0.1 * attempt)
                    continue
                exc_name = "OperationalError"
            except sa.exc.SQLAlchemyError as exc:
                exc_name = type(exc.orig or exc).__name__ if isinstance(exc, sa.exc.DBAPIError) else type(exc).__name__
            self._engine.dispose()
            raise StoreUnavailable(f"BRACHY_CDS_DATABASE_URL: the database cannot be opened ({exc_name})") from None

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for tests and maintenance commands)."""
        return self._engine

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def record_feedback(self, service_id: str, items: Iterable[FeedbackItem]) -> int:
        """Store parsed feedback items for ``service_id`` in one transaction; return how many.

        CDS Hooks 2.0 "Feedback" (S2 L827-926): duplicates are expected and kept as received;
        ``feedback_summary`` counts each card once.
        """
        received_at = datetime.fromtimestamp(self._clock(), UTC)
        rows = [
            {
                "received_at": received_at,
                "service_id": service_id,
                "card_uuid": item.card,
                "outcome": item.outcome,
                "accepted_suggestions": json.dumps(list(item.accepted_suggestions)),
                "override_code": item.override_reason.code if item.override_reason else None,
                "override_system": item.override_reason.system if item.override_reason else None,
                "override_display": item.override_reason.display if item.override_reason else None,
                "user_comment": item.user_comment,
                "outcome_timestamp": _utc(item.outcome_timestamp),
            }
            for item in items
        ]
        if rows:
            with self._serial, self._engine.begin() as conn:
                conn.execute(sa.insert(feedback_table), rows)
        return len(rows)

    def remember_jti(self, iss: str, jti: str, expires_at: float) -> bool:
        """Record that ``(iss, jti)`` was used until ``expires_at``; False if it was seen and is still live.

        CDS Hooks best practice (reference J7): a ``jti`` is accepted once within its lifetime. The
        unique constraint makes this atomic across workers: the insert of the loser of a race fails.
        An expired row for the same pair is deleted in the same transaction, so it never blocks.
        """
        now = self._clock()
        try:
            with self._serial, self._engine.begin() as conn:
                conn.execute(
                    sa.delete(seen_jti_table).where(
                        seen_jti_table.c.iss == iss,
                        seen_jti_table.c.jti == jti,
                        seen_jti_table.c.expires_at <= now,
                    )
                )
                conn.execute(sa.insert(seen_jti_table).values(iss=iss, jti=jti, expires_at=float(expires_at)))
        except IntegrityError:
            return False
        self._maybe_purge(now)
        return True

    def purge_expired_jtis(self) -> int:
        """Delete replay-cache rows whose lifetime is over; return how many."""
        now = self._clock()
        with self._serial, self._engine.begin() as conn:
            result = conn.execute(sa.delete(seen_jti_table).where(seen_jti_table.c.expires_at <= now))
        return result.rowcount

    def feedback_summary(self, since: datetime | None = None) -> dict[str, Any]:
        """Summarise feedback per service for billing managers: cards, accepted, overridden, reasons.

        Each card counts once, with its latest outcome (CDS Hooks 2.0 "Feedback": the same card may be
        reported several times). ``since`` (timezone-aware) filters on ``outcomeTimestamp``, the moment
        the user acted. Free-text comments are left out: they may carry patient details.
        """
        t = feedback_table
        latest = (
            sa.select(
                t.c.service_id,
                t.c.outcome,
                t.c.override_code,
                t.c.override_system,
                t.c.override_display,
                sa.func.row_number()
                .over(
                    partition_by=(t.c.service_id, t.c.card_uuid),
                    order_by=(t.c.outcome_timestamp.desc(), t.c.id.desc()),
                )
                .label("rank"),
            )
            .where(t.c.outcome_timestamp >= _utc(since) if since is not None else sa.true())
            .subquery("ranked")
        )
        cards = sa.select(latest).where(latest.c.rank == 1).subquery("cards")
        received = sa.select(t.c.service_id, sa.func.count()).group_by(t.c.service_id)
        if since is not None:
            received = received.where(t.c.outcome_timestamp >= _utc(since))
        outcomes = sa.select(cards.c.service_id, cards.c.outcome, sa.func.count()).group_by(
            cards.c.service_id, cards.c.outcome
        )
        reasons = (
            sa.select(
                cards.c.service_id,
                cards.c.override_system,
                cards.c.override_code,
                sa.func.max(cards.c.override_display),
                sa.func.count(),
            )
            .where(cards.c.outcome == "overridden", cards.c.override_code.is_not(None))
            .group_by(cards.c.service_id, cards.c.override_system, cards.c.override_code)
        )
        services: dict[str, dict[str, Any]] = {}
        with self._serial, self._engine.connect() as conn:
            for service_id, count in conn.execute(received):
                services[service_id] = {
                    "received": count,
                    "count": 0,
                    "accepted": 0,
                    "overridden": 0,
                    "acceptance_rate": 0.0,
                    "override_reasons": [],
                    "overridden_without_reason": 0,
                }
            for service_id, outcome, count in conn.execute(outcomes):
                services[service_id][outcome] = count
                services[service_id]["count"] += count
            for service_id, system, code, display, count in conn.execute(reasons):
                services[service_id]["override_reasons"].append(
                    {"system": system, "code": code, "display": display, "count": count}
                )
        for entry in services.values():
            entry["acceptance_rate"] = round(entry["accepted"] / entry["count"], 4) if entry["count"] else 0.0
            entry["override_reasons"].sort(key=lambda r: (-r["count"], r["system"] or "", r["code"]))
            coded = sum(reason["count"] for reason in entry["override_reasons"])
            entry["overridden_without_reason"] = entry["overridden"] - coded
        return {
            "since": _utc(since).isoformat() if since is not None else None,
            "services": dict(sorted(services.items())),
        }

    def _maybe_purge(self, now: float) -> None:
        """Purge expired jti rows at most once per PURGE_INTERVAL_SECONDS in this process."""
        with self._purge_lock:
            if now < self._next_purge:
                return
            self._next_purge = now + PURGE_INTERVAL_SECONDS
        purged = self.purge_expired_jtis()
        if purged:
            log.debug("purged %d expired jti rows", purged)


class StoreUnavailable(ConfigError):
    """The database named by BRACHY_CDS_DATABASE_URL cannot be used (one-line message, no URL)."""


def _create_engine(database_url: str) -> tuple[Engine, bool]:
    """Build an engine (and say whether it is in memory).

    For SQLite: create the parent folder, use WAL and a busy timeout so several workers can share the
    file, and let the pooled connections move between Flask's threads.
    """
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql" and url.get_driver_name() in ("psycopg2", ""):
        # A plain postgresql:// URL means psycopg 3 here (the `postgresql` extra), not psycopg2.
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() != "sqlite":
        try:
            return sa.create_engine(url, pool_pre_ping=True), False
        except ModuleNotFoundError as exc:
            raise StoreUnavailable(
                f"BRACHY_CDS_DATABASE_URL: the {url.get_backend_name()} driver is not installed ({exc.name});"
                " for PostgreSQL install the extra: pip install 'brachy-cds[postgresql]'"
            ) from None
    database = url.database or ""
    in_memory = database in ("", ":memory:") or url.query.get("mode") == "memory"
    if not in_memory and not database.startswith("file:"):
        try:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(
                f"BRACHY_CDS_DATABASE_URL: the SQLite folder cannot be created ({type(exc).__name__})"
            ) from None
    engine = sa.create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        # One shared connection keeps an in-memory database alive; a file gets the default QueuePool.
        poolclass=StaticPool if in_memory else None,
    )

    @sa.event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    return engine, in_memory


def _utc(moment: datetime) -> datetime:
    """Return ``moment`` in UTC; naive values (as SQLite gives them back) are taken as UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
