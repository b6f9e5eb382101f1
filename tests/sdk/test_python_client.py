"""The generated Python client (client-sdks/python) against the live server.

Every response is parsed by the client's own models, so a response that drifts from the
contract, or a contract that drifts from the server, fails here. The client raises
``UnexpectedStatus`` for any status the contract does not document.
"""

from __future__ import annotations

import uuid
from http import HTTPStatus

from email_service_client import AuthenticatedClient
from email_service_client.api.accounts import (
    create_account,
    delete_account,
    get_account,
    list_accounts,
    update_account,
)
from email_service_client.api.attachments import download_attachment
from email_service_client.api.changes import list_changes
from email_service_client.api.folders import list_folders
from email_service_client.api.messages import get_message, list_messages, search_messages
from email_service_client.api.o_auth_2 import list_o_auth_2_providers
from email_service_client.api.webhooks import get_webhook, list_webhooks
from email_service_client.models import (
    AccountEncryption,
    AccountListResponse,
    AccountResponse,
    AccountSmtpEncryption,
    ChangeList,
    ChangeType,
    CreateAccountRequest,
    CreateAccountRequestEncryption,
    CreateAccountRequestProtocol,
    ErrorResponse,
    FolderListResponse,
    FolderType,
    MessageDetail,
    MessageListResponse,
    OAuth2ProviderList,
    SearchResponse,
    UpdateAccountRequest,
    WebhookList,
)
from email_service_client.types import File

from email_service.runtime import Runtime
from tests.conftest import Identity, new_identity
from tests.factories import SeededAttachment, SeededMessage, seed_folder


def sdk_client(base_url: str, identity: Identity) -> AuthenticatedClient:
    return AuthenticatedClient(
        base_url=base_url, token=identity.token, raise_on_unexpected_status=True
    )


def account_request(email_address: str | None = None, port: int = 993) -> CreateAccountRequest:
    return CreateAccountRequest(
        account_name="Python SDK",
        email_address=email_address or f"py-{uuid.uuid4().hex[:8]}@example.test",
        protocol=CreateAccountRequestProtocol.IMAP,
        hostname="127.0.0.1",
        port=port,
        encryption=CreateAccountRequestEncryption.TLS,
        username="py-user",
        password="py-client-password",
    )


def create(client: AuthenticatedClient) -> AccountResponse:
    response = create_account.sync_detailed(client=client, body=account_request())
    assert response.status_code == HTTPStatus.CREATED, response.content
    assert isinstance(response.parsed, AccountResponse)
    return response.parsed


def assert_error(parsed: object, code: str) -> ErrorResponse:
    assert isinstance(parsed, ErrorResponse), parsed
    assert parsed.code == code
    assert parsed.message and parsed.error and parsed.timestamp > 0
    return parsed


def test_account_round_trip(sdk_server: str) -> None:
    alice = new_identity()
    client = sdk_client(sdk_server, alice)

    # Create
    account = create(client)
    assert account.tenant_id == alice.caller.tenant_id
    assert account.user_id == alice.caller.user_id
    assert (account.hostname, account.port, account.encryption) == (
        "127.0.0.1",
        993,
        AccountEncryption.TLS,
    )
    assert (account.smtp_port, account.smtp_encryption) == (465, AccountSmtpEncryption.TLS)
    assert account.username == "py-user"
    assert account.last_sync_at is None and account.is_syncing is False
    assert account.additional_properties == {}, "the server sent fields the contract lacks"

    # List and fetch
    page = list_accounts.sync(client=client, limit=10)
    assert isinstance(page, AccountListResponse)
    assert [item.id for item in page.accounts] == [account.id]
    assert (page.pagination.total, page.pagination.limit, page.pagination.offset) == (1, 10, 0)
    assert get_account.sync(account.id, client=client) == account

    # Update
    updated = update_account.sync(
        account.id,
        client=client,
        body=UpdateAccountRequest(account_name="Python SDK, renamed", sync_interval=600),
    )
    assert isinstance(updated, AccountResponse)
    assert (updated.account_name, updated.sync_interval) == ("Python SDK, renamed", 600)
    assert updated.email_address == account.email_address
    assert updated.updated_at >= account.updated_at

    # Delete
    deleted = delete_account.sync_detailed(account.id, client=client)
    assert deleted.status_code == HTTPStatus.NO_CONTENT
    assert_error(get_account.sync(account.id, client=client), "ACCOUNT_NOT_FOUND")
    empty = list_accounts.sync(client=client)
    assert isinstance(empty, AccountListResponse) and empty.accounts == []


