"""What a folder's sync does, decided from the stored state and the server's answers
(IMAP folders; POP3's one INBOX at the end).

Nothing here talks to a server or a database: ``imap_sync`` reads the stored state,
asks the server what :func:`questions` says is needed, hands both to
:func:`plan_folder`, and applies the :class:`FolderPlan` it gets back.

Per folder, the saved state (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, the last UID stored)
decides how little needs asking (:func:`folder_mode`):

* nothing changed (same UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ, with CONDSTORE): known
  from the LIST-STATUS answer that listed the folders, so not even an EXAMINE (one
  EXAMINE where the server lacks LIST-STATUS);
* UIDVALIDITY changed: every stored message of the folder is void, the folder is rebuilt;
* no UIDVALIDITY stored yet: the folder's first mirror (or one cut off and resumed);
* otherwise expunges come from QRESYNC ``VANISHED`` (or a UID comparison), flag changes
  from CONDSTORE ``CHANGEDSINCE`` (or a sweep of every flag), and new mail is the UIDs
  above the last one stored.

``force`` trusts none of the saved state: every UID and every flag is compared.

A first mirror or a rebuild is told as one ``sync.completed`` once it is complete, so
its removals, flag changes and new messages are not announced one by one; after that,
every message stored, changed or removed is a ``message.*`` change of its own.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from email_service.mail.imap import FolderState
from email_service.mailstore.folders import LocalFolder
from email_service.mailstore.messages import FlagState


class Mode(enum.Enum):
    UNCHANGED = "unchanged"
    #: Only what changed since the saved state: VANISHED/UIDs, CHANGEDSINCE/flags, new UIDs.
    INCREMENTAL = "incremental"
    #: ``force``: every UID and every flag compared with what is stored.
    FULL = "full"
    #: No UIDVALIDITY stored: the folder was never mirrored whole (or a mirror was cut off).
    FIRST = "first"
    #: The server's UIDVALIDITY is not the stored one: every stored message is void.
    REBUILD = "rebuild"

    @property
    def whole(self) -> bool:
        """Every UID and flag on the server is compared, none of the saved state trusted."""
        return self in (Mode.FULL, Mode.FIRST, Mode.REBUILD)

    @property
    def mirror(self) -> bool:
        """A whole mirror, told as one ``sync.completed`` rather than per message."""
        return self in (Mode.FIRST, Mode.REBUILD)


def folder_mode(folder: LocalFolder, state: FolderState, force: bool) -> Mode:
    """How the folder is to be synced, from its saved state and the server's."""
    if folder.uidvalidity is not None and folder.uidvalidity != state.uidvalidity:
        return Mode.REBUILD
    if folder.uidvalidity is None:
        return Mode.FIRST
    if force:
        return Mode.FULL
    if (
        state.highestmodseq is not None
        and folder.highest_modseq == state.highestmodseq
        and folder.uidnext == state.uidnext
    ):
        return Mode.UNCHANGED
    return Mode.INCREMENTAL


@dataclass(frozen=True)
class StoredMessage:
    """A stored message of the folder, as far as a sync compares it."""

    id: str
    flags: tuple[str, ...]
    #: A change made through the API is still to be written to the server: it wins.
    pending: bool = False


@dataclass(frozen=True)
class LocalState:
    """The folder as stored: its saved sync state and its messages by UID."""

    folder: LocalFolder
    messages: Mapping[int, StoredMessage]


@dataclass(frozen=True)
class Questions:
    """What to ask the server, once the folder is open, for :func:`plan_folder`."""

    #: ``UID SEARCH ALL``.
    all_uids: bool = False
    #: QRESYNC ``VANISHED`` since this mod-sequence, limited to the stored UIDs.
    vanished_since: int | None = None
    #: Every message's flags.
    all_flags: bool = False
    #: CONDSTORE ``CHANGEDSINCE`` this mod-sequence.
    flags_since: int | None = None
    #: UIDs above this one (new mail), when every UID is not asked anyway.
    uids_above: int | None = None


def questions(mode: Mode, local: LocalState, *, qresync: bool) -> Questions:
    """The fewest questions that let :func:`plan_folder` decide for a folder in ``mode``."""
    folder = local.folder
    if mode is Mode.UNCHANGED:
        return Questions()
    # A rebuild compares nothing: what is stored is void.
    stored = bool(local.messages) and mode is not Mode.REBUILD
    modseq = folder.highest_modseq
    ask_vanished = stored and not mode.whole and qresync and modseq is not None
    all_uids = mode.whole or (stored and not ask_vanished)
    return Questions(
        all_uids=all_uids,
        vanished_since=modseq if ask_vanished else None,
        all_flags=stored and (mode.whole or modseq is None),
        flags_since=modseq if stored and not mode.whole else None,
        uids_above=None if all_uids else folder.last_seen_uid,
    )


@dataclass(frozen=True)
class RemoteState:
    """The server's side of a folder: its state and the answers to :class:`Questions`."""

    state: FolderState
    #: Every UID in the folder, when asked.
    uids: Sequence[int] | None = None
    #: Stored UIDs the server expunged (QRESYNC), when asked.
    vanished: Sequence[int] | None = None
    #: Flags by UID: of every message, or of those changed since the saved mod-sequence.
    flags: Mapping[int, tuple[str, ...]] | None = None
    #: UIDs above the last one stored, when asked.
    above: Sequence[int] | None = None


