"""OAuth2 accounts: an authentication type, the provider and its sealed tokens.

An account logs in with a password (as before) or with OAuth2 bearer tokens. The refresh
and access tokens are sealed together (AES-GCM under the credential key ring, bound to the
row like the password); ``oauth2_expires_at`` stays in clear so that deciding whether to
refresh needs no decryption. ``auth_error`` marks an account whose authorization was
revoked, so that the scheduler leaves it alone until its owner reconnects it. An OAuth2
account has no password, so the password columns become nullable.

Revision ID: 0017
Revises: 0013
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(
            sa.Column("auth_type", sa.String(16), nullable=False, server_default="password")
        )
        batch.add_column(sa.Column("oauth2_provider", sa.String(64), nullable=True))
        batch.add_column(sa.Column("oauth2_key_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("oauth2_ciphertext", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("oauth2_expires_at", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("auth_error", sa.Text(), nullable=True))
        batch.alter_column("password_key_id", existing_type=sa.String(64), nullable=True)
        batch.alter_column("password_ciphertext", existing_type=sa.LargeBinary(), nullable=True)
        batch.create_check_constraint(
            "ck_accounts_credentials",
            "(auth_type = 'password' AND password_ciphertext IS NOT NULL)"
            " OR (auth_type = 'oauth2' AND oauth2_ciphertext IS NOT NULL"
            " AND oauth2_provider IS NOT NULL)",
        )


def downgrade() -> None:
    # OAuth2 accounts cannot exist without these columns; they go with them.
    op.execute("DELETE FROM accounts WHERE auth_type = 'oauth2'")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_constraint("ck_accounts_credentials", type_="check")
        batch.alter_column("password_ciphertext", existing_type=sa.LargeBinary(), nullable=False)
        batch.alter_column("password_key_id", existing_type=sa.String(64), nullable=False)
        for column in (
            "auth_error",
            "oauth2_expires_at",
            "oauth2_ciphertext",
            "oauth2_key_id",
            "oauth2_provider",
            "auth_type",
        ):
            batch.drop_column(column)
