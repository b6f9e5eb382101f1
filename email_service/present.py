"""Rows to the API's JSON shapes. Passwords and storage keys never leave here.

Below the services and the mail store: the use cases answer with these shapes, and the
mail store records them as the ``data`` of the changes it writes (the feed's contract).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from json.encoder import encode_basestring_ascii
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


#: How the API writes every JSON body (README "Performance", P3): compact, no indentation
#: or spaces, keys sorted and non-ASCII escaped as Flask's JSON provider does. Connexion's
#: jsonifier (``email_service.app``), Flask's ``jsonify``, the error bodies, the change
#: stream and ``message_page_json`` all use it.
JSON_SEPARATORS = (",", ":")

# The list entry's keys in the order of ``message_summary``, and the same sorted (as the
# API's JSON is written): ``message_page_json`` writes the sorted order from row tuples
# in the order of ``email_service.services.mailbox.LIST_COLUMNS``.
_SUMMARY_KEYS = (
    "id", "accountId", "folderId", "from", "fromName", "to", "cc", "bcc", "subject",
    "preview", "isRead", "isStarred", "isSpam", "isDeleted", "labels", "attachmentCount",
    "receivedAt", "createdAt", "updatedAt",
)  # fmt: skip
_SORTED = sorted(range(len(_SUMMARY_KEYS)), key=lambda index: _SUMMARY_KEYS[index])
_PREVIEW = _SUMMARY_KEYS.index("preview")
_KEY_PREFIXES = tuple(f'"{_SUMMARY_KEYS[index]}":' for index in _SORTED)


class _NotPlain(Exception):
    """A value ``message_page_json`` does not write itself (the generic encoder does)."""


def _value(value: Any) -> str:
    # The JSON of one value exactly as ``json.dumps(..., separators=JSON_SEPARATORS,
    # sort_keys=True)`` writes it (ensure_ascii, like the API's encoder).
    if isinstance(value, str):
        return encode_basestring_ascii(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if type(value) is int:
        return int.__repr__(value)
    if type(value) is list:
        if not value:
            return "[]"
        if not all(type(item) is str for item in value):
            raise _NotPlain
        return "[" + ",".join(map(encode_basestring_ascii, value)) + "]"
    raise _NotPlain


def message_page_json(rows: Sequence[Sequence[Any]], total: int, limit: int, offset: int) -> str:
    """The listMessages body for ``rows`` (``LIST_COLUMNS`` tuples), already as JSON text.

    The same text, byte for byte, as the API's encoder (Connexion's ``Jsonifier``:
    ``JSON_SEPARATORS``, sorted keys, ASCII, a final newline) makes of ``{"messages":
    [message_summary(row)...], "pagination": ...}``, written directly: the generic
    encoder's walk cost more than the page's query. A value of another kind than the
    list columns hold (str, bool, int, None, a list of str) falls back to that encoder.
    """
    try:
        entries = []
        for row in rows:
            values = list(row[: len(_SUMMARY_KEYS)])
            values[_PREVIEW] = values[_PREVIEW][:200]
            entries.append(
                "{"
                + ",".join(
                    prefix + _value(values[index])
                    for prefix, index in zip(_KEY_PREFIXES, _SORTED, strict=True)
                )
                + "}"
            )
    except (_NotPlain, TypeError):
        return _generic_json(
            {
                "messages": [dict(zip(_SUMMARY_KEYS, row, strict=False)) for row in rows],
                "pagination": {"total": total, "limit": limit, "offset": offset},
            }
        )
    return (
        f'{{"messages":[{",".join(entries)}],"pagination":{{'
        f'"limit":{_value(limit)},"offset":{_value(offset)},"total":{_value(total)}}}}}\n'
    )


def _generic_json(body: dict[str, Any]) -> str:
    from connexion.jsonifier import JSONEncoder

    for entry in body["messages"]:
        entry["preview"] = entry["preview"][:200]
        for key in ("to", "cc", "bcc", "labels"):
            entry[key] = list(entry[key])
    return json.dumps(body, cls=JSONEncoder, separators=JSON_SEPARATORS, sort_keys=True) + "\n"


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
