"""The folder sync planner on its own: stored state + server answers in, a plan out.

No IMAP and no database: the server is a dict of UID -> (flags, modseq), answering the
planner's questions the way an IMAP server would (tests/sync drives the real path).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest

from email_service.mail.imap import FolderState
from email_service.mailstore.folders import LocalFolder
from email_service.services.sync.plan import (
    FolderPlan,
    LocalState,
    Mode,
    Pop3Plan,
    Questions,
    RemoteState,
    StoredMessage,
    folder_mode,
    plan_folder,
    plan_pop3,
    questions,
)

SEEN = "\\Seen"
FLAGGED = "\\Flagged"


@dataclass
class Server:
    """One folder on a pretend IMAP server."""

    uidvalidity: int = 7
    condstore: bool = True
    qresync: bool = True
    messages: dict[int, tuple[tuple[str, ...], int]] = field(default_factory=dict)
    expunged: dict[int, int] = field(default_factory=dict)  # uid -> modseq of the expunge
    uidnext: int = 1
    modseq: int = 1

    def add(self, *flags: str) -> int:
        uid = self.uidnext
        self.uidnext += 1
        self.modseq += 1
        self.messages[uid] = (tuple(flags), self.modseq)
        return uid

    def set_flags(self, uid: int, *flags: str) -> None:
        self.modseq += 1
        self.messages[uid] = (tuple(flags), self.modseq)

    def expunge(self, uid: int) -> None:
        self.modseq += 1
        del self.messages[uid]
        self.expunged[uid] = self.modseq

    @property
    def state(self) -> FolderState:
        return FolderState(
            uidvalidity=self.uidvalidity,
            uidnext=self.uidnext,
            exists=len(self.messages),
            highestmodseq=self.modseq if self.condstore else None,
        )

    def answer(self, ask: Questions) -> RemoteState:
        flags = None
        if ask.all_flags:
            flags = {uid: f for uid, (f, _) in self.messages.items()}
        elif ask.flags_since is not None:
            since = ask.flags_since
            flags = {uid: f for uid, (f, m) in self.messages.items() if m > since}
        vanished = None
        if ask.vanished_since is not None:
            assert self.qresync
            since = ask.vanished_since
            # A hostile answer may name UIDs never stored: the planner drops them.
            vanished = [uid for uid, m in self.expunged.items() if m > since] + [999_999]
        return RemoteState(
            self.state,
            uids=sorted(self.messages) if ask.all_uids else None,
            vanished=vanished,
            flags=flags,
            above=(
                sorted(uid for uid in self.messages if uid > ask.uids_above)
                if ask.uids_above is not None
                else None
            ),
        )


@dataclass
class Store:
    """What a sync left stored: the folder's saved state and its messages."""

    folder: LocalFolder
    messages: dict[int, StoredMessage]

    @classmethod
    def mirrored(cls, server: Server) -> Store:
        """As a complete sync of ``server`` leaves it."""
        folder = LocalFolder(
            id="f1",
            name="INBOX",
            type="inbox",
            uidvalidity=server.uidvalidity,
            uidnext=server.uidnext,
            highest_modseq=server.state.highestmodseq,
            last_seen_uid=max(server.messages, default=0),
            message_count=len(server.messages),
        )
        messages = {
            uid: StoredMessage(f"m{uid}", flags) for uid, (flags, _) in server.messages.items()
        }
        return cls(folder, messages)

    @classmethod
    def empty(cls) -> Store:
        return cls(LocalFolder("f1", "INBOX", "inbox", None, None, None, 0, 0), {})

    def local(self) -> LocalState:
        return LocalState(self.folder, dict(self.messages))


def sync_plan(store: Store, server: Server, force: bool = False) -> tuple[FolderPlan, Questions]:
    """What a sync of ``server`` over ``store`` plans, and what it had to ask."""
    local = store.local()
    mode = folder_mode(store.folder, server.state, force)
    ask = questions(mode, local, qresync=server.qresync)
    remote = server.answer(ask)
    return plan_folder(local, remote, force), ask


def inbox(count: int, **options: object) -> Server:
    server = Server(**options)  # type: ignore[arg-type]
    for number in range(count):
        server.add(SEEN if number % 2 else FLAGGED)
    return server


def test_an_unchanged_folder_asks_nothing_and_writes_nothing() -> None:
    server = inbox(5)
    plan, ask = sync_plan(Store.mirrored(server), server)
    assert plan.unchanged and plan.mode is Mode.UNCHANGED
    assert ask == Questions()
    assert (plan.remove, plan.flags, plan.fetch) == ((), (), ())
    assert plan.completed_reason is None


