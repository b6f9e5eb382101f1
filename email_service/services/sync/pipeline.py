"""Storing batches on a thread of their own while the next batch is fetched and parsed.

Fetching and parsing use this process's CPU; storing mostly waits (for PostgreSQL to
compress and write, for S3 to take the blobs). Overlapping the two makes a sync take
about as long as the slower of them instead of their sum. At most ``depth`` parsed
batches wait in between, which bounds the memory a sync holds.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence

from sqlalchemy.orm import Session

from email_service.mailstore.messages import FolderTarget, Incoming, adjust_counts
from email_service.services.sync.base import SyncJob

#: Called in the batch's transaction after its messages were added (resume markers).
AfterBatch = Callable[[Session, Sequence[Incoming]], None]

_DONE = object()


class BatchWriter:
    """Stores the batches handed to :meth:`submit`, in order, on a background thread.

    Use it as a context manager: leaving the block normally waits for every batch to
    be stored and raises the writer's error if one failed; leaving it with an error
    stops the writer after the batch it is storing. Batch by batch, each commit holds
    the batch, whatever ``after_batch`` records and the task's counts (``on_stored``
    reports progress within the batch's step), so a cut-off sync resumes exactly.
    """

    def __init__(
        self,
        job: SyncJob,
        target: FolderTarget,
        after_batch: AfterBatch,
        on_stored: Callable[[int], None],
        depth: int = 2,
    ) -> None:
        self.job = job
        self.target = target
        self.after_batch = after_batch
        self.on_stored = on_stored
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sync-writer", daemon=True)

    def __enter__(self) -> BatchWriter:
        self._thread.start()
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            self._stop.set()
        self._put(_DONE)
        self._thread.join()
        if exc is None and self._error is not None:
            raise self._error

    def submit(self, items: list[Incoming]) -> None:
        """Queue a batch; raises at once if an earlier batch failed to be stored."""
        if self._error is not None:
            raise self._error
        self._put(items)

    def _put(self, item: object) -> None:
        while self._thread.is_alive():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE or self._stop.is_set() or self._error is not None:
                if item is _DONE:
                    return
                continue
            assert isinstance(item, list)
            try:
                self._store(item)
            except BaseException as exc:
                self._error = exc

    def _store(self, items: list[Incoming]) -> None:
        job = self.job
        counts, saved = job.counts, job.saved_counts
        added, skipped = counts.added, len(counts.skipped)
        try:
            with job.transaction() as session:
                outcome = job.store.add_batch(session, self.target, items)
                adjust_counts(session, self.target.folder_id, outcome.added, outcome.unread)
                self.after_batch(session, items)
                counts.added += outcome.added
                counts.skipped.extend(outcome.skipped)
                # The progress report joins this step: the task's counts commit with the
                # batch (one transaction, where the report was one more of its own).
                self.on_stored(len(items))
        except BaseException:
            # Not committed: the counts stay as they were, for a rerun to resume from.
            counts.added = added
            del counts.skipped[skipped:]
            job.saved_counts = saved
            raise
