"""What a pooled PostgreSQL connection sends, read from libpq's trace."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from psycopg import pq

from db.session import Database


def client_messages(trace: str) -> list[str]:
    """The protocol messages the client sent (``F`` lines of libpq's trace)."""
    kinds = []
    for line in trace.splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and fields[0] == "F":
            kinds.append(fields[2].split(" ")[0])
    return kinds


@contextmanager
def traced(database: Database, tenant: uuid.UUID | None, tmp_path: Path) -> Iterator[list[str]]:
    """Trace the connection a transaction of ``tenant`` takes from the pool (the one the
    block's first checkout gets back) while the block runs; the list it gives holds the
    kinds of the messages sent, once the block has ended."""
    with database.transaction(tenant) as session:
        raw = session.connection().connection.dbapi_connection
    assert raw is not None
    sent: list[str] = []
    path = tmp_path / "trace"
    with path.open("w") as out:
        raw.pgconn.trace(out.fileno())
        raw.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            yield sent
        finally:
            raw.pgconn.untrace()
    sent.extend(client_messages(path.read_text()))
