"""A per-process memory budget for building outgoing messages.

Building a message holds its attachments' bytes, the encoded parts and the final bytes
(twice when there are Bcc recipients) at once: measured, about four times the finished
message beside the raw attachments (a 25 MB message raises the peak by ~130 MiB). Ten
request threads doing that together would take an API pod past its 512Mi limit. So each
build first reserves an estimate of its cost here and waits while the budget is spent;
small messages still pass beside a large one. Waiting longer than ``wait_seconds``
answers 503 with ``Retry-After``: the caller tries again in a moment, the pod lives.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from email_service.errors import ServiceError

#: Peak memory of a build per byte of the finished message, with room to spare
#: (bench-free measurement: 104 MiB for 24.6 MB, 46 MiB for 11 MB, plus the attachments).
COST_PER_MESSAGE_BYTE = 5


class BuildBusy(ServiceError):
    status = 503
    error = "Service unavailable"
    code = "BUSY"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BuildBudget:
    """Bytes that message builds of this process may hold at once."""

    def __init__(self, budget_bytes: int, wait_seconds: float) -> None:
        self.budget = budget_bytes
        self.wait_seconds = wait_seconds
        self._used = 0
        self._changed = threading.Condition()

    @property
    def used(self) -> int:
        with self._changed:
            return self._used

    @contextmanager
    def reserve(self, message_bytes: int) -> Iterator[None]:
        """Hold the cost of building a message of about ``message_bytes`` for the block.

        A build larger than the whole budget still runs, alone. Raises
        :class:`BuildBusy` when the budget stays spent for ``wait_seconds``.
        """
        cost = min(self.budget, max(1, message_bytes) * COST_PER_MESSAGE_BYTE)
        deadline = time.monotonic() + self.wait_seconds
        with self._changed:
            while self._used + cost > self.budget:
                left = deadline - time.monotonic()
                if left <= 0 or not self._changed.wait(left):
                    if self._used + cost <= self.budget:
                        break
                    raise BuildBusy(
                        "Too many large messages are being built right now; try again shortly",
                        retry_after=max(1, int(self.wait_seconds)),
                    )
            self._used += cost
        try:
            yield
        finally:
            with self._changed:
                self._used -= cost
                self._changed.notify_all()