def test_duplicate_address_is_409_error_response(sdk_server: str) -> None:
    client = sdk_client(sdk_server, new_identity())
    first = create(client)

    again = create_account.sync_detailed(
        client=client, body=account_request(email_address=first.email_address.upper())
    )

    assert again.status_code == HTTPStatus.CONFLICT
    assert_error(again.parsed, "EMAIL_DUPLICATE")


def test_invalid_request_is_400_error_response(sdk_server: str) -> None:
    client = sdk_client(sdk_server, new_identity())

    response = create_account.sync_detailed(client=client, body=account_request(port=0))

    assert response.status_code == HTTPStatus.BAD_REQUEST
    error = assert_error(response.parsed, "VALIDATION_ERROR")
    assert "py-client-password" not in error.message


def test_another_tenants_account_is_404_error_response(sdk_server: str) -> None:
    account = create(sdk_client(sdk_server, new_identity()))
    mallory = sdk_client(sdk_server, new_identity())

    assert_error(get_account.sync(account.id, client=mallory), "ACCOUNT_NOT_FOUND")
    assert_error(list_folders.sync(account.id, client=mallory), "ACCOUNT_NOT_FOUND")
    assert_error(
        delete_account.sync_detailed(account.id, client=mallory).parsed, "ACCOUNT_NOT_FOUND"
    )


def test_folders_messages_and_attachments(sdk_server: str, runtime: Runtime) -> None:
    # Given an account whose inbox holds one message with an attachment
    bob = new_identity()
    client = sdk_client(sdk_server, bob)
    account = create(client)
    folder_id, (message_id,), (attachment_id,) = seed_folder(
        runtime,
        bob.caller,
        account.id,
        messages=[
            SeededMessage(
                subject="Hello from the SDK test",
                attachments=[SeededAttachment("note.txt", "text/plain", b"attached bytes")],
            )
        ],
    )

    # When the client reads folders, messages and the attachment, then all parse as models
    folders = list_folders.sync(account.id, client=client)
    assert isinstance(folders, FolderListResponse)
    assert folders.total == 1
    (inbox,) = folders.folders
    assert (inbox.id, inbox.name, inbox.type_) == (folder_id, "INBOX", FolderType.INBOX)
    assert (inbox.message_count, inbox.unread_count, inbox.parent_id) == (1, 1, None)

    page = list_messages.sync(account.id, folder_id, client=client, limit=5)
    assert isinstance(page, MessageListResponse)
    assert [m.id for m in page.messages] == [message_id]
    assert page.messages[0].subject == "Hello from the SDK test"
    assert page.messages[0].attachment_count == 1
    assert page.pagination.total == 1

    detail = get_message.sync(account.id, message_id, client=client)
    assert isinstance(detail, MessageDetail)
    assert detail.body == "Hello"
    assert detail.headers.additional_properties["Subject"] == "Hello from the SDK test"
    (attachment,) = detail.attachments
    assert (attachment.id, attachment.filename, attachment.size) == (attachment_id, "note.txt", 14)

    content = download_attachment.sync(account.id, attachment_id, client=client)
    assert isinstance(content, File)
    assert content.payload.read() == b"attached bytes"

    assert_error(
        list_messages.sync(account.id, "no-such-folder", client=client), "FOLDER_NOT_FOUND"
    )
    assert_error(
        get_message.sync(account.id, "no-such-message", client=client), "MESSAGE_NOT_FOUND"
    )


def test_feed_search_webhooks_and_providers(sdk_server: str) -> None:
    # Given a client at the head of its feed
    carol = new_identity()
    client = sdk_client(sdk_server, carol)
    start = list_changes.sync(client=client)
    assert isinstance(start, ChangeList)
    assert (start.changes, start.has_more) == ([], False)

    # When it creates an account
    account = create(client)

    # Then the feed tells of it, and search answers (the search tests cover what it finds)
    feed = list_changes.sync(client=client, since=start.cursor)
    assert isinstance(feed, ChangeList)
    created = [c for c in feed.changes if c.type_ == ChangeType.ACCOUNT_CREATED]
    assert [c.account_id for c in created] == [account.id]

    hits = search_messages.sync(client=client, q="from:nobody lighthouse")
    assert isinstance(hits, SearchResponse)
    assert hits.messages == []
    assert_error(search_messages.sync(client=client, q='"unclosed'), "INVALID_QUERY")

    # And webhooks and providers parse too (none of either here)
    webhooks = list_webhooks.sync(client=client)
    assert isinstance(webhooks, WebhookList)
    assert webhooks.webhooks == []
    assert_error(get_webhook.sync("no-such-webhook", client=client), "WEBHOOK_NOT_FOUND")
    providers = list_o_auth_2_providers.sync(client=client)
    assert isinstance(providers, OAuth2ProviderList)
