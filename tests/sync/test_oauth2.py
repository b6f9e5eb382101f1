"""OAuth2 accounts end to end: HTTP in, a Dramatiq worker, Dovecot checking bearer tokens
against the local OAuth2 test provider (rotating refresh tokens, introspection), SMTP with
XOAUTH2 behind the send path.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import pytest
from sqlalchemy import event, update

import workers
from db.models import Account, now_ms
from email_service import metrics
from email_service.app import create_app
from email_service.oauth2 import REVOKED_MESSAGE
from email_service.runtime import Runtime, build_runtime, set_runtime
from email_service.services import oauth2 as oauth2_service
from email_service.services import push
from email_service.services.sync_schedule import enqueue_due_syncs
from tests.compose.conftest import await_task, mail_with_attachments, server_messages
from tests.compose.test_fetch_outside_transactions import Checkouts, backend_states
from tests.compose.test_send import attachment_ids
from tests.conftest import Identity
from tests.servers.dovecot import Dovecot, MailUser
from tests.servers.mailgen import make_pdf
from tests.servers.oauth2 import OAuth2TestProvider
from tests.servers.smtp import SmtpServer
from tests.sync.conftest import Mailbox, sync

PROVIDER = "local"


@pytest.fixture(scope="module")
def oauth_runtime(
    sync_settings: Any,
    runtime: Runtime,
    oauth2_provider: OAuth2TestProvider,
    oauth2_dovecot: Dovecot,
) -> Iterator[Runtime]:
    settings = sync_settings.model_copy(
        update={
            "oauth2_providers": json.dumps({PROVIDER: oauth2_provider.provider_settings()}),
            "mail_ca_file": str(oauth2_dovecot.ca_file),
            "queue_namespace": f"email-test-oauth-{uuid.uuid4().hex[:8]}",
        }
    )
    # SecretStr from a plain string: pydantic's model_copy does not validate.
    from pydantic import SecretStr

    settings.oauth2_providers = SecretStr(settings.oauth2_providers)
    rt = build_runtime(settings)
    jobs = workers.install(rt)
    running = workers.start_worker(jobs, threads=2)
    yield rt
    running.stop()
    rt.close()


@pytest.fixture(scope="module")
def oauth_app(oauth_runtime: Runtime):  # type: ignore[no-untyped-def]
    return create_app(runtime=oauth_runtime, validate_responses=True)


@pytest.fixture
def api(oauth_app: Any, oauth_runtime: Runtime) -> Iterator[Any]:
    set_runtime(oauth_runtime)
    with oauth_app.test_client() as client:
        yield client


@pytest.fixture
def user(oauth2_dovecot: Dovecot) -> MailUser:
    return oauth2_dovecot.new_user("oauth")


def create(
    api: Any,
    identity: Identity,
    dovecot: Dovecot,
    smtp: SmtpServer,
    user: MailUser,
    grant: dict[str, Any],
    **overrides: Any,
) -> Mailbox:
    body = {
        "accountName": "OAuth mailbox",
        "emailAddress": user.email,
        "protocol": "imap",
        "hostname": "localhost",
        "port": dovecot.imaps_port,
        "encryption": "tls",
        "username": user.email,
        "smtpHostname": "localhost",
        "smtpPort": smtp.port,
        "smtpEncryption": "starttls",
        "authType": "oauth2",
        "oauth2": {"provider": PROVIDER, **grant},
        **overrides,
    }
    response = api.post("/api/accounts", json=body, headers=identity.bearer)
    assert response.status_code == 201, response.text
    return Mailbox(user, response.json(), identity.bearer)


@pytest.fixture
def box(
    api: Any,
    alice: Identity,
    oauth2_dovecot: Dovecot,
    oauth2_smtp_server: SmtpServer,
    oauth2_provider: OAuth2TestProvider,
    user: MailUser,
) -> Mailbox:
    """An OAuth2 account created from a refresh token alone."""
    return create(
        api,
        alice,
        oauth2_dovecot,
        oauth2_smtp_server,
        user,
        {"refreshToken": oauth2_provider.grant(user.email)},
    )


def stored(runtime: Runtime, box: Mailbox) -> tuple[Account, oauth2_service.Tokens]:
    with runtime.db.transaction(system=True) as session:
        row = session.get(Account, box.id)
        assert row is not None
        return row, oauth2_service.unseal_tokens(runtime, row)


def mail(dovecot: Dovecot, user: MailUser, subject: str) -> None:
    raw = (
        f"From: someone@example.test\r\nTo: {user.email}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@example.test>\r\n\r\nbody\r\n"
    ).encode()
    dovecot.append(user, "INBOX", raw)


def test_first_sync_from_a_refresh_token_alone_stores_the_rotated_token(
    api: Any,
    oauth_runtime: Runtime,
    oauth2_dovecot: Dovecot,
    oauth2_provider: OAuth2TestProvider,
    box: Mailbox,
) -> None:
    # Given a message on the server and an account that holds only a refresh token
    mail(oauth2_dovecot, box.user, "first")
    assert box.account["authType"] == "oauth2" and box.account["oauth2Provider"] == PROVIDER
    # When it syncs
    task = sync(api, box)
    # Then the login went through with a refreshed access token
    assert task["status"] == "success", task
    assert task["result"]["messagesAdded"] == 1
    assert [r.status for r in oauth2_provider.refreshes] == [200]
    # and the provider's rotated refresh token replaced the stored one
    row, tokens = stored(oauth_runtime, box)
    assert tokens.refresh_token == oauth2_provider.current_refresh_token(box.user.email)
    assert tokens.access_token and row.oauth2_expires_at and row.oauth2_expires_at > now_ms()
    # and a second sync reuses the access token: no second refresh
    assert sync(api, box)["status"] == "success"
    assert len(oauth2_provider.refreshes) == 1


def test_sync_after_the_access_token_expired_refreshes_first(
    api: Any,
    oauth_runtime: Runtime,
    oauth2_dovecot: Dovecot,
    oauth2_provider: OAuth2TestProvider,
    box: Mailbox,
) -> None:
    assert sync(api, box)["status"] == "success"
    first_refresh = stored(oauth_runtime, box)[1].refresh_token
    # Given the access token's lifetime is over (for the provider and by the stored expiry)
    oauth2_provider.expire_access_tokens(box.user.email)
    with oauth_runtime.db.transaction(system=True) as session:
        session.execute(
            update(Account).where(Account.id == box.id).values(oauth2_expires_at=now_ms() - 1)
        )
    mail(oauth2_dovecot, box.user, "after expiry")
    # When it syncs, the token is refreshed before the login, with the stored refresh token
    task = sync(api, box)
    assert task["status"] == "success" and task["result"]["messagesAdded"] == 1, task
    assert [r.refresh_token for r in oauth2_provider.refreshes][1:] == [first_refresh]
    assert stored(oauth_runtime, box)[1].refresh_token == oauth2_provider.current_refresh_token(
        box.user.email
    )


def test_a_token_the_server_refuses_is_refreshed_once_and_the_login_retried(
    api: Any, oauth_runtime: Runtime, oauth2_provider: OAuth2TestProvider, box: Mailbox
) -> None:
    assert sync(api, box)["status"] == "success"
    # The stored expiry says the token is good; the server no longer takes it.
    oauth2_provider.expire_access_tokens(box.user.email)
    # (The next sync logs in: the worker's session from the first one is gone.)
    oauth_runtime.mail_pools.imap.forget(box.id)
    task = sync(api, box)
    assert task["status"] == "success", task
    assert [r.status for r in oauth2_provider.refreshes] == [200, 200]


def test_send_and_draft_on_an_oauth2_account(
    api: Any,
    oauth_runtime: Runtime,
    alice: Identity,
    oauth2_dovecot: Dovecot,
    oauth2_smtp_server: SmtpServer,
    box: Mailbox,
) -> None:
    assert sync(api, box)["status"] == "success"
    recipient = oauth2_dovecot.new_user("rcpt")
    response = api.post(
        "/api/compose/send",
        json={"accountId": box.id, "to": [recipient.email], "subject": "Via OAuth", "body": "hi"},
        headers=box.headers,
    )
    assert response.status_code == 202, response.text
    sent = await_task(oauth_runtime, alice, response.json()["taskId"])
    assert sent.status == "success", sent.error
    # SMTP authenticated the account's user with its bearer token
    [transaction] = [t for t in oauth2_smtp_server.transactions if t.accepted]
    assert transaction.auth_user == box.user.email and recipient.email in transaction.rcpt_tos
    # the copy went to Sent over IMAP (XOAUTH2 again)
    assert sent.result and sent.result.get("sentFolder") == "Sent", sent.result
    subjects = [
        e["message"]["Subject"] for e in server_messages(oauth2_dovecot, box.user, "Sent").values()
    ]
    assert subjects == ["Via OAuth"]
    # and a draft is appended to Drafts
    response = api.post(
        "/api/compose/draft",
        json={
            "accountId": box.id,
            "to": ["later@example.test"],
            "subject": "Draft via OAuth",
            "body": "later",
        },
        headers=box.headers,
    )
    assert response.status_code == 201, response.text
    draft = await_task(oauth_runtime, alice, response.json()["taskId"])
    assert draft.status == "success", draft.error
    drafts = server_messages(oauth2_dovecot, box.user, "Drafts").values()
    assert [e["message"]["Subject"] for e in drafts] == ["Draft via OAuth"]


def test_a_revoked_refresh_token_fails_in_words_once_and_the_scheduler_leaves_it(
    api: Any,
    oauth_runtime: Runtime,
    alice: Identity,
    oauth2_dovecot: Dovecot,
    oauth2_smtp_server: SmtpServer,
    oauth2_provider: OAuth2TestProvider,
    box: Mailbox,
) -> None:
    # Given the owner withdrew consent at the provider
    cursor = api.get("/api/changes", headers=alice.bearer).json()["cursor"]
    revoked = metrics.OAUTH2_REFRESHES.labels(result="revoked")
    revocations = revoked._value.get()
    oauth2_provider.revoke(box.user.email)
    # When the account syncs
    task = sync(api, box)
    # Then the sync fails in words, after one refusal (no retry loop)
    assert task["status"] == "failure"
    assert task["error"] == REVOKED_MESSAGE
    assert [r.status for r in oauth2_provider.refreshes] == [400]
    assert revoked._value.get() - revocations == 1
    account = api.get(f"/api/accounts/{box.id}", headers=box.headers).json()
    assert account["authError"] == REVOKED_MESSAGE
    # and the change feed tells it once, as account.error
    feed = api.get(
        "/api/changes", params={"since": cursor, "types": "account.error"}, headers=alice.bearer
    ).json()["changes"]
    assert [(c["accountId"], c["data"]["state"], c["data"]["error"]) for c in feed] == [
        (box.id, "failing", REVOKED_MESSAGE)
    ]
    # and the scheduler leaves it alone even when its interval has passed
    with oauth_runtime.db.transaction(system=True) as session:
        session.execute(update(Account).where(Account.id == box.id).values(last_sync_at=0))
    assert enqueue_due_syncs(oauth_runtime, now=now_ms() + 10**9) == []
    # and a sync asked for by hand fails at once without asking the provider again
    assert sync(api, box)["error"] == REVOKED_MESSAGE
    assert len(oauth2_provider.refreshes) == 1
    # When the owner reconnects with a new grant, it works again
    response = api.put(
        f"/api/accounts/{box.id}",
        json={
            "oauth2": {"provider": PROVIDER, "refreshToken": oauth2_provider.grant(box.user.email)}
        },
        headers=box.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["authError"] is None
    assert sync(api, box)["status"] == "success"


def test_a_provider_that_is_down_is_retried_like_a_network_error(
    api: Any, oauth2_provider: OAuth2TestProvider, box: Mailbox
) -> None:
    oauth2_provider.fail_next(1, status=503)
    task = sync(api, box)
    assert task["status"] == "success", task
    assert [r.status for r in oauth2_provider.refreshes] == [503, 200]


@pytest.mark.parametrize("process_lock", [True, False], ids=["in-process", "row-lock-only"])
def test_two_workers_needing_a_token_refresh_it_once(
    oauth_runtime: Runtime,
    oauth2_provider: OAuth2TestProvider,
    box: Mailbox,
    monkeypatch: pytest.MonkeyPatch,
    process_lock: bool,
) -> None:
    # Without the process-local lock, only the database row lock stands between two
    # refreshes: what separates two worker processes.
    if not process_lock:
        monkeypatch.setattr(oauth2_service, "_process_lock", lambda _id: nullcontext())
    oauth2_provider.token_delay = 0.3  # both arrive while the first refresh is under way
    row, _ = stored(oauth_runtime, box)
    tokens: list[str] = []
    errors: list[BaseException] = []

    def login() -> None:
        try:
            tokens.append(oauth2_service.login_token(oauth_runtime, row))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=login) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not errors
    assert len(oauth2_provider.refreshes) == 1
    assert len(tokens) == 2 and tokens[0] == tokens[1]
    assert not oauth2_provider.is_revoked(box.user.email)


def test_tokens_are_in_no_response_and_no_log_line(
    api: Any,
    alice: Identity,
    oauth_runtime: Runtime,
    oauth2_dovecot: Dovecot,
    oauth2_smtp_server: SmtpServer,
    oauth2_provider: OAuth2TestProvider,
    user: MailUser,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    refresh = oauth2_provider.grant(user.email)
    access = oauth2_provider.access_token(user.email)
    box = create(
        api,
        alice,
        oauth2_dovecot,
        oauth2_smtp_server,
        user,
        {"refreshToken": refresh, "accessToken": access, "expiresAt": now_ms() - 1},
    )
    bodies = [json.dumps(box.account)]
    bodies.append(api.get(f"/api/accounts/{box.id}", headers=box.headers).text)
    bodies.append(api.get("/api/accounts", headers=box.headers).text)
    bodies.append(json.dumps(sync(api, box)))
    # a refused one too: the task's error and the log lines of the failure
    oauth2_provider.revoke(user.email)
    oauth2_provider.expire_access_tokens(user.email)
    bodies.append(json.dumps(sync(api, box)))
    bodies.append(
        api.put(
            f"/api/accounts/{box.id}",
            json={"oauth2": {"provider": PROVIDER, "refreshToken": refresh + "x"}},
            headers=box.headers,
        ).text
    )
    secrets = {refresh, access, refresh + "x"}
    secrets.update(r.refresh_token for r in oauth2_provider.refreshes)
    secrets.add(oauth2_provider.client_secret)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for secret in secrets:
        assert secret not in logged
        for body in bodies:
            assert secret not in body
    assert "refreshed the OAuth2 access token" in logged


def test_the_watcher_watches_oauth2_accounts_until_revoked(
    api: Any, oauth_runtime: Runtime, oauth2_provider: OAuth2TestProvider, box: Mailbox
) -> None:
    def watched() -> dict[str, str]:
        return {a.id: a.fingerprint for a in push.watchable_accounts(oauth_runtime)}

    before = watched()
    assert box.id in before
    # A token refresh rewrites the sealed tokens: the watch must not restart for that.
    row, _ = stored(oauth_runtime, box)
    oauth2_service.login_token(oauth_runtime, row)
    assert len(oauth2_provider.refreshes) == 1
    assert watched()[box.id] == before[box.id]
    # A revoked authorization leaves nothing to watch until the account is reconnected.
    oauth2_provider.revoke(box.user.email)
    assert sync(api, box)["error"] == REVOKED_MESSAGE
    assert box.id not in watched()
    response = api.put(
        f"/api/accounts/{box.id}",
        json={
            "oauth2": {"provider": PROVIDER, "refreshToken": oauth2_provider.grant(box.user.email)}
        },
        headers=box.headers,
    )
    assert response.status_code == 200, response.text
    assert box.id in watched()


def test_a_sync_and_a_send_at_once_refresh_the_token_once(
    api: Any,
    oauth_runtime: Runtime,
    alice: Identity,
    oauth2_dovecot: Dovecot,
    oauth2_provider: OAuth2TestProvider,
    box: Mailbox,
) -> None:
    # Given an account holding only a refresh token, and a slow token endpoint
    oauth2_provider.token_delay = 0.3
    # When two workers need a token at the same moment (a sync and a send)
    synced = api.post(f"/api/sync/{box.id}", json={}, headers=box.headers)
    sent = api.post(
        "/api/compose/send",
        json={"accountId": box.id, "to": [box.user.email], "subject": "Both", "body": "at once"},
        headers=box.headers,
    )
    assert synced.status_code == 202 and sent.status_code == 202, (synced.text, sent.text)
    tasks = [await_task(oauth_runtime, alice, r.json()["taskId"]) for r in (synced, sent)]
    # Then both succeed on one refresh, and the grant is intact
    assert [t.status for t in tasks] == ["success", "success"], [t.error for t in tasks]
    assert [r.status for r in oauth2_provider.refreshes] == [200]
    assert not oauth2_provider.is_revoked(box.user.email)


def test_a_pop3_account_syncs_over_oauth2(
    api: Any,
    alice: Identity,
    oauth2_dovecot: Dovecot,
    oauth2_smtp_server: SmtpServer,
    oauth2_provider: OAuth2TestProvider,
    user: MailUser,
) -> None:
    box = create(
        api,
        alice,
        oauth2_dovecot,
        oauth2_smtp_server,
        user,
        {"refreshToken": oauth2_provider.grant(user.email)},
        protocol="pop3",
        port=oauth2_dovecot.pop3s_port,
    )
    mail(oauth2_dovecot, user, "over pop3")
    task = sync(api, box)
    assert task["status"] == "success" and task["result"]["messagesAdded"] == 1, task


class RefreshStall:
    """A token endpoint that stalls, and which of a thread's connections is the one its
    refresh holds (the thread's latest checkout when the provider is asked)."""

    def __init__(
        self,
        runtime: Runtime,
        provider: OAuth2TestProvider,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        self.engine = runtime.db.engine
        self.checkouts = Checkouts(self.engine)
        self.order: list[tuple[int, int]] = []  # (thread, backend pid) of every checkout
        self.asking: list[tuple[int, int]] = []  # (thread, backend of the refresh's transaction)
        exchange = oauth2_service._exchange

        def noted(*args: Any, **kwargs: Any) -> Any:
            thread = threading.get_ident()
            # The refresh's transaction is the thread's latest checkout.
            self.asking.append((thread, [pid for t, pid in self.order if t == thread][-1]))
            return exchange(*args, **kwargs)

        event.listen(self.engine, "checkout", self._checked_out)
        monkeypatch.setattr(oauth2_service, "_exchange", noted)
        provider.hold_tokens()

    def _checked_out(self, dbapi: Any, _record: Any, _proxy: Any) -> None:
        self.order.append((threading.get_ident(), dbapi.info.backend_pid))

    def assert_only_the_refresh_is_held(self, who: str) -> None:
        """While the provider keeps the one refresh waiting: its thread holds only the
        refresh's own connection, and none of the others it used is idle in a transaction."""
        checkouts = self.checkouts
        [(thread, refreshing)] = self.asking
        # (a connection the pool has handed to another thread since is that thread's)
        used = checkouts.used[thread] - {refreshing} - checkouts.held_by_others(thread)
        assert used, f"{who} read nothing from the database before the refresh"
        states = backend_states(used)
        assert not [s for s in states.values() if s.startswith("idle in transaction")], states
        assert checkouts.held_by(thread) == [refreshing]

    def close(self) -> None:
        self.checkouts.close()
        event.remove(self.engine, "checkout", self._checked_out)


@pytest.mark.parametrize("request_kind", ["download", "send"])
def test_no_request_transaction_is_open_while_the_token_endpoint_is_asked(
    api: Any, oauth_app: Any, oauth_runtime: Runtime, alice: Identity,
    oauth2_dovecot: Dovecot, oauth2_provider: OAuth2TestProvider, box: Mailbox,
    monkeypatch: pytest.MonkeyPatch, request_kind: str,
) -> None:  # fmt: skip
    # Given a synced OAuth2 account whose INBOX holds a file never downloaded, and whose
    # access token has expired (so the next login asks the provider first)
    data = make_pdf("Token", pages=1)
    oauth2_dovecot.append(
        box.user,
        "INBOX",
        mail_with_attachments(
            "x@example.test", box.user.email, {"t.pdf": ("application/pdf", data)}
        ),
    )
    [attachment] = attachment_ids(api, box, oauth_runtime, alice)
    oauth2_provider.expire_access_tokens(box.user.email)
    with oauth_runtime.db.transaction(system=True) as session:
        session.execute(
            update(Account).where(Account.id == box.id).values(oauth2_expires_at=now_ms() - 1)
        )
    # and a token endpoint that stalls
    stall = RefreshStall(oauth_runtime, oauth2_provider, monkeypatch)

    # When the file is downloaded (or sent on) for the first time
    answers: list[Any] = []

    def ask() -> None:
        with oauth_app.test_client() as client:
            if request_kind == "download":
                path = f"/api/{box.id}/attachments/{attachment}/download"
                answers.append(client.get(path, headers=box.headers))
            else:
                body = {
                    "accountId": box.id,
                    "to": [box.user.email],
                    "subject": "On",
                    "body": ".",
                    "attachmentIds": [attachment],
                }
                answers.append(client.post("/api/compose/send", json=body, headers=box.headers))

    request = threading.Thread(target=ask, daemon=True)
    request.start()
    try:
        assert oauth2_provider.token_asked.wait(30), "the token endpoint was not asked"
        # Then, while the provider keeps the refresh waiting, the request's thread holds
        # only the refresh's own connection (its short transaction under the account's
        # row lock), and none of the others it used is idle in a transaction
        stall.assert_only_the_refresh_is_held("the request")
        assert answers == []
    finally:
        oauth2_provider.let_tokens_through()
        request.join(60)
        stall.close()

    # and once the provider answers, the request is served with the refreshed token
    [answer] = answers
    if request_kind == "download":
        assert answer.status_code == 200, answer.text
        assert answer.content == data
    else:
        assert answer.status_code == 202, answer.text
        sent = await_task(oauth_runtime, alice, answer.json()["taskId"])
        assert sent.status == "success", sent.error
    assert [r.status for r in oauth2_provider.refreshes] == [200, 200]


def test_the_watcher_holds_no_transaction_open_while_the_token_endpoint_is_asked(
    oauth_runtime: Runtime, oauth2_provider: OAuth2TestProvider, box: Mailbox,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Given a watched OAuth2 account holding only a refresh token (its first login asks the
    # provider first), and a token endpoint that stalls
    [watched] = [a for a in push.watchable_accounts(oauth_runtime) if a.id == box.id]
    stall = RefreshStall(oauth_runtime, oauth2_provider, monkeypatch)

    # When the watcher asks how to reach the account's server
    endpoints: list[Any] = []
    asker = threading.Thread(
        target=lambda: endpoints.append(push.watch_endpoint(oauth_runtime, watched)), daemon=True
    )
    asker.start()
    try:
        assert oauth2_provider.token_asked.wait(30), "the token endpoint was not asked"
        # Then, while the provider keeps the refresh waiting, the watcher's thread holds
        # only the refresh's own connection, and the one it read the account with is not
        # idle in a transaction
        stall.assert_only_the_refresh_is_held("the watcher")
        assert endpoints == []
    finally:
        oauth2_provider.let_tokens_through()
        asker.join(60)
        stall.close()

    # and once the provider answers, the endpoint carries the refreshed access token
    [endpoint] = endpoints
    assert endpoint is not None
    assert endpoint.password == stored(oauth_runtime, box)[1].access_token
    assert len(oauth2_provider.refreshes) == 1
