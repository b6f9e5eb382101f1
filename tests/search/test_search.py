"""searchMessages through HTTP, the same cases on PostgreSQL and on SQLite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from db import textindex
from db.models import Message
from email_service.mailstore.messages import remove_messages
from email_service.scope import open_scope
from email_service.services.search import fullindex
from tests.conftest import Identity, new_identity
from tests.factories import create_account
from tests.search.conftest import Mail, Store

DAY = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def search(store: Store, who: Identity, q: str, **params: Any) -> dict[str, Any]:
    response = store.client.get(
        "/api/messages/search", params={"q": q, **params}, headers=who.bearer
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def subjects(store: Store, who: Identity, q: str, **params: Any) -> list[str]:
    return [hit["subject"] for hit in search(store, who, q, **params)["messages"]]


@pytest.fixture
def mailbox(store: Store, alice: Identity) -> dict[str, Any]:
    """Given two accounts of alice with a small, varied mailbox."""
    caller = alice.caller
    work = create_account(store.client, alice.bearer)["id"]
    home = create_account(store.client, alice.bearer)["id"]
    inbox = store.folder(caller, work)
    sent = store.folder(caller, work, "Sent", "sent")
    projects = store.folder(caller, home, "Projects/Zeppelin", "custom")
    home_inbox = store.folder(caller, home)
    ids = store.deliver(
        caller,
        work,
        inbox,
        Mail(
            subject="Quarterly report",
            sender="Alice Martin <alice.martin@acme.example>",
            body="Please find the quarterly numbers attached. Revenue grew.",
            attachments=[("report-q3.pdf", b"%PDF-1.4 fake")],
            received=DAY - timedelta(days=3),
        ),
        Mail(
            subject="Lunch on Friday?",
            sender="Bob Stone <bob@example.test>",
            cc="Carol <carol@corp.example>",
            body="Shall we meet at the usual place? The weather looks fine.",
            received=DAY - timedelta(days=2),
            flags=("\\Seen", "\\Flagged"),
        ),
        Mail(
            subject="Grüße aus München",
            sender="Jürgen Müller <juergen@example.de>",
            body="Die Straße ist gesperrt, wir treffen uns am Café.",
            received=DAY - timedelta(days=1),
        ),
    )
    ids += store.deliver(
        caller,
        work,
        sent,
        Mail(
            subject="Re: Quarterly report",
            sender="Owner <owner@example.test>",
            to="Alice Martin <alice.martin@acme.example>",
            body="Thanks, the revenue figures look right.",
            received=DAY,
            flags=("\\Seen",),
        ),
    )
    ids += store.deliver(
        caller,
        home,
        projects,
        Mail(
            subject="Привет из Москвы",
            sender="Иван Петров <ivan@example.ru>",
            body="Встреча в пятницу, ЁЖИК будет там. " + "x " * 3000 + "tailword",
            received=DAY + timedelta(days=1),
        ),
        Mail(
            subject="会議の予定",
            sender="田中 <tanaka@example.jp>",
            body="明日の東京会議は午後三時からです。",
            received=DAY + timedelta(days=2),
            attachments=[("議事録.txt", "メモ".encode())],
        ),
    )
    ids += store.deliver(
        caller,
        home,
        home_inbox,
        Mail(
            subject="Big file",
            sender="Dana <dana@example.test>",
            body="A large attachment follows.",
            attachments=[("photo.raw", b"\0" * 300_000)],
            received=DAY + timedelta(days=3),
            flags=("\\Seen",),
        ),
    )
    return {"work": work, "home": home, "inbox": inbox, "sent": sent, "ids": ids}


def test_words_must_all_match_ignoring_case_and_accents(
    store: Store, alice: Identity, mailbox: dict[str, Any]
) -> None:
    assert subjects(store, alice, "quarterly") == ["Re: Quarterly report", "Quarterly report"]
    assert subjects(store, alice, "QUARTERLY attached") == ["Quarterly report"]
    assert subjects(store, alice, "quarterly nonexistentword") == []
    # German: umlauts and ß fold ("Müller" = "muller", "Straße" = "strasse").
    assert subjects(store, alice, "muller strasse") == ["Grüße aus München"]
    assert subjects(store, alice, "MÜNCHEN cafe") == ["Grüße aus München"]
    # Cyrillic, with case and ё folded.
    assert subjects(store, alice, "москвы ежик") == ["Привет из Москвы"]
    # CJK: a word inside a sentence with no spaces.
    assert subjects(store, alice, "東京") == ["会議の予定"]
    assert subjects(store, alice, "会議 午後") == ["会議の予定"]


def test_phrase_negation_and_or(store: Store, alice: Identity, mailbox: dict[str, Any]) -> None:
    assert subjects(store, alice, '"revenue grew"') == ["Quarterly report"]
    assert subjects(store, alice, '"grew revenue"') == []
    assert subjects(store, alice, "quarterly -thanks") == ["Quarterly report"]
    assert subjects(store, alice, "lunch OR münchen") == ["Grüße aus München", "Lunch on Friday?"]
    assert subjects(store, alice, "report (lunch OR figures)") == ["Re: Quarterly report"]
    assert subjects(store, alice, "-(quarterly OR lunch) is:read") == ["Big file"]


def test_fields(store: Store, alice: Identity, mailbox: dict[str, Any]) -> None:
    assert subjects(store, alice, "from:bob") == ["Lunch on Friday?"]
    assert subjects(store, alice, "from:ali") == ["Quarterly report"]  # start of a word
    assert subjects(store, alice, "from:acme.example") == ["Quarterly report"]
    assert subjects(store, alice, 'from:"Alice Martin"') == ["Quarterly report"]
    assert subjects(store, alice, "to:alice.martin") == ["Re: Quarterly report"]
    assert subjects(store, alice, "cc:carol") == ["Lunch on Friday?"]
    assert subjects(store, alice, "subject:report") == ["Re: Quarterly report", "Quarterly report"]
    assert subjects(store, alice, "subject:revenue") == []  # only in the bodies
    assert subjects(store, alice, "filename:report-q3") == ["Quarterly report"]
    assert subjects(store, alice, "filename:pdf") == ["Quarterly report"]
    assert subjects(store, alice, "filename:議事録") == ["会議の予定"]
    assert subjects(store, alice, "from:иван") == ["Привет из Москвы"]


def test_flags_folders_dates_and_sizes(
    store: Store, alice: Identity, mailbox: dict[str, Any]
) -> None:
    assert subjects(store, alice, "has:attachment") == [
        "Big file",
        "会議の予定",
        "Quarterly report",
    ]
    assert subjects(store, alice, "has:attachment quarterly") == ["Quarterly report"]
    assert subjects(store, alice, "is:starred") == ["Lunch on Friday?"]
    assert subjects(store, alice, "is:unread in:inbox") == ["Grüße aus München", "Quarterly report"]
    assert subjects(store, alice, "is:read in:inbox") == ["Big file", "Lunch on Friday?"]
    assert subjects(store, alice, "in:sent") == ["Re: Quarterly report"]
    assert subjects(store, alice, "in:projects/zeppelin") == ["会議の予定", "Привет из Москвы"]
    assert subjects(store, alice, "in:nowhere") == []
    assert subjects(store, alice, "after:2026-03-09 before:2026-03-11") == [
        "Re: Quarterly report",
        "Grüße aus München",
    ]
    assert subjects(store, alice, "larger:200K") == ["Big file"]
    assert "Big file" not in subjects(store, alice, "smaller:200K")


def test_scoped_to_account_and_folder(
    store: Store, alice: Identity, mailbox: dict[str, Any]
) -> None:
    assert subjects(store, alice, "has:attachment", accountId=mailbox["work"]) == [
        "Quarterly report"
    ]
    assert subjects(store, alice, "report", folderId=mailbox["sent"]) == ["Re: Quarterly report"]


def test_the_body_beyond_the_prefix_is_found_once_the_index_is_completed(
    store: Store, alice: Identity
) -> None:
    account = create_account(store.client, alice.bearer)["id"]
    inbox = store.folder(alice.caller, account)
    archive = store.folder(alice.caller, account, "Archive", "custom")
    filler = "lorem ipsum dolor " * 800  # 14,400 characters
    letter, note, _short = store.deliver(
        alice.caller,
        account,
        inbox,
        Mail(
            subject="Long letter",
            body="Dear team. "
            + "x " * 80
            + "previewword "
            + "x " * 320
            + "midword "
            + filler
            + "deepword yonder "
            + "y " * 50_000
            + "beyondcap",
        ),
        Mail(subject="Long note", body="Note. " + filler + "deepword"),
        Mail(subject="Short", body="A short deepword."),
    )
    # At once: the fields and the start of every body (what the list shows: a word at
    # the end of the preview is found); the rest not yet.
    assert subjects(store, alice, "dear team") == ["Long letter"]
    assert subjects(store, alice, "previewword") == ["Long letter"]
    assert subjects(store, alice, "midword") == []
    assert subjects(store, alice, "deepword") == ["Short"]

    # When the completion job runs (as the worker runs it after the commit)
    assert fullindex.complete_pending(store.runtime, alice.caller.tenant_id, seconds=None) == 2
    assert fullindex.complete_pending(store.runtime, alice.caller.tenant_id) == 0

    # Then words after the first 600 characters and after 14 KB are found, to the cap
    assert subjects(store, alice, "midword") == ["Long letter"]
    assert sorted(subjects(store, alice, "deepword")) == ["Long letter", "Long note", "Short"]
    assert subjects(store, alice, '"deepword yonder"') == ["Long letter"]
    assert subjects(store, alice, "beyondcap") == []
    # with the snippet around the match, and the fields as before (no phrase across them)
    assert "<mark>midword</mark>" in search(store, alice, "midword")["messages"][0]["snippet"]
    assert subjects(store, alice, 'subject:"long letter" dear') == ["Long letter"]
    assert subjects(store, alice, '"test dear"') == []
    assert subjects(store, alice, "to:owner midword") == ["Long letter"]

    # And deleted and moved messages leave or move in the completed index at once
    with open_scope(store.runtime, alice.caller) as scope:
        remove_messages(scope.session, [note])
        scope.session.execute(update(Message).where(Message.id == letter).values(folder_id=archive))
    assert sorted(subjects(store, alice, "deepword")) == ["Long letter", "Short"]
    assert subjects(store, alice, "deepword in:archive") == ["Long letter"]
    assert subjects(store, alice, "midword in:inbox") == []


def test_completion_is_tenant_scoped_and_the_sweep_finds_what_was_never_queued(
    store: Store, alice: Identity
) -> None:
    bob = new_identity()
    owners = []
    for who in (alice, bob):
        account = create_account(store.client, who.bearer)["id"]
        folder = store.folder(who.caller, account)
        store.deliver(
            who.caller, account, folder, Mail(subject="Tail", body="z " * 400 + "tailword")
        )
        owners.append(who)
    queued: list[str] = []

    class Recording:
        def prepare(self, actor: str, task_id: str, **kwargs: Any) -> Any:
            queued.append(kwargs["tenant_id"])
            return type("Job", (), {"job_id": task_id, "send": lambda self: None})()

    # The commits above queued nothing (no queue here): the sweep finds both tenants
    # (and those of other tests' mail, on the shared database).
    jobs, store.runtime.jobs = store.runtime.jobs, Recording()  # type: ignore[assignment]
    try:
        assert fullindex.sweep(store.runtime) == len(queued) >= 2
    finally:
        store.runtime.jobs = jobs
    assert {str(who.caller.tenant_id) for who in owners} <= set(queued)

    # A run for alice's tenant completes alice's entry only.
    assert fullindex.complete_pending(store.runtime, alice.caller.tenant_id) == 1
    assert subjects(store, alice, "tailword") == ["Tail"]
    assert subjects(store, bob, "tailword") == []
    assert fullindex.complete_pending(store.runtime, bob.caller.tenant_id) == 1
    assert subjects(store, bob, "tailword") == ["Tail"]
    with store.runtime.db.transaction(system=True) as session:
        left = textindex.tenants_with_pending(session)
    assert alice.caller.tenant_id not in left and bob.caller.tenant_id not in left


def test_snippet_marks_matches_html_escaped(store: Store, alice: Identity) -> None:
    account = create_account(store.client, alice.bearer)["id"]
    folder = store.folder(alice.caller, account)
    store.deliver(
        alice.caller,
        account,
        folder,
        Mail(subject="Markup", body="Intro text. <script>x</script> & the Zebra crossing is here."),
    )
    hit = search(store, alice, "zebra")["messages"][0]
    assert "<mark>Zebra</mark> crossing" in hit["snippet"]
    assert "&lt;script&gt;" in hit["snippet"] and "<script>" not in hit["snippet"]


def test_other_users_and_tenants_never_see_the_mail(
    store: Store, alice: Identity, mailbox: dict[str, Any]
) -> None:
    same_tenant = new_identity(alice.caller.tenant_id)
    other_tenant = new_identity()
    for who in (same_tenant, other_tenant):
        create_account(store.client, who.bearer)
        assert search(store, who, "quarterly") == {"messages": []}
        assert search(store, who, "is:unread") == {"messages": []}
        response = store.client.get(
            "/api/messages/search",
            params={"q": "x", "accountId": mailbox["work"]},
            headers=who.bearer,
        )
        assert response.status_code == 404
        response = store.client.get(
            "/api/messages/search",
            params={"q": "x", "folderId": mailbox["inbox"]},
            headers=who.bearer,
        )
        assert response.status_code == 404


@pytest.mark.parametrize(
    ("q", "position"),
    [
        ('"open quote', 1),
        ("from:", 6),
        ("before:2026-02-30", 8),
        ("lunch OR", 7),
        ("(a b", 1),
        ("is:maybe", 4),
    ],
)
def test_malformed_query_is_400_saying_where(
    store: Store, alice: Identity, q: str, position: int
) -> None:
    response = store.client.get("/api/messages/search", params={"q": q}, headers=alice.bearer)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "INVALID_QUERY"
    assert f"at character {position}" in body["message"]


def test_cursor_pages_are_stable_while_new_mail_arrives(store: Store, alice: Identity) -> None:
    account = create_account(store.client, alice.bearer)["id"]
    folder = store.folder(alice.caller, account)
    store.deliver(
        alice.caller,
        account,
        folder,
        *[
            Mail(subject=f"Invoice {n}", body="invoice due", received=DAY + timedelta(minutes=n))
            for n in range(7)
        ],
    )
    seen: list[str] = []
    page = search(store, alice, "invoice", limit=3)
    seen += [hit["subject"] for hit in page["messages"]]
    # New mail, newer and older than the page boundary, arrives between pages.
    store.deliver(
        alice.caller,
        account,
        folder,
        Mail(subject="Invoice new", body="invoice", received=DAY + timedelta(hours=5)),
    )
    while "nextCursor" in page:
        page = search(store, alice, "invoice", limit=3, cursor=page["nextCursor"])
        seen += [hit["subject"] for hit in page["messages"]]
    assert seen == [f"Invoice {n}" for n in range(6, -1, -1)]
    response = store.client.get(
        "/api/messages/search",
        params={"q": "other", "cursor": page.get("nextCursor") or "bogus"},
        headers=alice.bearer,
    )
    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_CURSOR"


def test_relevance_puts_the_best_match_first_and_pages(store: Store, alice: Identity) -> None:
    account = create_account(store.client, alice.bearer)["id"]
    folder = store.folder(alice.caller, account)
    store.deliver(
        alice.caller,
        account,
        folder,
        Mail(subject="Gardening", body="roses roses roses in the garden", received=DAY),
        Mail(
            subject="Misc", body="a single rose... no: roses once", received=DAY + timedelta(days=1)
        ),
        Mail(subject="Other", body="nothing relevant", received=DAY + timedelta(days=2)),
    )
    assert subjects(store, alice, "roses") == ["Misc", "Gardening"]
    assert subjects(store, alice, "roses", sort="relevance") == ["Gardening", "Misc"]
    first = search(store, alice, "roses", sort="relevance", limit=1)
    second = search(store, alice, "roses", sort="relevance", limit=1, cursor=first["nextCursor"])
    assert [first["messages"][0]["subject"], second["messages"][0]["subject"]] == [
        "Gardening",
        "Misc",
    ]
    assert "nextCursor" not in second


def test_deleted_and_moved_messages_leave_or_move_in_the_index(
    store: Store, alice: Identity
) -> None:
    account = create_account(store.client, alice.bearer)["id"]
    inbox = store.folder(alice.caller, account)
    archive = store.folder(alice.caller, account, "Archive", "custom")
    gone, moved = store.deliver(
        alice.caller,
        account,
        inbox,
        Mail(subject="Walrus one", body="walrus"),
        Mail(subject="Walrus two", body="walrus"),
    )
    with open_scope(store.runtime, alice.caller) as scope:
        remove_messages(scope.session, [gone])
        scope.session.execute(update(Message).where(Message.id == moved).values(folder_id=archive))
    assert subjects(store, alice, "walrus") == ["Walrus two"]
    assert subjects(store, alice, "walrus in:archive") == ["Walrus two"]
    assert subjects(store, alice, "walrus in:inbox") == []
    # An account's deletion takes its mail out of the index too.
    assert store.client.delete(f"/api/accounts/{account}", headers=alice.bearer).status_code == 204
    assert subjects(store, alice, "walrus") == []
    with open_scope(store.runtime, alice.caller) as scope:
        assert scope.session.scalars(select(Message.id).where(Message.id == moved)).all() in (
            [],
            [moved],
        )