def test_new_mail_is_fetched_and_told_per_message() -> None:
    server = inbox(5)
    store = Store.mirrored(server)
    new = [server.add(), server.add(SEEN)]
    plan, ask = sync_plan(store, server)
    assert plan.mode is Mode.INCREMENTAL
    assert plan.fetch == tuple(new)
    assert plan.remove == () and plan.flags == ()
    assert plan.announce and plan.completed_reason is None
    # With QRESYNC and CONDSTORE, nothing is asked about the whole folder.
    assert not ask.all_uids and not ask.all_flags
    assert ask.uids_above == 5 and ask.vanished_since == ask.flags_since == 1 + 5


def test_an_expunge_removes_the_stored_message_and_its_unread_count() -> None:
    server = inbox(6)
    store = Store.mirrored(server)
    server.expunge(1)  # flagged, unread
    server.expunge(2)  # read
    plan, ask = sync_plan(store, server)
    assert ask.vanished_since is not None
    assert plan.remove == ("m1", "m2")  # the vanished UID we never had is ignored
    assert plan.removed_unread == 1
    assert plan.fetch == () and plan.flags == ()
    assert plan.announce


def test_an_expunge_without_qresync_is_found_by_comparing_uids() -> None:
    server = inbox(4, qresync=False)
    store = Store.mirrored(server)
    del store.messages[1]  # skipped as unreadable: handled, not asked for again
    server.expunge(3)
    new = server.add()
    plan, ask = sync_plan(store, server)
    assert ask.all_uids and ask.vanished_since is None and ask.uids_above is None
    assert plan.remove == ("m3",)
    assert plan.fetch == (new,)


def test_a_flag_change_is_written_with_its_unread_delta() -> None:
    server = inbox(4)
    store = Store.mirrored(server)
    server.set_flags(1, SEEN, "Work")  # was unread
    server.set_flags(2)  # was read
    server.set_flags(4, SEEN)  # the same flags again: nothing to write
    plan, ask = sync_plan(store, server)
    assert ask.flags_since is not None and not ask.all_flags
    written = dict(plan.flags)
    assert set(written) == {"m1", "m2"}
    assert written["m1"].flags == sorted([SEEN, "Work"]) and written["m1"].labels == ["Work"]
    assert not written["m2"].is_read
    assert plan.unread_delta == 0  # one read, one unread
    assert plan.fetch == () and plan.remove == ()


def test_a_local_change_still_to_be_written_wins_over_the_server() -> None:
    server = inbox(3)
    store = Store.mirrored(server)
    store.messages[1] = StoredMessage("m1", (FLAGGED, SEEN), pending=True)
    store.messages[2] = StoredMessage("m2", (SEEN,), pending=True)
    server.set_flags(1)
    server.expunge(2)  # moved away by that change, perhaps: it stays until the job ran
    plan, _ = sync_plan(store, server)
    assert plan.flags == () and plan.remove == ()
    assert plan.fetch == ()


def test_a_changed_uidvalidity_rebuilds_the_folder_from_every_uid() -> None:
    server = inbox(3)
    store = Store.mirrored(server)
    server.uidvalidity += 1
    plan, ask = sync_plan(store, server)
    assert plan.mode is Mode.REBUILD and plan.empty_first
    # The stored messages are void: none compared, every UID fetched again.
    assert ask == Questions(all_uids=True)
    assert plan.remove == () and plan.flags == ()
    assert plan.fetch == (1, 2, 3)
    assert not plan.announce and plan.completed_reason == "rebuild"
    assert plan.state.uidvalidity == server.uidvalidity


def test_a_first_mirror_fetches_everything_and_is_one_sync_completed() -> None:
    server = inbox(4)
    plan, ask = sync_plan(Store.empty(), server)
    assert plan.mode is Mode.FIRST
    assert ask == Questions(all_uids=True)  # nothing stored: no flags asked
    assert plan.fetch == (1, 2, 3, 4)
    assert not plan.announce and plan.completed_reason == "initial"
    assert not plan.empty_first


def test_a_cut_off_first_mirror_resumes_without_storing_twice() -> None:
    server = inbox(5)
    store = Store.empty()
    store.messages = {1: StoredMessage("m1", (FLAGGED,)), 2: StoredMessage("m2", (SEEN,))}
    store.folder = LocalFolder("f1", "INBOX", "inbox", None, None, None, 2, 2)
    server.expunge(1)
    server.set_flags(2)
    plan, ask = sync_plan(store, server)
    assert plan.mode is Mode.FIRST and ask.all_uids and ask.all_flags
    assert plan.fetch == (3, 4, 5)
    assert plan.remove == ("m1",) and [message for message, _ in plan.flags] == ["m2"]
    # Still part of the one sync.completed: nothing told per message.
    assert not plan.announce and plan.completed_reason == "initial"


