"""What every sync run shares: its counters and the run's unit of work."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from email_service.mailstore.folders import mark_synced
from email_service.mailstore.messages import MessageStore, Skipped
from email_service.scope import JobUnit

# A batch is also cut short at this many bytes of raw mail, which bounds a worker's memory
# whatever the batch size (a few huge messages in a row).
MAX_BATCH_BYTES = 8 * 1024 * 1024


@dataclass
class SyncCounts:
    added: int = 0
    updated: int = 0
    removed: int = 0
    folders: int = 0
    skipped: list[Skipped] = field(default_factory=list)

    @classmethod
    def resume(cls, result: dict[str, Any] | None) -> SyncCounts:
        """Counts to continue from: what earlier, cut-off attempts of the task stored."""
        if not result:
            return cls()
        skipped = [
            Skipped(str(e.get("folder", "")), str(e.get("reason", "")), e.get("uid"), e.get("uidl"))
            for e in result.get("skipped", [])
        ]
        return cls(
            added=int(result.get("messagesAdded", 0)),
            updated=int(result.get("messagesUpdated", 0)),
            removed=int(result.get("messagesRemoved", 0)),
            skipped=skipped,
        )

    def result(self) -> dict[str, object]:
        result: dict[str, object] = {
            "messagesAdded": self.added,
            "messagesUpdated": self.updated,
            "messagesRemoved": self.removed,
            "foldersSync": self.folders,
        }
        if self.skipped:
            result["messagesSkipped"] = len(self.skipped)
            result["skipped"] = [entry.as_dict() for entry in self.skipped[:100]]
        return result


@dataclass
class SyncJob:
    """What one sync run needs: where to write, what to sync, how to report."""

    unit: JobUnit
    account_id: str
    store: MessageStore
    force: bool
    only_folders: frozenset[str] | None
    batch_size: int
    progress: Callable[[float], None]
    counts: SyncCounts = field(default_factory=SyncCounts)
    blob_keys: list[str] = field(default_factory=list)
    # Folders found unchanged: their "synced at" is written once, by ``finish``.
    unchanged: list[str] = field(default_factory=list)
    saved_counts: tuple[int, ...] = (0, 0, 0, 0)
    #: The runner's own part of a completed sync's last step (the task's success, the
    #: account freed), given the task's result; see :meth:`complete`.
    on_complete: Callable[[Session, dict[str, object]], None] | None = None
    #: Whether the sync's last step (``complete``) has committed.
    completed: bool = False

    def finish(self, session: Session) -> None:
        """What a completed sync writes last (with the task's success): the folders
        found unchanged were synced now."""
        if self.unchanged:
            # Same state as last time, so the same counts: only the time is new.
            mark_synced(session, self.unchanged)

    def complete(self, session: Session, counts: SyncCounts | None = None) -> None:
        """Write the completed sync's last step in ``session``: ``finish`` and the
        runner's ``on_complete`` with ``counts`` (default: the job's). The caller sets
        ``completed`` once that step has committed."""
        self.finish(session)
        if self.on_complete is not None:
            self.on_complete(session, (counts or self.counts).result())

    @property
    def tenant_id(self) -> uuid.UUID:
        return self.unit.tenant_id

    def transaction(self) -> AbstractContextManager[Session]:
        """A step of the run's unit of work: it commits at the end of the block (a
        checkpoint the sync resumes from), and no IMAP or POP3 exchange happens in it."""
        return self.unit.step()