@dataclass(frozen=True)
class FolderPlan:
    """Everything a folder's sync writes, decided before anything is written."""

    mode: Mode
    #: The server's state, saved when the folder is finished.
    state: FolderState
    #: Message ids gone from the server, and how many of them were unread.
    remove: tuple[str, ...] = ()
    removed_unread: int = 0
    #: New flags of stored messages, and what they do to the unread count.
    flags: tuple[tuple[str, FlagState], ...] = ()
    unread_delta: int = 0
    #: New mail to fetch, ascending.
    fetch: tuple[int, ...] = ()

    @property
    def unchanged(self) -> bool:
        return self.mode is Mode.UNCHANGED

    @property
    def empty_first(self) -> bool:
        """Remove every stored message before anything else (UIDVALIDITY changed)."""
        return self.mode is Mode.REBUILD

    @property
    def announce(self) -> bool:
        """Each write is a ``message.*`` change (not part of a whole mirror)."""
        return not self.mode.mirror

    @property
    def completed_reason(self) -> str | None:
        """``reason`` of the ``sync.completed`` told once the folder is done, if any."""
        if self.mode is Mode.REBUILD:
            return "rebuild"
        if self.mode is Mode.FIRST:
            return "initial"
        return None


def plan_folder(local: LocalState, remote: RemoteState, force: bool) -> FolderPlan:
    """Decide what the folder's sync writes.

    ``remote`` must hold the answers :func:`questions` asked for in the mode this
    returns; a missing one is a programming error (``ValueError``).
    """
    folder = local.folder
    mode = folder_mode(folder, remote.state, force)
    if mode is Mode.UNCHANGED:
        return FolderPlan(mode, remote.state)
    stored = {} if mode is Mode.REBUILD else dict(local.messages)

    gone: list[int] = []
    if stored:
        if remote.vanished is not None and not mode.whole:
            # Only what we have stored counts: QRESYNC may name UIDs we never had.
            gone = sorted(uid for uid in set(remote.vanished) if uid in stored)
        elif remote.uids is not None:
            present = set(remote.uids)
            gone = sorted(uid for uid in stored if uid not in present)
        else:
            raise ValueError("the server's UIDs or VANISHED are needed to find expunges")
        # A row with a change still to be written stays until that job has run (it may
        # be moving the message right now); the next sync removes it if it is gone.
        gone = [uid for uid in gone if not stored[uid].pending]
    removed_unread = sum(1 for uid in gone if "\\Seen" not in stored[uid].flags)
    remove = tuple(stored.pop(uid).id for uid in gone)

    updates: list[tuple[str, FlagState]] = []
    unread_delta = 0
    if stored:
        if remote.flags is None:
            raise ValueError("the server's flags are needed for stored messages")
        for uid, flags in sorted(remote.flags.items()):
            entry = stored.get(uid)
            if entry is None or entry.pending:
                # New mail (fetched with its flags), or a local change still being
                # written to the server (it wins).
                continue
            new = FlagState.of(flags)
            if new.flags != sorted(entry.flags):
                updates.append((entry.id, new))
                unread_delta += int("\\Seen" in entry.flags) - int(new.is_read)

    if remote.uids is not None:
        candidates = remote.uids
        if not mode.whole:
            # UIDs up to the last one stored were handled (stored, or skipped as
            # unreadable): only a forced sync or a mirror asks for them again.
            candidates = [uid for uid in candidates if uid > folder.last_seen_uid]
    elif remote.above is not None and not mode.whole:
        candidates = [uid for uid in remote.above if uid > folder.last_seen_uid]
    else:
        raise ValueError("the server's UIDs are needed to find new mail")
    fetch = tuple(sorted({uid for uid in candidates if uid not in stored}))

    return FolderPlan(
        mode,
        remote.state,
        remove=remove,
        removed_unread=removed_unread,
        flags=tuple(updates),
        unread_delta=unread_delta,
        fetch=fetch,
    )


@dataclass(frozen=True)
class Pop3Plan:
    """What a POP3 sync of the one INBOX writes: UIDL is all that survives sessions."""

    #: Message ids whose UIDL the server no longer lists.
    remove: tuple[str, ...]
    #: New mail as (message number in this session, UIDL), oldest first as the server
    #: numbers them, so a cut-off sync resumes in order.
    fetch: tuple[tuple[int, str], ...]
    #: The INBOX was never mirrored whole: told as one ``sync.completed``.
    first: bool

    @property
    def announce(self) -> bool:
        return not self.first

    @property
    def completed_reason(self) -> str | None:
        return "initial" if self.first else None


def plan_pop3(stored: Mapping[str, str], listed: Mapping[str, int], first: bool) -> Pop3Plan:
    """Decide a POP3 sync from the stored ``UIDL -> message id`` and the server's
    ``UIDL -> message number``: vanished ids are removed, new ones retrieved."""
    new = sorted((number, uidl) for uidl, number in listed.items() if uidl not in stored)
    return Pop3Plan(
        remove=tuple(message_id for uidl, message_id in stored.items() if uidl not in listed),
        fetch=tuple(new),
        first=first,
    )
