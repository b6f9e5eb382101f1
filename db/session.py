"""Engines and transactions, scoped to one tenant.

``Database.transaction`` is the single way to open a unit of work: it commits on
success, rolls back on error and always closes. On PostgreSQL the tenant is also set
for the transaction (``app.tenant_id``) so the row-level security policies of the
migrations filter every query a second time, behind the service layer's own filters.
"""

from __future__ import annotations

import contextlib
import functools
import select
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import create_engine, event, exc, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from db import changes, textindex

TENANT_SETTING = "app.tenant_id"
SCOPE_SETTING = "app.scope"


def make_engine(url: str, *, pool_size: int = 12, echo: bool = False) -> Engine:
    """An engine tuned for this service: pool sized for Connexion's ~10 threads."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": 30},
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            # WAL lets the API read while the in-process worker writes.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        event.listen(engine, "savepoint", _savepoint_in_a_transaction)
        return engine
    # No pre-ping (a round trip on every checkout): a connection is recycled after a
    # while, one the server has closed is noticed at checkout without a round trip
    # (``_closed_by_server``), and a transaction whose first statement finds its
    # connection dead starts again once on a fresh one (``Database.transaction``).
    engine = create_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=600,
    )
    event.listen(engine, "checkout", _closed_by_server)
    return engine


def _savepoint_in_a_transaction(conn: Any, _name: str) -> None:
    """Begin the transaction a savepoint is about to open in, if none has begun yet.

    Python 3.11's sqlite3 (legacy transaction control) begins a transaction only before
    an INSERT, UPDATE or DELETE; a SAVEPOINT run first opened a transaction of its own
    and its RELEASE committed, so the rows were seen by everyone at once and stayed
    when the unit of work rolled back. The transaction begun here holds them until the
    unit of work commits or rolls back.

    IMMEDIATE: a savepoint is only opened to write, and taking the write lock now waits
    for another writer (the 30 s busy timeout). Reads before the savepoint ran outside
    the transaction (as legacy control runs them), so no stale snapshot stands in the
    way; a DEFERRED transaction that read first could not take the lock once another
    connection had committed (SQLITE_BUSY_SNAPSHOT, not retried by the busy handler).
    We do not take SQLAlchemy's recipe of a BEGIN at every transaction's first
    statement for that reason: with DEFERRED, a request that reads and then writes
    while the in-process worker commits would fail with "database is locked"; with
    IMMEDIATE, every read-only request would wait behind the worker's writes.
    """
    dbapi_conn = conn.connection.dbapi_connection
    if not dbapi_conn.in_transaction:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


# PostgreSQL errors about the connection or the transaction, not about the rows a
# statement wrote (SQLSTATE classes, then single codes): connection exception,
# transaction rollback (serialization failure 40001, deadlock 40P01), insufficient
# resources (too many connections, disk full), operator intervention (shutdown, a
# cancelled statement), system error; a lock not had in time (lock_timeout, 55P03) and
# an object in use (55006).
_PG_PASSING_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_PG_PASSING_STATES = frozenset({"55P03", "55006"})
# SQLite's primary result codes of the same kind: BUSY ("database is locked": another
# connection held the write lock past the busy timeout), LOCKED, NOMEM, READONLY,
# INTERRUPT, IOERR, FULL, CANTOPEN, PROTOCOL.
_SQLITE_PASSING_CODES = frozenset({5, 6, 7, 8, 9, 10, 13, 14, 15})


def passing_trouble(error: exc.DBAPIError) -> bool:
    """Whether ``error`` is about the connection or the transaction, not the rows.

    A lost connection, a lock another transaction held too long, a serialization
    failure or deadlock, a server going down or out of space: the same statements can
    succeed on another try, so a caller that would take a failed write for a refusal of
    its rows (and store them one by one, skipping the refused) re-raises these instead,
    and the job runs again (``email_service.jobs.infrastructure_trouble`` asks this
    function, so these and only these database errors are outages). A unique or foreign
    key violation, a value the column cannot hold, a program limit (an index entry or a
    tsvector too large) are about the rows: another try fails the same way.
    """
    if error.connection_invalidated or isinstance(error, exc.InterfaceError):
        return True
    original = error.orig
    state = getattr(original, "sqlstate", None)
    if isinstance(state, str):
        return state[:2] in _PG_PASSING_CLASSES or state in _PG_PASSING_STATES
    code = getattr(original, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in _SQLITE_PASSING_CODES  # extended codes keep the primary's
    # psycopg's own OperationalError, with no SQLSTATE: the server never answered (a
    # refused or failed connection, a socket closed under a statement).
    return isinstance(original, psycopg.OperationalError)


def _closed_by_server(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """Refuse a pooled connection the server has ended; the pool then opens another.

    An idle connection has nothing to read: when its socket is readable, the server has
    closed it (a restart, ``pg_terminate_backend``, an idle timeout - it sends its FATAL
    and hangs up) or sent something unasked. Either way it is not handed out.
    """
    if getattr(dbapi_conn, "closed", False) or getattr(dbapi_conn, "broken", False):
        raise exc.DisconnectionError("the connection is closed")
    try:
        fd = dbapi_conn.pgconn.socket
    except Exception as error:  # psycopg raises when the connection is already gone
        raise exc.DisconnectionError("the connection has no socket") from error
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    if poller.poll(0):
        raise exc.DisconnectionError("the server ended the connection")


class Database:
    """A configured engine plus the session factory all units of work come from."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_postgres = engine.dialect.name == "postgresql"
        self._sessions = sessionmaker(bind=engine, expire_on_commit=False)
        if self.is_postgres:
            event.listen(self._sessions, "after_begin", _apply_scope)
        # Recorded changes are written (and positioned) as each transaction commits.
        changes.install(self._sessions)
        # Search entries left to complete are announced after the commit.
        textindex.install(self._sessions)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Database:
        return cls(make_engine(url, **kwargs))

    @contextmanager
    def transaction(
        self, tenant_id: uuid.UUID | None = None, *, system: bool = False
    ) -> Iterator[Session]:
        """One unit of work for one tenant (or, with ``system``, across tenants).

        Only the scheduler and maintenance commands use ``system``; request and job
        code always names its tenant.
        """
        session = self._begin(tenant_id, system)
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def commit_one(
        self, tenant_id: uuid.UUID, sql: str, params: dict[str, Any]
    ) -> list[tuple[Any, ...]]:
        """One statement in a transaction of its own, committed when this returns: its rows.

        PostgreSQL only. BEGIN, the tenant's settings, the statement and COMMIT go to the
        server as one pipeline, one round trip, where a unit of work takes one for the
        BEGIN, one per statement and one for the COMMIT. For a single write that must be
        durable at once and alone (a send's record that the SMTP server took the
        message). ``sql`` is a psycopg query (``%(name)s`` parameters). If anything
        fails, nothing is committed; errors are raised as SQLAlchemy's (a lost connection
        with ``connection_invalidated``), as a unit of work raises them.
        """
        if not self.is_postgres:
            raise RuntimeError("commit_one is for PostgreSQL")
        import psycopg
        from psycopg import pq

        tenant = str(uuid.UUID(str(tenant_id)))
        # Autocommit for this checkout (SQLAlchemy restores the mode at check-in): the
        # pipeline carries its own BEGIN and COMMIT, and psycopg adds none.
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            raw = conn.connection.dbapi_connection
            assert isinstance(raw, psycopg.Connection)
            statement = raw.cursor()
            try:
                with raw.pipeline():
                    raw.execute("BEGIN")
                    raw.execute(_SETTINGS, {"tenant": tenant})
                    statement.execute(sql.encode(), params)
                    raw.execute("COMMIT")
                return list(statement.fetchall())
            except psycopg.Error as error:
                if not raw.broken and raw.pgconn.transaction_status != pq.TransactionStatus.IDLE:
                    # The statement failed: the pipeline skipped COMMIT, and the
                    # transaction it began waits, aborted, for its ROLLBACK.
                    with contextlib.suppress(psycopg.Error):
                        raw.execute("ROLLBACK")
                if raw.broken:
                    conn.invalidate(error)
                raise exc.DBAPIError.instance(
                    sql, params, error, psycopg.Error, connection_invalidated=raw.broken
                ) from error
            finally:
                statement.close()

    def _begin(self, tenant_id: uuid.UUID | None, system: bool) -> Session:
        """A session for the unit of work, its transaction begun on PostgreSQL.

        Beginning runs the first statement (the tenant's ``set_config``). If that finds
        the connection dead - one the checkout could not tell had gone - nothing of the
        unit of work has run yet: it starts once more, on a fresh connection.
        """
        for attempt in (1, 2):
            session = self._sessions()
            session.info["tenant_id"] = tenant_id
            session.info["system"] = system
            if not self.is_postgres:
                return session
            try:
                session.connection()
            except exc.DBAPIError as error:
                session.close()
                if attempt == 2 or not error.connection_invalidated:
                    raise
                continue
            return session
        raise AssertionError("unreachable")

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


