"""Folders, message pages, message details and attachment downloads from the database."""

from __future__ import annotations

import pytest

from email_service.runtime import Runtime
from tests.conftest import Identity
from tests.factories import SeededAttachment, SeededMessage, create_account, seed_folder

BASE = 1_700_000_000_000


@pytest.fixture
def account_id(client, alice: Identity) -> str:
    return str(create_account(client, alice.bearer)["id"])


def test_folders_list_inbox_first_with_parents(
    client, alice: Identity, runtime: Runtime, account_id: str
) -> None:
    archive, _, _ = seed_folder(
        runtime, alice.caller, account_id, name="Archive", folder_type="custom"
    )
    seed_folder(
        runtime,
        alice.caller,
        account_id,
        name="Archive/2024",
        folder_type="custom",
        parent_id=archive,
    )
    inbox, _, _ = seed_folder(
        runtime,
        alice.caller,
        account_id,
        messages=[SeededMessage("a"), SeededMessage("b", is_read=True)],
    )
    body = client.get(f"/api/{account_id}/folders", headers=alice.bearer).json()
    assert body["total"] == 3
    assert [f["name"] for f in body["folders"]] == ["INBOX", "Archive", "Archive/2024"]
    first = body["folders"][0]
    assert (first["id"], first["type"], first["messageCount"], first["unreadCount"]) == (
        inbox,
        "inbox",
        2,
        1,
    )
    assert body["folders"][2]["parentId"] == archive and body["folders"][2]["displayName"] == "2024"


@pytest.fixture
def inbox(alice: Identity, runtime: Runtime, account_id: str) -> tuple[str, list[str]]:
    messages = [
        SeededMessage(
            f"message {i}",
            from_address=f"{chr(ord('z') - i)}@example.test",
            received_at=BASE + i * 1000,
            is_read=i % 2 == 0,
        )
        for i in range(7)
    ]
    folder_id, ids, _ = seed_folder(runtime, alice.caller, account_id, messages=messages)
    return folder_id, ids


