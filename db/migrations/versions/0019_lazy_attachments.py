"""Attachments of IMAP mail are stored when first downloaded, not at sync.

A sync records each attachment (name, type, size, SHA-256) with where it is on the server:
the message's folder, UIDVALIDITY and UID are those of its message row and folder; the
part's IMAP body section (``"2"``, ``"1.2"``) and its Content-Transfer-Encoding are new
here. ``stored_at`` says when the attachment's blob was stored; null means the bytes are
still only on the mail server, and the first download fetches them. Every attachment
stored so far has its blob, so it counts as stored when it was created.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("attachments") as batch:
        batch.add_column(sa.Column("imap_section", sa.String(64), nullable=True))
        batch.add_column(sa.Column("transfer_encoding", sa.String(32), nullable=True))
        batch.add_column(sa.Column("stored_at", sa.BigInteger(), nullable=True))
    op.execute("UPDATE attachments SET stored_at = created_at")


def downgrade() -> None:
    # Attachments not yet fetched have no blob; without these columns nothing could
    # fetch them, so their rows go (their messages stay, listing fewer attachments).
    op.execute("DELETE FROM attachments WHERE stored_at IS NULL")
    with op.batch_alter_table("attachments") as batch:
        for column in ("stored_at", "transfer_encoding", "imap_section"):
            batch.drop_column(column)