def _apply_scope(session: Session, transaction: Any, connection: Any) -> None:
    """Begin the transaction with the tenant (and scope) set, in one round trip.

    psycopg would send a BEGIN of its own before the first statement, and wait for its
    answer (in a pipeline too): two round trips with the ``set_config``. Both go here as
    one simple query instead; psycopg then finds the transaction begun and sends no
    BEGIN. The values are a UUID's canonical text and a fixed word, so they are written
    into the query as literals. Errors are raised as SQLAlchemy's, and a connection found
    lost is invalidated with the pool's older ones, as SQLAlchemy's own handling does
    (``Database._begin`` then starts the unit of work once more, on a fresh one).
    """
    from psycopg import pq

    if transaction.nested:
        # A savepoint (``begin_nested``) inside the session's transaction: the settings
        # were made when that began (SQLAlchemy begins the outer one first), and stay in
        # force in the savepoint; setting them again was a round trip per savepoint.
        return
    tenant = session.info.get("tenant_id")
    query = _begin_query(
        str(uuid.UUID(str(tenant))) if tenant else "",
        "system" if session.info.get("system") else "",
    )
    raw = connection.connection.dbapi_connection
    if raw.pgconn.transaction_status != pq.TransactionStatus.IDLE:
        # Begun already (a session joining a connection's transaction): set it in there.
        connection.exec_driver_sql(query.split(b"; ", 1)[1].decode())
        return
    simple_query(connection, query)


