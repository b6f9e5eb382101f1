"""Engines and transactions, scoped to one tenant.

``Database.transaction`` is the single way to open a unit of work: it commits on
success, rolls back on error and always closes. On PostgreSQL the tenant is also set
for the transaction (``app.tenant_id``) so the row-level security policies of the
migrations filter every query a second time, behind the service layer's own filters.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from db import changes

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

        return engine
    return create_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


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
        session = self._sessions()
        session.info["tenant_id"] = tenant_id
        session.info["system"] = system
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


def _apply_scope(session: Session, _transaction: Any, connection: Any) -> None:
    tenant = session.info.get("tenant_id")
    connection.execute(
        text("SELECT set_config(:name, :value, true), set_config(:scope, :system, true)"),
        {
            "name": TENANT_SETTING,
            "value": str(tenant) if tenant else "",
            "scope": SCOPE_SETTING,
            "system": "system" if session.info.get("system") else "",
        },
    )
