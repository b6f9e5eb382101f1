"""A batch of rows into one table in one statement, with little Python per row.

``RowInsert(Model)`` takes rows (dicts) that name every column of the table: a None is
NULL, never "use the default" (so one statement fits every row; see the mail store).

On PostgreSQL the rows go to psycopg as plain sequences in the table's column order,
the JSON columns serialised here, through ``exec_driver_sql``: psycopg sends them as one
pipeline of executions of a prepared INSERT, as it did for the ORM's bulk insert. What
goes is the ORM's and SQLAlchemy's work per row before that (the ORM's insert
bookkeeping, a dict of bound parameters per row and a type processor per value, then
psycopg reordering the named parameters): half of the client's CPU for a sync batch's
message rows. SQLAlchemy still runs the statement, so its events fire and its errors
are raised as before (an ``IntegrityError`` for a refused row, a lost connection
invalidated), and a caller's savepoint and fallback work unchanged.

Not COPY: PostgreSQL refuses ``COPY FROM`` into a table with row-level security
(0A000, "COPY FROM not supported with row-level security"), and the mail tables have
it forced. COPY into a temporary table and ``INSERT ... SELECT`` from it was measured
(100-row batches of bench messages): 0.06 ms of client CPU per row against 0.07 here,
and as much server CPU (twice as much unless the temporary table's bodies are lz4 too),
for a temporary table kept on every pooled connection.

SQLite (the embedded default) keeps the ORM's insert (``RowInsert.orm``) as it was.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import JSON, Insert, insert
from sqlalchemy.orm import Session


def _json(value: Any) -> str:
    # What SQLAlchemy's JSON type writes (json.dumps), without its cost for the empty
    # lists most of a message's list columns hold.
    if value == []:
        return "[]"
    return json.dumps(value)


class RowInsert:
    """The INSERT of one model's rows, each naming every column."""

    def __init__(self, model: Any) -> None:
        self.table = model.__table__
        self.orm: Insert = insert(model).execution_options(render_nulls=True)
        columns = list(self.table.columns)
        self._names = [column.name for column in columns]
        self._values: Callable[[Mapping[str, Any]], tuple[Any, ...]] = operator.itemgetter(
            *self._names
        )
        self._json_at = [n for n, column in enumerate(columns) if isinstance(column.type, JSON)]
        self._sql: str | None = None

    def __call__(self, session: Session, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        connection = session.connection()
        if connection.dialect.name != "postgresql":
            session.execute(self.orm, rows)
            return
        if self._sql is None:
            quote = connection.dialect.identifier_preparer.quote
            # Names from the model, quoted by the dialect; the values are parameters.
            self._sql = (
                f"INSERT INTO {quote(self.table.name)} "  # noqa: S608
                f"({', '.join(quote(name) for name in self._names)}) "
                f"VALUES ({', '.join(['%s'] * len(self._names))})"
            )
        connection.exec_driver_sql(self._sql, [self._params(row) for row in rows])

    def _params(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        values = list(self._values(row))
        for n in self._json_at:
            values[n] = _json(values[n])
        return tuple(values)
