"""Row-level security on every tenant table, and lz4 compression for message bodies.

PostgreSQL only. Each tenant table admits a row only when its ``tenant_id`` equals the
transaction's ``app.tenant_id`` setting (set by ``db.session``), or when the transaction
declared the cross-tenant ``system`` scope (scheduler and maintenance commands).
FORCE makes the policies bind the table owner too: the service normally connects as the
owner, and superusers bypass RLS whatever we do, so production must not connect as one.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TENANT_TABLES = ("accounts", "folders", "messages", "attachments", "drafts", "tasks")

POLICY = """
CREATE POLICY tenant_isolation ON {table}
    USING (
        tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid
        OR current_setting('app.scope', true) = 'system'
    )
    WITH CHECK (
        tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid
        OR current_setting('app.scope', true) = 'system'
    )
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TENANT_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(POLICY.format(table=table))
    # Bodies dominate insert time: lz4 compresses them about twice as fast as pglz
    # (see shared/notes/performance-facts.md). Only where the server was built with lz4.
    has_lz4 = (
        op.get_bind()
        .exec_driver_sql(
            "SELECT count(*) FROM pg_settings WHERE name = 'default_toast_compression' "
            "AND 'lz4' = ANY(enumvals)"
        )
        .scalar()
    )
    if has_lz4:
        for column in ("body_text", "body_html", "headers"):
            op.execute(f"ALTER TABLE messages ALTER COLUMN {column} SET COMPRESSION lz4")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TENANT_TABLES:
        op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
