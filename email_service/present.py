"""Rows to the API's JSON shapes. Passwords and storage keys never leave here.

Below the services and the mail store: the use cases answer with these shapes, and the
mail store records them as the ``data`` of the changes it writes (the feed's contract).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from db.models import Account, Attachment, Folder, Message, Task


def account(row: Account, *, with_username: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": row.id,
        "tenantId": str(row.tenant_id),
        "userId": str(row.user_id),
        "accountName": row.account_name,
        "emailAddress": row.email_address,
        "protocol": row.protocol,
        "hostname": row.hostname,
        "port": row.port,
        "encryption": row.encryption,
        "smtpHostname": row.smtp_hostname,
        "smtpPort": row.smtp_port,
        "smtpEncryption": row.smtp_encryption,
        "isSyncEnabled": row.is_sync_enabled,
        "syncInterval": row.sync_interval,
        "lastSyncAt": row.last_sync_at,
        "isSyncing": row.is_syncing,
        "isEnabled": row.is_enabled,
        "authType": row.auth_type,
        "oauth2Provider": row.oauth2_provider,
        "authError": row.auth_error,
        "createdAt": row.created_at,
        "updatedAt": row.updated_at,
    }
    if with_username:
        body["username"] = row.username
    return body


def folder(row: Folder) -> dict[str, Any]:
    return {
        "id": row.id,
        "accountId": row.account_id,
        "name": row.name,
        "displayName": row.display_name,
        "type": row.type,
        "parentId": row.parent_id,
        "messageCount": row.message_count,
        "unreadCount": row.unread_count,
        "syncedAt": row.synced_at,
    }


def message_summary(row: Message | Row[Any]) -> dict[str, Any]:
    """A message's list entry, from its row or from a row of its summary columns."""
    return {
        "id": row.id,
        "accountId": row.account_id,
        "folderId": row.folder_id,
        "from": row.from_address,
        "fromName": row.from_name,
        "to": list(row.to_addresses),
        "cc": list(row.cc_addresses),
        "bcc": list(row.bcc_addresses),
        "subject": row.subject,
        "preview": row.preview[:200],
        "isRead": row.is_read,
        "isStarred": row.is_starred,
        "isSpam": row.is_spam,
        "isDeleted": row.is_deleted,
        "labels": list(row.labels),
        "attachmentCount": row.attachment_count,
        "receivedAt": row.received_at,
        "createdAt": row.created_at,
        "updatedAt": row.updated_at,
    }


def message_detail(row: Message, attachments: list[dict[str, Any]]) -> dict[str, Any]:
    body = message_summary(row)
    body.update(
        {
            "body": row.body_text,
            "bodyHtml": row.body_html,
            "headers": {str(k): str(v) for k, v in row.headers.items()},
            "attachments": attachments,
            "conversationId": row.conversation_id,
            "internetMessageId": row.internet_message_id,
        }
    )
    return body


def attachment(row: Attachment, download_url: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": row.id,
        "messageId": row.message_id,
        "filename": row.filename,
        "mimeType": row.mime_type,
        "size": row.size,
        "contentId": row.content_id,
        "isInline": row.is_inline,
    }
    if download_url:
        body["downloadUrl"] = download_url
    return body


def task(row: Task) -> dict[str, Any]:
    return {
        "taskId": row.id,
        "kind": row.kind,
        "status": row.status,
        "progress": row.progress,
        "result": row.result,
        "error": row.error,
        "createdAt": row.created_at,
        "updatedAt": row.updated_at,
    }
