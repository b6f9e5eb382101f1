"""Test data builders: accounts through the API, mailbox content through the models."""

from __future__ import annotations

import hashlib
import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any

from db.models import Attachment, Folder, Message, new_id, now_ms
from email_service.identity import Caller
from email_service.runtime import Runtime
from email_service.scope import open_scope

_counter = itertools.count(1)


def account_body(**overrides: Any) -> dict[str, Any]:
    n = next(_counter)
    body: dict[str, Any] = {
        "accountName": f"Account {n}",
        "emailAddress": f"user{n}-{uuid.uuid4().hex[:6]}@example.test",
        "protocol": "imap",
        "hostname": "imap.example.test",
        "port": 993,
        "encryption": "tls",
        "username": f"user{n}",
        "password": f"pw-{uuid.uuid4().hex}",
    }
    body.update(overrides)
    return body


def create_account(client: Any, headers: dict[str, str], **overrides: Any) -> dict[str, Any]:
    response = client.post("/api/accounts", json=account_body(**overrides), headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


@dataclass
class SeededAttachment:
    filename: str
    mime_type: str
    data: bytes
    content_id: str | None = None
    is_inline: bool = False


@dataclass
class SeededMessage:
    subject: str
    from_address: str = "sender@example.test"
    received_at: int = field(default_factory=now_ms)
    is_read: bool = False
    body_text: str = "Hello"
    body_html: str | None = None
    attachments: list[SeededAttachment] = field(default_factory=list)
    conversation_id: str | None = None


def seed_folder(
    runtime: Runtime,
    caller: Caller,
    account_id: str,
    name: str = "INBOX",
    folder_type: str = "inbox",
    messages: list[SeededMessage] | None = None,
    parent_id: str | None = None,
) -> tuple[str, list[str], list[str]]:
    """Insert a folder with messages; returns (folder id, message ids, attachment ids)."""
    message_ids: list[str] = []
    attachment_ids: list[str] = []
    with open_scope(runtime, caller) as scope:
        folder = Folder(
            id=new_id(),
            tenant_id=caller.tenant_id,
            account_id=account_id,
            name=name,
            display_name=name.rsplit("/", 1)[-1].title()
            if name == "INBOX"
            else name.rsplit("/", 1)[-1],
            type=folder_type,
            parent_id=parent_id,
            delimiter="/",
            message_count=len(messages or []),
            unread_count=sum(1 for m in messages or [] if not m.is_read),
            synced_at=now_ms(),
        )
        scope.session.add(folder)
        scope.session.flush()
        for uid, item in enumerate(messages or [], start=1):
            message = Message(
                id=new_id(),
                tenant_id=caller.tenant_id,
                account_id=account_id,
                folder_id=folder.id,
                uid=uid,
                internet_message_id=f"{uuid.uuid4().hex}@example.test",
                subject=item.subject,
                from_address=item.from_address,
                to_addresses=["owner@example.test"],
                preview=item.body_text[:200],
                body_text=item.body_text,
                body_html=item.body_html,
                headers={"Subject": item.subject, "From": item.from_address},
                is_read=item.is_read,
                received_at=item.received_at,
                attachment_count=len(item.attachments),
                conversation_id=item.conversation_id,
            )
            scope.session.add(message)
            scope.session.flush()
            message_ids.append(message.id)
            for part in item.attachments:
                digest = hashlib.sha256(part.data).hexdigest()
                key = f"{caller.tenant_id}/{account_id}/{digest}"
                runtime.blobs.put(key, part.data, part.mime_type)
                attachment = Attachment(
                    id=new_id(),
                    tenant_id=caller.tenant_id,
                    account_id=account_id,
                    message_id=message.id,
                    filename=part.filename,
                    mime_type=part.mime_type,
                    size=len(part.data),
                    content_id=part.content_id,
                    is_inline=part.is_inline,
                    storage_key=key,
                    sha256=digest,
                    stored_at=now_ms(),  # its blob was put just above
                )
                scope.session.add(attachment)
                scope.session.flush()
                attachment_ids.append(attachment.id)
        folder_id = folder.id
    return folder_id, message_ids, attachment_ids
