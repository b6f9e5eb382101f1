"""The search index covers whole bodies: a mark for entries still holding only a prefix.

Sync indexes the first 600 characters of a body in the transaction that stores the
message and marks the entry ``pending`` when the body is longer; a background job
(``email_service.services.search.fullindex``) completes it after the commit. The entries
made before this migration hold prefixes too, so those of long bodies are marked here
and the scheduler's sweep has them completed once the service runs.

PostgreSQL: ``message_search.pending`` with a partial index (only marked rows are in it,
so the sweep and the job find them without reading the table). SQLite: the same on
``message_search_rows``.

Revision ID: 0018f
Revises: 0019
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0018f"
down_revision = "0019"
branch_labels = None
depends_on = None

# 600: db.textindex.BODY_PREFIX_CHARS when this migration was written.


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE message_search ADD COLUMN pending boolean NOT NULL DEFAULT false")
        op.execute(
            "CREATE INDEX ix_message_search_pending ON message_search (tenant_id) WHERE pending"
        )
        op.execute("SELECT set_config('app.scope', 'system', true)")
        op.execute(
            "UPDATE message_search s SET pending = true FROM messages m"
            " WHERE m.id = s.message_id AND length(m.body_text) > 600"
        )
    else:
        op.execute("ALTER TABLE message_search_rows ADD COLUMN pending INTEGER NOT NULL DEFAULT 0")
        op.execute(
            "CREATE INDEX ix_message_search_rows_pending ON message_search_rows (message_id)"
            " WHERE pending = 1"
        )
        op.execute(
            "UPDATE message_search_rows SET pending = 1 WHERE message_id IN"
            " (SELECT id FROM messages WHERE length(body_text) > 600)"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_message_search_pending")
        op.execute("ALTER TABLE message_search DROP COLUMN pending")
    else:
        op.execute("DROP INDEX IF EXISTS ix_message_search_rows_pending")
        op.execute("ALTER TABLE message_search_rows DROP COLUMN pending")
