"""SQLAlchemy models. Every table carries ``tenant_id``; timestamps are epoch milliseconds.

Milliseconds as integers are what the API speaks, sort the same on SQLite and
PostgreSQL, and keep the embedded default free of time zone surprises.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id() -> str:
    return str(uuid.uuid4())


# JSONB on PostgreSQL (compact, indexable), plain JSON text on SQLite.
JsonType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JsonType, list[Any]: JsonType}


class TenantMixin:
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    created_at: Mapped[int] = mapped_column(BigInteger, nullable=False, default=now_ms)
    updated_at: Mapped[int] = mapped_column(
        BigInteger, nullable=False, default=now_ms, onupdate=now_ms
    )


class Account(TenantMixin, Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    account_name: Mapped[str] = mapped_column(String(255), nullable=False)
    email_address: Mapped[str] = mapped_column(String(320), nullable=False)
    # Lower-cased address: uniqueness per user ignores case.
    email_normalized: Mapped[str] = mapped_column(String(320), nullable=False)
    protocol: Mapped[str] = mapped_column(String(8), nullable=False)
    hostname: Mapped[str] = mapped_column(String(253), nullable=False)
    port: Mapped[int] = mapped_column(Integer, nullable=False)
    encryption: Mapped[str] = mapped_column(String(16), nullable=False)
    username: Mapped[str] = mapped_column(String(320), nullable=False)
    # "password" or "oauth2" (migration 0017). An OAuth2 account has no password.
    auth_type: Mapped[str] = mapped_column(
        String(16), nullable=False, default="password", server_default="password"
    )
    password_key_id: Mapped[str | None] = mapped_column(String(64))
    password_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    # OAuth2: the provider id (from OAUTH2_PROVIDERS), the refresh and access tokens sealed
    # together (JSON, AES-GCM like the password, bound to the row), and when the access
    # token expires (ms; null when unknown).
    oauth2_provider: Mapped[str | None] = mapped_column(String(64))
    oauth2_key_id: Mapped[str | None] = mapped_column(String(64))
    oauth2_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    oauth2_expires_at: Mapped[int | None] = mapped_column(BigInteger)
    # Why the account cannot log in until its owner updates it (a revoked authorization);
    # the scheduler leaves such an account alone.
    auth_error: Mapped[str | None] = mapped_column(Text)
    smtp_hostname: Mapped[str] = mapped_column(String(253), nullable=False)
    smtp_port: Mapped[int] = mapped_column(Integer, nullable=False)
    smtp_encryption: Mapped[str] = mapped_column(String(16), nullable=False)
    is_sync_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    sync_interval: Mapped[int] = mapped_column(Integer, nullable=False, default=300)
    last_sync_at: Mapped[int | None] = mapped_column(BigInteger)
    is_syncing: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # The sync task currently pending or running for this account, if any.
    sync_task_id: Mapped[str | None] = mapped_column(String(64))
    is_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    deleted_at: Mapped[int | None] = mapped_column(BigInteger)
    # Since when the mail server refuses or cannot be reached (``account.error`` is
    # recorded once when this is set and once when it is cleared); None while healthy.
    failing_since: Mapped[int | None] = mapped_column(BigInteger)

    folders: Mapped[list[Folder]] = relationship(back_populates="account", lazy="raise")

    __table_args__ = (
        # One live account per address and user (migration 0012); deleted ones free the
        # address. Per user, not per tenant: another user's addresses are not disclosed.
        Index(
            "uq_accounts_user_email_live",
            "tenant_id",
            "user_id",
            "email_normalized",
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
            sqlite_where=text("deleted_at IS NULL"),
        ),
        Index("ix_accounts_owner", "tenant_id", "user_id", "created_at"),
    )


class Folder(TenantMixin, Base):
    __tablename__ = "folders"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(Text, nullable=False)
    display_name: Mapped[str] = mapped_column(Text, nullable=False)
    type: Mapped[str] = mapped_column(String(16), nullable=False, default="custom")
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("folders.id", ondelete="SET NULL"))
    delimiter: Mapped[str | None] = mapped_column(String(8))
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    uidnext: Mapped[int | None] = mapped_column(BigInteger)
    highest_modseq: Mapped[int | None] = mapped_column(BigInteger)
    last_seen_uid: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    message_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    unread_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    synced_at: Mapped[int | None] = mapped_column(BigInteger)

    account: Mapped[Account] = relationship(back_populates="folders", lazy="raise")

    __table_args__ = (Index("uq_folders_account_name", "account_id", "name", unique=True),)


class Message(TenantMixin, Base):
    __tablename__ = "messages"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False
    )
    folder_id: Mapped[str] = mapped_column(
        ForeignKey("folders.id", ondelete="CASCADE"), nullable=False
    )
    # IMAP UID within the folder's UIDVALIDITY; null for local copies not yet seen on the
    # server and for POP3 messages (their UIDL is ``pop_uidl``).
    uid: Mapped[int | None] = mapped_column(BigInteger)
    pop_uidl: Mapped[str | None] = mapped_column(String(255))
    modseq: Mapped[int | None] = mapped_column(BigInteger)
    internet_message_id: Mapped[str | None] = mapped_column(Text)
    in_reply_to: Mapped[str | None] = mapped_column(Text)
    references: Mapped[list[Any]] = mapped_column(JsonType, nullable=False, default=list)
    conversation_id: Mapped[str | None] = mapped_column(String(64))
    from_address: Mapped[str] = mapped_column(Text, nullable=False, default="")
    from_name: Mapped[str] = mapped_column(Text, nullable=False, default="")
    to_addresses: Mapped[list[Any]] = mapped_column(JsonType, nullable=False, default=list)
    cc_addresses: Mapped[list[Any]] = mapped_column(JsonType, nullable=False, default=list)
    bcc_addresses: Mapped[list[Any]] = mapped_column(JsonType, nullable=False, default=list)
    reply_to: Mapped[list[Any]] = mapped_column(JsonType, nullable=False, default=list)
    subject: Mapped[str] = mapped_column(Text, nullable=False, default="")
    preview: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    body_text: Mapped[str] = mapped_column(Text, nullable=False, default="")
    # Sanitised HTML; a synced message keeps its HTML as sent in ``body_html_source``
    # until it is first opened, which sanitises it into ``body_html`` (migration 0018).
    body_html: Mapped[str | None] = mapped_column(Text)
    body_html_source: Mapped[str | None] = mapped_column(Text)
    headers: Mapped[dict[str, Any]] = mapped_column(JsonType, nullable=False, default=dict)
    flags: Mapped[list[Any]] = mapped_column(JsonType, nullable=False, default=list)
    labels: Mapped[list[Any]] = mapped_column(JsonType, nullable=False, default=list)
    is_read: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    is_starred: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    is_spam: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    is_deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    is_draft: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    size: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    attachment_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    received_at: Mapped[int] = mapped_column(BigInteger, nullable=False, default=now_ms)
    # Parse problems worth keeping (one bad message never stops a sync).
    defects: Mapped[list[Any]] = mapped_column(JsonType, nullable=False, default=list)
    # Bumped by every local change that still has to be written to the server; the
    # write-back job clears it when done, and sync does not overwrite flags meanwhile.
    pending_changes: Mapped[int] = mapped_column(Integer, nullable=False, default=0)

    __table_args__ = (
        Index("uq_messages_folder_uid", "folder_id", "uid", unique=True),
        # tenant_id and is_read included: list pages and counts are index-only scans
        # (migration 0003).
        Index(
            "ix_messages_folder_received",
            "folder_id",
            "received_at",
            "id",
            postgresql_include=["tenant_id", "is_read"],
        ),
        Index(
            "ix_messages_folder_from",
            "folder_id",
            "from_address",
            "id",
            postgresql_include=["tenant_id", "is_read"],
        ),
        Index("ix_messages_account_msgid", "account_id", "internet_message_id"),
        Index("ix_messages_conversation", "account_id", "conversation_id"),
    )


class Attachment(TenantMixin, Base):
    __tablename__ = "attachments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False
    )
    message_id: Mapped[str] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), nullable=False
    )
    filename: Mapped[str] = mapped_column(Text, nullable=False)
    mime_type: Mapped[str] = mapped_column(String(255), nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    content_id: Mapped[str | None] = mapped_column(Text)
    is_inline: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    storage_key: Mapped[str] = mapped_column(Text, nullable=False)
    sha256: Mapped[str | None] = mapped_column(String(64))
    # Where an IMAP message's part is, to fetch it when first downloaded (migration 0019):
    # its body section ("2", "1.2"; null when the MIME tree could not be read with
    # certainty: the whole message is fetched then) and Content-Transfer-Encoding. The
    # message's folder, UIDVALIDITY and UID are those of its message and folder rows.
    imap_section: Mapped[str | None] = mapped_column(String(64))
    transfer_encoding: Mapped[str | None] = mapped_column(String(32))
    # When the blob was stored under ``storage_key``; null while the bytes are only on
    # the mail server (IMAP attachments until their first download).
    stored_at: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_attachments_message", "message_id"),)


class Draft(TenantMixin, Base):
    __tablename__ = "drafts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False
    )
    payload: Mapped[dict[str, Any]] = mapped_column(JsonType, nullable=False, default=dict)
    internet_message_id: Mapped[str] = mapped_column(Text, nullable=False)
    # Where the draft was appended on the server, once it was.
    folder_name: Mapped[str | None] = mapped_column(Text)
    imap_uid: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")


class Task(TenantMixin, Base):
    """A background job and what became of it. Its id is the Dramatiq message id."""

    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    progress: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    payload: Mapped[dict[str, Any]] = mapped_column(JsonType, nullable=False, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[int | None] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        Index(
            "uq_tasks_idempotency",
            "tenant_id",
            "user_id",
            "kind",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
            sqlite_where=text("idempotency_key IS NOT NULL"),
        ),
        Index("ix_tasks_account", "account_id", "kind", "status"),
        # The outbox sweep's question: which active tasks were untouched for a while.
        Index(
            "ix_tasks_active",
            "updated_at",
            postgresql_where=text("status IN ('pending', 'started', 'retry')"),
            sqlite_where=text("status IN ('pending', 'started', 'retry')"),
        ),
    )


# Integer keys that autoincrement on both databases (SQLite only does so for INTEGER).
SerialKey = BigInteger().with_variant(Integer(), "sqlite")


class Webhook(TenantMixin, Base):
    """A user's HTTP receiver of change events (services/webhooks).

    The signing secret is stored encrypted under the credential key ring; after a rotation
    the previous one keeps signing beside it until ``previous_secret_expires_at``.
    """

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    url: Mapped[str] = mapped_column(Text, nullable=False)
    events: Mapped[list[Any]] = mapped_column(JsonType, nullable=False, default=list)
    # None: every account of the user.
    account_ids: Mapped[list[Any] | None] = mapped_column(JsonType)
    description: Mapped[str | None] = mapped_column(Text)
    secret_key_id: Mapped[str] = mapped_column(String(64), nullable=False)
    secret_ciphertext: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    previous_secret_key_id: Mapped[str | None] = mapped_column(String(64))
    previous_secret_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    previous_secret_expires_at: Mapped[int | None] = mapped_column(BigInteger)
    secret_rotated_at: Mapped[int | None] = mapped_column(BigInteger)
    is_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    disabled_at: Mapped[int | None] = mapped_column(BigInteger)
    # The failure streak: since when no delivery has been taken, and how many attempts.
    failing_since: Mapped[int | None] = mapped_column(BigInteger)
    consecutive_failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_success_at: Mapped[int | None] = mapped_column(BigInteger)
    last_failure_at: Mapped[int | None] = mapped_column(BigInteger)
    # Whoever holds the lease delivers this webhook's queue (one at a time: in order).
    lease_until: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_webhooks_owner", "tenant_id", "user_id", "created_at"),)


class WebhookDelivery(TenantMixin, Base):
    """One change to send to one webhook; ``body`` holds the exact bytes every attempt signs."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(SerialKey, primary_key=True, autoincrement=True)
    webhook_id: Mapped[str] = mapped_column(
        ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False
    )
    # The change's id: the ``webhook-id`` header, the same on every attempt.
    event_id: Mapped[str] = mapped_column(String(64), nullable=False)
    event_type: Mapped[str] = mapped_column(String(64), nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[int] = mapped_column(BigInteger, nullable=False, default=now_ms)
    last_attempt_at: Mapped[int | None] = mapped_column(BigInteger)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        Index("uq_webhook_deliveries_event", "webhook_id", "event_id", unique=True),
        Index("ix_webhook_deliveries_queue", "webhook_id", "status", "id"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    )


class WebhookAttempt(TenantMixin, Base):
    """One HTTP attempt of a delivery: what the receiver answered, how long it took."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(SerialKey, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), nullable=False
    )
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    status_code: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int] = mapped_column(Integer, nullable=False)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "id"),)


class WebhookFanout(TenantMixin, Base):
    """How far one user's change feed has been handed to that user's webhooks."""

    __tablename__ = "webhook_fanouts"

    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    # The last change position whose deliveries were recorded.
    position: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class Change(Base):
    """One change to a user's mail, as ``listChanges`` and the stream tell it.

    ``position`` is the change's place in the feed: assigned as the transaction that
    records the change commits (``db.changes``), so positions grow in commit order for
    each user. There is no foreign key to what a change names: a change outlives it.
    """

    __tablename__ = "changes"

    position: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    type: Mapped[str] = mapped_column(String(32), nullable=False)
    account_id: Mapped[str | None] = mapped_column(String(64))
    folder_id: Mapped[str | None] = mapped_column(String(64))
    message_id: Mapped[str | None] = mapped_column(String(64))
    task_id: Mapped[str | None] = mapped_column(String(64))
    occurred_at: Mapped[int] = mapped_column(BigInteger, nullable=False)
    data: Mapped[dict[str, Any]] = mapped_column(JsonType, nullable=False, default=dict)

    __table_args__ = (
        Index("ix_changes_owner_position", "tenant_id", "user_id", "position"),
        Index("ix_changes_occurred", "occurred_at"),
        # Never reuse a position once its row is pruned (SQLite would reuse the largest).
        {"sqlite_autoincrement": True},
    )


TENANT_TABLES = (
    "accounts",
    "folders",
    "messages",
    "attachments",
    "drafts",
    "tasks",
    "webhooks",
    "webhook_deliveries",
    "webhook_attempts",
    "webhook_fanouts",
    "changes",
)
