"""HTML bodies sanitised when a message is first opened, not when it is synced.

Sanitising HTML was most of the time parsing took during a sync, and nothing a sync
or a list view shows needs it. ``messages.body_html_source`` keeps a synced message's
HTML as the message carries it; the first getMessage sanitises it into ``body_html``
and clears the source, so it is sanitised once. A row has at most one of the two.
Its compression follows ``body_html`` (lz4 where the server has it, see 0002).

Revision ID: 0018
Revises: 0016s
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0016s"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("body_html_source", sa.Text(), nullable=True))
    if op.get_bind().dialect.name != "postgresql":
        return
    has_lz4 = (
        op.get_bind()
        .exec_driver_sql(
            "SELECT count(*) FROM pg_settings WHERE name = 'default_toast_compression' "
            "AND 'lz4' = ANY(enumvals)"
        )
        .scalar()
    )
    if has_lz4:
        op.execute("ALTER TABLE messages ALTER COLUMN body_html_source SET COMPRESSION lz4")


def downgrade() -> None:
    # Rows whose HTML was never opened keep no sanitised copy: sanitise them first.
    from email_service.mail.html import sanitize_html

    bind = op.get_bind()
    rows = bind.execute(
        sa.text("SELECT id, body_html_source FROM messages WHERE body_html_source IS NOT NULL")
    ).all()
    for message_id, source in rows:
        bind.execute(
            sa.text("UPDATE messages SET body_html = :html WHERE id = :id"),
            {"html": sanitize_html(source), "id": message_id},
        )
    op.drop_column("messages", "body_html_source")