def _page(client, alice: Identity, account_id: str, folder_id: str, query: str) -> dict:
    response = client.get(
        f"/api/{account_id}/folders/{folder_id}/messages?{query}", headers=alice.bearer
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_messages_default_newest_first(client, alice: Identity, account_id: str, inbox) -> None:
    folder_id, ids = inbox
    page = _page(client, alice, account_id, folder_id, "")
    assert [m["id"] for m in page["messages"]] == ids[::-1]
    assert page["pagination"] == {"total": 7, "limit": 50, "offset": 0}
    first = page["messages"][0]
    assert first["subject"] == "message 6" and first["receivedAt"] == BASE + 6000
    assert "body" not in first  # summaries leave the bodies out


def test_messages_pagination_and_sorts(client, alice: Identity, account_id: str, inbox) -> None:
    folder_id, ids = inbox
    asc = _page(client, alice, account_id, folder_id, "sort=receivedAt:asc&limit=3&offset=2")
    assert [m["id"] for m in asc["messages"]] == ids[2:5]
    assert asc["pagination"] == {"total": 7, "limit": 3, "offset": 2}
    by_from = _page(client, alice, account_id, folder_id, "sort=from:asc")
    assert [m["from"] for m in by_from["messages"]] == sorted(
        m["from"] for m in by_from["messages"]
    )
    assert [m["id"] for m in by_from["messages"]] == ids[::-1]  # z..t reversed by index
    by_from_desc = _page(client, alice, account_id, folder_id, "sort=from:desc")
    assert [m["id"] for m in by_from_desc["messages"]] == ids
    beyond = _page(client, alice, account_id, folder_id, "offset=100")
    assert beyond["messages"] == [] and beyond["pagination"]["total"] == 7


@pytest.mark.parametrize("sort", ["receivedAt:desc", "receivedAt:asc", "from:asc", "from:desc"])
@pytest.mark.parametrize("read_filter", ["all", "read", "unread"])
def test_every_page_at_every_offset_is_a_slice_of_the_whole_list(
    client, alice: Identity, account_id: str, inbox, sort: str, read_filter: str
) -> None:
    # Pages past the middle are read from the other end; they must not differ.
    folder_id, _ = inbox
    query = f"sort={sort}&filter={read_filter}"
    whole = [m["id"] for m in _page(client, alice, account_id, folder_id, query)["messages"]]
    for limit in (1, 2, 3, 5):
        for offset in range(len(whole) + 2):
            page = _page(
                client, alice, account_id, folder_id, f"{query}&limit={limit}&offset={offset}"
            )
            assert [m["id"] for m in page["messages"]] == whole[offset : offset + limit]
            assert page["pagination"]["total"] == len(whole)


def test_messages_read_filter(client, alice: Identity, account_id: str, inbox) -> None:
    folder_id, ids = inbox
    unread = _page(client, alice, account_id, folder_id, "filter=unread")
    assert {m["id"] for m in unread["messages"]} == {ids[i] for i in (1, 3, 5)}
    assert unread["pagination"]["total"] == 3
    read = _page(client, alice, account_id, folder_id, "filter=read&sort=receivedAt:asc")
    assert [m["id"] for m in read["messages"]] == [ids[i] for i in (0, 2, 4, 6)]


@pytest.mark.parametrize(
    "query, field",
    [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("offset=-1", "offset"),
        ("sort=size:asc", "sort"),
        ("filter=flagged", "filter"),
        ("limit=ten", "limit"),
    ],
)
def test_bad_list_parameters_are_400_naming_them(
    client, alice: Identity, account_id: str, inbox, query: str, field: str
) -> None:
    folder_id, _ = inbox
    response = client.get(
        f"/api/{account_id}/folders/{folder_id}/messages?{query}", headers=alice.bearer
    )
    assert response.status_code == 400
    assert f"'{field}'" in response.json()["message"]


def test_message_detail_with_attachments(
    client, alice: Identity, runtime: Runtime, account_id: str
) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    folder_id, ids, attachment_ids = seed_folder(
        runtime,
        alice.caller,
        account_id,
        messages=[
            SeededMessage(
                "with files",
                body_text="plain body",
                body_html="<p>html body</p>",
                conversation_id="conv-1",
                attachments=[
                    SeededAttachment("report final.pdf", "application/pdf", b"%PDF-1.4 fake"),
                    SeededAttachment(
                        "logo.png", "image/png", png, content_id="logo@x", is_inline=True
                    ),
                ],
            )
        ],
    )
    detail = client.get(f"/api/{account_id}/messages/{ids[0]}", headers=alice.bearer).json()
    assert detail["body"] == "plain body" and detail["bodyHtml"] == "<p>html body</p>"
    assert detail["conversationId"] == "conv-1" and detail["folderId"] == folder_id
    assert detail["attachmentCount"] == 2
    pdf, logo = detail["attachments"]
    assert (pdf["filename"], pdf["mimeType"], pdf["size"], pdf["isInline"]) == (
        "report final.pdf",
        "application/pdf",
        13,
        False,
    )
    assert (logo["contentId"], logo["isInline"], logo["id"]) == ("logo@x", True, attachment_ids[1])
    # The embedded default keeps blobs on disk and cannot presign.
    assert "downloadUrl" not in pdf

    download = client.get(
        f"/api/{account_id}/attachments/{logo['id']}/download", headers=alice.bearer
    )
    assert download.status_code == 200
    assert download.content == png
    assert download.headers["content-type"] == "image/png"
    assert download.headers["content-disposition"].startswith('attachment; filename="logo.png"')
    pdf_download = client.get(
        f"/api/{account_id}/attachments/{pdf['id']}/download", headers=alice.bearer
    )
    assert "filename*=UTF-8''report%20final.pdf" in pdf_download.headers["content-disposition"]


def test_unknown_ids_are_404(client, alice: Identity, account_id: str) -> None:
    for path in (
        "/api/no-such-account/folders",
        f"/api/{account_id}/folders/no-such-folder/messages",
        f"/api/{account_id}/messages/no-such-message",
        f"/api/{account_id}/attachments/no-such-attachment/download",
    ):
        response = client.get(path, headers=alice.bearer)
        assert response.status_code == 404, path
        assert response.json()["message"]


def test_a_large_attachment_streams_through_the_wsgi_bridge_whole(
    app, client, alice: Identity, runtime: Runtime, account_id: str
) -> None:  # type: ignore[no-untyped-def]
    from email_service.web.wsgi import BUFFER_LIMIT, WSGIBridge

    # Flask is served through our bridge (email_service/web/wsgi.py), not a2wsgi's.
    assert isinstance(app._middleware_app.asgi_app, WSGIBridge)
    blob = bytes(range(256)) * (4 * BUFFER_LIMIT // 256 + 17)
    _, _, attachment_ids = seed_folder(
        runtime,
        alice.caller,
        account_id,
        messages=[
            SeededMessage(
                "big file", attachments=[SeededAttachment("big.bin", "application/zip", blob)]
            )
        ],
    )
    download = client.get(
        f"/api/{account_id}/attachments/{attachment_ids[0]}/download", headers=alice.bearer
    )
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/zip"
    assert download.content == blob