def test_a_forced_sync_trusts_no_saved_state() -> None:
    server = inbox(4)
    store = Store.mirrored(server)
    # UID 2 was skipped as unreadable last time (handled, never stored): only a forced
    # sync asks for it again; a normal one does not.
    del store.messages[2]
    plan, ask = sync_plan(store, server)
    assert plan.unchanged
    plan, ask = sync_plan(store, server, force=True)
    assert plan.mode is Mode.FULL
    assert ask.all_uids and ask.all_flags and ask.vanished_since is None
    assert plan.fetch == (2,)
    assert plan.announce and plan.completed_reason is None


def test_a_server_without_condstore_is_never_unchanged_and_sweeps_every_flag() -> None:
    server = inbox(3, condstore=False, qresync=False)
    store = Store.mirrored(server)
    assert store.folder.highest_modseq is None
    plan, ask = sync_plan(store, server)
    assert plan.mode is Mode.INCREMENTAL
    assert ask.all_uids and ask.all_flags and ask.flags_since is None
    assert (plan.remove, plan.flags, plan.fetch) == ((), (), ())
    server.set_flags(3, SEEN)  # was unread
    new = server.add()
    plan, _ = sync_plan(store, server)
    assert [message for message, _ in plan.flags] == ["m3"] and plan.unread_delta == -1
    assert plan.fetch == (new,)


def test_missing_answers_are_a_programming_error() -> None:
    server = inbox(2)
    store = Store.mirrored(server)
    server.add()
    with pytest.raises(ValueError):
        plan_folder(store.local(), RemoteState(server.state), force=False)


@pytest.mark.parametrize(
    ("condstore", "qresync", "force", "stored"),
    [
        (c, q, f, s)
        for c, q, f, s in itertools.product([True, False], repeat=4)
        if c or not q  # QRESYNC implies CONDSTORE
    ],
)
def test_every_mode_asks_what_its_plan_needs_and_ends_in_the_server_state(
    condstore: bool, qresync: bool, force: bool, stored: bool
) -> None:
    # Whatever happened on the server, the plan applied to the store gives the server's
    # UIDs and flags, and a second sync finds nothing more to do.
    server = inbox(6, condstore=condstore, qresync=qresync)
    store = Store.mirrored(server) if stored else Store.empty()
    server.expunge(2)
    server.set_flags(3, "Work")
    server.set_flags(4, SEEN, FLAGGED)
    server.add(SEEN)
    plan, _ = sync_plan(store, server, force=force)
    removed = set(plan.remove)
    kept = {uid: m for uid, m in store.messages.items() if m.id not in removed}
    flags = {message: state.flags for message, state in plan.flags}
    result = {uid: tuple(flags.get(m.id, m.flags)) for uid, m in kept.items()}
    result.update({uid: server.messages[uid][0] for uid in plan.fetch})
    expected = {uid: f for uid, (f, _) in server.messages.items()}
    assert {uid: sorted(f) for uid, f in result.items()} == {
        uid: sorted(f) for uid, f in expected.items()
    }
    after = Store(
        LocalFolder(
            "f1",
            "INBOX",
            "inbox",
            server.uidvalidity,
            server.uidnext,
            server.state.highestmodseq,
            max(server.messages),
            len(server.messages),
        ),
        {uid: StoredMessage(f"m{uid}", f) for uid, f in result.items()},
    )
    again, _ = sync_plan(after, server)
    assert (again.remove, again.flags, again.fetch) == ((), (), ())
    assert again.unchanged == condstore


def test_pop3_new_uidls_are_retrieved_oldest_first_and_vanished_ones_removed() -> None:
    stored = {"a": "m1", "b": "m2", "c": "m3"}
    listed = {"c": 1, "e": 3, "d": 2}
    plan = plan_pop3(stored, listed, first=False)
    assert plan.remove == ("m1", "m2")
    assert plan.fetch == ((2, "d"), (3, "e"))
    assert plan.announce and plan.completed_reason is None
    assert plan_pop3({"c": "m3"}, {"c": 1}, first=False) == Pop3Plan((), (), False)


def test_a_pop3_first_mirror_is_one_sync_completed() -> None:
    plan = plan_pop3({}, {"x": 2, "y": 1}, first=True)
    assert plan.fetch == ((1, "y"), (2, "x")) and plan.remove == ()
    assert not plan.announce and plan.completed_reason == "initial"
