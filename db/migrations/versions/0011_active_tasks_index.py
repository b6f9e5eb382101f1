"""An index of the tasks still going, for the outbox sweep (``workers/outbox.py``).

Every scheduler tick looks for active tasks (pending, started, retry) untouched for a
while; finished tasks are most of the table, so the index holds only the active ones.

Revision ID: 0011
Revises: 0017
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0017"
branch_labels = None
depends_on = None

_ACTIVE = "status IN ('pending', 'started', 'retry')"


def upgrade() -> None:
    op.create_index(
        "ix_tasks_active",
        "tasks",
        ["updated_at"],
        postgresql_where=sa.text(_ACTIVE),
        sqlite_where=sa.text(_ACTIVE),
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_active", table_name="tasks")
