"""An address is unique per tenant *and user*, not per tenant.

Unique per tenant, a second user of the tenant adding an address the first already had
got 409 - which told them who has which address, and let one user block another's
account. Now each user's live accounts are unique by address (case-insensitive, as
before); deleted accounts still free the address.

Downgrade restores the per-tenant index, which fails if two users of one tenant hold
the same live address by then (remove one first).

Revision ID: 0012
Revises: 0016
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_index("uq_accounts_tenant_email_live")
        batch_op.create_index(
            "uq_accounts_user_email_live",
            ["tenant_id", "user_id", "email_normalized"],
            unique=True,
            postgresql_where=sa.text("deleted_at IS NULL"),
            sqlite_where=sa.text("deleted_at IS NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_index("uq_accounts_user_email_live")
        batch_op.create_index(
            "uq_accounts_tenant_email_live",
            ["tenant_id", "email_normalized"],
            unique=True,
            postgresql_where=sa.text("deleted_at IS NULL"),
            sqlite_where=sa.text("deleted_at IS NULL"),
        )
