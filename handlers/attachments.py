from __future__ import annotations

import flask

from email_service.blobstore import content_disposition
from email_service.mail.mime import storable_media_type
from email_service.runtime import get_runtime
from email_service.services import attachments, mailbox
from email_service.web.context import request_scope


def download_attachment(account_id: str, attachment_id: str) -> flask.Response:
    with request_scope() as scope:
        content = mailbox.open_attachment(scope, account_id, attachment_id)
    if isinstance(content, attachments.PartSource):
        # First download of an IMAP attachment: fetched from the mail server now, with
        # no transaction open meanwhile.
        content = attachments.download(get_runtime(), content)
    return flask.Response(
        content.chunks,
        # Rows stored before types were bounded at parsing may hold one that is no
        # safe header value.
        mimetype=storable_media_type(content.mime_type),
        headers={
            "Content-Disposition": content_disposition(content.filename),
            "Content-Length": str(content.size),
            "X-Content-Type-Options": "nosniff",
        },
    )