def simple_query(connection: Any, query: bytes) -> str | None:
    """Run ``query`` on ``connection`` as one simple query; the first value of its result.

    Straight through libpq, without the driver's and SQLAlchemy's statement machinery:
    for the statements every unit of work or lock runs (``BEGIN`` with the settings, an
    advisory lock). Outside a transaction it runs in an implicit one of its own (no BEGIN
    is sent). Only literals the caller made safe may be in ``query``. Errors are raised
    as SQLAlchemy's, and a connection found lost is invalidated with the pool's older
    ones, as SQLAlchemy's own handling does.
    """
    import psycopg
    from psycopg import pq

    raw = connection.connection.dbapi_connection
    try:
        with raw.lock:
            result = raw.pgconn.exec_(query)
        if result.status != pq.ExecStatus.TUPLES_OK:
            raise psycopg.errors.error_from_result(result)
    except psycopg.Error as error:
        # libpq's own errors (the connection went away) carry no SQLSTATE; the server's
        # goodbyes are class 08 (connection exception) or 57P (operator intervention).
        state = error.sqlstate or ""
        lost = bool(
            raw.broken
            or raw.pgconn.status == pq.ConnStatus.BAD
            or not state
            or state.startswith(("08", "57P"))
            or connection.dialect.is_disconnect(error, raw, None)
        )
        if lost:
            # What SQLAlchemy does on a lost connection: the pooled connections opened
            # before it are replaced at their next checkout, and this one is dropped.
            connection.engine.pool._invalidate(connection.connection, error)
            connection.invalidate(error)
        raise exc.DBAPIError.instance(
            query.decode(), None, error, psycopg.Error, connection_invalidated=lost
        ) from error
    if result.ntuples == 0 or result.nfields == 0:
        return None
    value = result.get_value(0, 0)
    return None if value is None else bytes(value).decode()


# The tenant's settings of ``Database.commit_one`` (a parameter there: a pipeline uses
# the extended protocol, one statement per message).
_SETTINGS = (
    f"SELECT set_config('{TENANT_SETTING}', %(tenant)s, true), "
    f"set_config('{SCOPE_SETTING}', '', true)"
).encode()


@functools.lru_cache(maxsize=4096)
def _begin_query(tenant: str, scope: str) -> bytes:
    """``BEGIN`` and the settings of a transaction; ``tenant`` is a UUID's text or empty,
    ``scope`` ``system`` or empty (checked: they are written in as literals)."""
    if (tenant and str(uuid.UUID(tenant)) != tenant) or scope not in ("", "system"):
        raise ValueError("not a tenant id or a scope")
    return (
        f"BEGIN; SELECT set_config('{TENANT_SETTING}', '{tenant}', true), "
        f"set_config('{SCOPE_SETTING}', '{scope}', true)"
    ).encode()
