"""The search index: a tsvector per message with a GIN index (PostgreSQL), FTS5 (SQLite).

PostgreSQL: ``message_search`` holds one ``tsvector`` per message (made by
``email_service.textindex``, which folds and cuts the text the same way for documents
and queries, so no dictionary, extension or stemming language is involved), under the
same row-level security policy as every tenant table. Its foreign key removes a
message's entry with the message. ``ix_messages_tenant_received`` lets a search read a
user's newest messages first across all folders and accounts and stop at one page,
which is the cheap plan for common words and for filters without words.

SQLite: the FTS5 table ``message_search`` (one column per searchable field, ``ascii``
tokenizer: it splits on the spaces between our tokens), keyed by the integer id of
``message_search_rows``, whose foreign key follows the message and whose trigger removes
the FTS5 row.

Messages already stored are indexed here, in batches.

Revision ID: 0016
Revises: 0013w
Create Date: 2026-12-03
"""

from __future__ import annotations

from typing import Any

from alembic import op
from sqlalchemy import bindparam, text

revision = "0016"
down_revision = "0013w"
branch_labels = None
depends_on = None

POLICY = """
CREATE POLICY tenant_isolation ON message_search
    USING (
        tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid)
        OR (SELECT current_setting('app.scope', true)) = 'system'
    )
    WITH CHECK (
        tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid)
        OR (SELECT current_setting('app.scope', true)) = 'system'
    )
"""

_BACKFILL_BATCH = 500


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(
            "CREATE TABLE message_search ("
            " message_id varchar(64) PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,"
            " tenant_id uuid NOT NULL,"
            " document tsvector NOT NULL)"
        )
        op.execute("CREATE INDEX ix_message_search_document ON message_search USING gin (document)")
        op.execute("ALTER TABLE message_search ENABLE ROW LEVEL SECURITY")
        op.execute("ALTER TABLE message_search FORCE ROW LEVEL SECURITY")
        op.execute(POLICY)
        # Documents are a few kilobytes: lz4 compresses them for a fraction of pglz's
        # CPU, which sync pays for every message (as for the bodies, migration 0002).
        has_lz4 = bind.exec_driver_sql(
            "SELECT count(*) FROM pg_settings WHERE name = 'default_toast_compression' "
            "AND 'lz4' = ANY(enumvals)"
        ).scalar()
        if has_lz4:
            op.execute("ALTER TABLE message_search ALTER COLUMN document SET COMPRESSION lz4")
        op.execute(
            "CREATE INDEX ix_messages_tenant_received ON messages (tenant_id, received_at, id)"
        )
        # The backfill reads every tenant's messages.
        op.execute("SELECT set_config('app.scope', 'system', true)")
    else:
        op.execute(
            "CREATE TABLE message_search_rows ("
            " id INTEGER PRIMARY KEY,"
            " message_id VARCHAR(64) NOT NULL UNIQUE REFERENCES messages(id) ON DELETE CASCADE)"
        )
        op.execute(
            "CREATE VIRTUAL TABLE message_search USING fts5("
            "subject, sender, recipients, copied, filenames, body, tokenize = 'ascii')"
        )
        op.execute(
            "CREATE TRIGGER message_search_rows_delete AFTER DELETE ON message_search_rows "
            "BEGIN DELETE FROM message_search WHERE rowid = old.id; END"
        )
        op.execute(
            "CREATE INDEX ix_messages_tenant_received ON messages (tenant_id, received_at, id)"
        )
    _backfill(bind)


def _backfill(bind: Any) -> None:
    from db.textindex import BODY_PREFIX_CHARS, SearchDocument, index_messages

    last = ""
    while True:
        rows = bind.execute(
            text(
                "SELECT id, tenant_id, subject, from_name, from_address, to_addresses,"
                " cc_addresses, substr(body_text, 1, :prefix) AS body FROM messages"
                " WHERE id > :last ORDER BY id LIMIT :n"
            ),
            {"last": last, "n": _BACKFILL_BATCH, "prefix": BODY_PREFIX_CHARS},
        ).all()
        if not rows:
            break
        last = rows[-1].id
        names: dict[str, list[str]] = {}
        for message_id, filename in bind.execute(
            text(
                "SELECT message_id, filename FROM attachments WHERE message_id IN :ids"
            ).bindparams(bindparam("ids", expanding=True)),
            {"ids": [row.id for row in rows]},
        ):
            names.setdefault(message_id, []).append(filename)
        by_tenant: dict[Any, list[SearchDocument]] = {}
        for row in rows:
            by_tenant.setdefault(row.tenant_id, []).append(
                SearchDocument.of(
                    row.id,
                    subject=row.subject,
                    from_name=row.from_name,
                    from_address=row.from_address,
                    to=_strings(row.to_addresses),
                    cc=_strings(row.cc_addresses),
                    filenames=names.get(row.id, []),
                    body_text=row.body,
                )
            )
        for tenant_id, documents in by_tenant.items():
            # The mark for entries to complete comes with migration 0018, which sets it.
            index_messages(bind, tenant_id, documents, track_pending=False)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):  # SQLite returns JSON as text here
        import json

        value = json.loads(value)
    return [str(item) for item in value or []]


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_messages_tenant_received")
        op.execute("DROP TABLE IF EXISTS message_search")
    else:
        op.execute("DROP INDEX IF EXISTS ix_messages_tenant_received")
        op.execute("DROP TRIGGER IF EXISTS message_search_rows_delete")
        op.execute("DROP TABLE IF EXISTS message_search")
        op.execute("DROP TABLE IF EXISTS message_search_rows")
