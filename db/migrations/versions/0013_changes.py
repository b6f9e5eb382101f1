"""The change feed: ``changes`` (one row per change, ordered by ``position``) and
``accounts.failing_since`` (so ``account.error`` is told once per failure, not per try).

On PostgreSQL ``position`` takes its values from ``changes_position_seq`` (BIGSERIAL) and
the table gets the same forced row-level security policy as the other tenant tables.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

POLICY = """
CREATE POLICY tenant_isolation ON changes
    USING (
        tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid)
        OR (SELECT current_setting('app.scope', true)) = 'system'
    )
    WITH CHECK (
        tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::uuid)
        OR (SELECT current_setting('app.scope', true)) = 'system'
    )
"""


def upgrade() -> None:
    op.create_table(
        "changes",
        sa.Column(
            "position",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=True),
        sa.Column("folder_id", sa.String(length=64), nullable=True),
        sa.Column("message_id", sa.String(length=64), nullable=True),
        sa.Column("task_id", sa.String(length=64), nullable=True),
        sa.Column("occurred_at", sa.BigInteger(), nullable=False),
        sa.Column(
            "data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_changes_owner_position", "changes", ["tenant_id", "user_id", "position"])
    op.create_index("ix_changes_occurred", "changes", ["occurred_at"])
    # A plain ADD COLUMN (SQLite too): no table rebuild, the accounts indexes stay as they are.
    op.add_column("accounts", sa.Column("failing_since", sa.BigInteger(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE changes ENABLE ROW LEVEL SECURITY")
        op.execute("ALTER TABLE changes FORCE ROW LEVEL SECURITY")
        op.execute(POLICY)


def downgrade() -> None:
    with op.batch_alter_table("accounts") as batch_op:
        batch_op.drop_column("failing_since")
    op.drop_index("ix_changes_occurred", table_name="changes")
    op.drop_index("ix_changes_owner_position", table_name="changes")
    op.drop_table("changes")
