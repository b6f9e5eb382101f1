"""Number sets sent by an IMAP server, kept as ranges.

A server answers with sets such as ``4:7,9`` in ESEARCH (``ALL``), VANISHED and COPYUID.
One line like ``1:4294967295`` names four billion numbers; expanding it would take
minutes and more memory than a worker has, and the killed worker's job would be
redelivered to crash again. So a set stays a list of ranges, and only its intersection
with what we asked about or already know is ever turned into numbers:

* ``VANISHED`` is intersected with the UIDs we have stored;
* ``ESEARCH ALL`` with the folder's UID space (``1 .. UIDNEXT-1``), and the result may not
  hold more numbers than the folder has messages (``EXISTS``) nor more than
  :data:`~email_service.mail.limits.MAX_FOLDER_UIDS`;
* ``COPYUID`` is looked up (position of a UID in the source set, same position in the
  destination set) without expanding either.

The text of a set is already bounded by the line cap, so the number of ranges is too.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator

from .errors import MailProtocolError

__all__ = ["UidRanges"]

_MAX_UID = 2**32 - 1  # UIDs and sequence numbers are unsigned 32-bit (RFC 3501 4.2)


class UidRanges:
    """A set of positive integers as sorted, non-overlapping inclusive ranges."""

    __slots__ = ("_highs", "_lows", "_order")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        # ``_order`` keeps the ranges as the server listed them: COPYUID pairs the n-th
        # UID of the source set with the n-th of the destination set in listed order.
        self._order = [(low, high) for low, high in ranges]
        merged: list[tuple[int, int]] = []
        for low, high in sorted(self._order):
            if merged and low <= merged[-1][1] + 1:
                if high > merged[-1][1]:
                    merged[-1] = (merged[-1][0], high)
            else:
                merged.append((low, high))
        self._lows = [low for low, _ in merged]
        self._highs = [high for _, high in merged]

    @classmethod
    def parse(cls, text: str) -> UidRanges:
        """Parse ``4:7,9`` (either end of a range may come first). ``*`` parts are ignored.

        Raises :class:`MailProtocolError` for anything that is not a number set.
        """
        ranges: list[tuple[int, int]] = []
        for part in text.strip().split(","):
            if not part or "*" in part:
                continue
            low_text, _, high_text = part.partition(":")
            try:
                low = int(low_text)
                high = int(high_text) if high_text else low
            except ValueError:
                raise MailProtocolError(
                    f"the IMAP server sent a malformed number set ({text[:80]!r})"
                ) from None
            if not (0 < low <= _MAX_UID and 0 < high <= _MAX_UID):
                raise MailProtocolError(
                    f"the IMAP server sent a number outside 1-{_MAX_UID} in a set ({text[:80]!r})"
                )
            ranges.append((min(low, high), max(low, high)))
        return cls(ranges)

    @property
    def listed(self) -> list[tuple[int, int]]:
        """The ranges in the order the server listed them."""
        return list(self._order)

    def __contains__(self, number: object) -> bool:
        if not isinstance(number, int):
            return False
        i = bisect.bisect_right(self._lows, number) - 1
        return i >= 0 and number <= self._highs[i]

    def __len__(self) -> int:
        return sum(high - low + 1 for low, high in zip(self._lows, self._highs, strict=True))

    def __bool__(self) -> bool:
        return bool(self._lows)

    def clip(self, low: int, high: int) -> UidRanges:
        """The part of this set between ``low`` and ``high`` (inclusive)."""
        return UidRanges(
            (max(lo, low), min(hi, high))
            for lo, hi in zip(self._lows, self._highs, strict=True)
            if lo <= high and hi >= low
        )

    def intersect(self, numbers: Iterable[int]) -> list[int]:
        """Those of ``numbers`` that are in the set, ascending; cost grows with ``numbers``."""
        return sorted({n for n in numbers if n in self})

    def numbers(self, limit: int, what: str) -> Iterator[int]:
        """Every number of the set, ascending, if there are at most ``limit`` of them.

        Raises :class:`MailProtocolError` naming ``what`` otherwise, before producing any.
        """
        count = len(self)
        if count > limit:
            raise MailProtocolError(
                f"the IMAP server reported {count} {what}, more than the {limit} possible here"
            )
        for low, high in zip(self._lows, self._highs, strict=True):
            yield from range(low, high + 1)

    def nth(self, position: int) -> int | None:
        """The ``position``-th number (0-based) in the order the server listed them."""
        for low, high in self._order:
            size = high - low + 1
            if position < size:
                return low + position
            position -= size
        return None

    def position(self, number: int) -> int | None:
        """Where ``number`` stands (0-based) in the order the server listed the ranges."""
        seen = 0
        for low, high in self._order:
            if low <= number <= high:
                return seen + number - low
            seen += high - low + 1
        return None

    def listed_count(self) -> int:
        """How many numbers the server listed (counting repeats, as COPYUID pairs them)."""
        return sum(high - low + 1 for low, high in self._order)


def copyuid_target(source: str, destination: str, uid: int) -> int | None:
    """The UID that message ``uid`` got in the destination, from a COPYUID's two sets.

    ``None`` when ``uid`` is not in the source set or the two sets differ in size (a
    server that answers that way is not to be believed about either).
    """
    src = UidRanges.parse(source)
    dst = UidRanges.parse(destination)
    if src.listed_count() != dst.listed_count():
        return None
    where = src.position(uid)
    return None if where is None else dst.nth(where)
