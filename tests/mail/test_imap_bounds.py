"""Number sets from a server stay ranges: parsing, clipping, intersecting, COPYUID."""

from __future__ import annotations

import time

import pytest

from email_service.mail.errors import MailProtocolError
from email_service.mail.imap_bounds import UidRanges, copyuid_target


def test_four_billion_uids_cost_nothing_until_intersected() -> None:
    started = time.monotonic()
    everything = UidRanges.parse("1:4294967295")
    assert len(everything) == 4294967295
    assert 4000000000 in everything and 0 not in everything
    assert everything.intersect([5, 7, 10**6]) == [5, 7, 10**6]
    assert list(everything.clip(1, 3).numbers(3, "messages")) == [1, 2, 3]
    assert time.monotonic() - started < 0.1


def test_numbers_refuse_more_than_the_limit_before_producing_any() -> None:
    with pytest.raises(MailProtocolError, match="4294967295 messages"):
        next(UidRanges.parse("1:4294967295").numbers(1000, "messages"))


def test_ranges_merge_and_reverse_ends_are_accepted() -> None:
    ranges = UidRanges.parse("9:7,1,2:3,8,*,5:*")
    assert list(ranges.numbers(10, "x")) == [1, 2, 3, 7, 8, 9]
    assert ranges.listed == [(7, 9), (1, 1), (2, 3), (8, 8)]


@pytest.mark.parametrize("text", ["1:x", "0:5", "1:4294967296", "a"])
def test_malformed_sets_are_protocol_errors(text: str) -> None:
    with pytest.raises(MailProtocolError):
        UidRanges.parse(text)


def test_copyuid_maps_positions_without_expanding() -> None:
    assert copyuid_target("4:6,10", "100:103", 10) == 103
    assert copyuid_target("4:6,10", "100:103", 5) == 101
    assert copyuid_target("4:6", "100:103", 5) is None  # sizes differ: not believed
    assert copyuid_target("1:4294967295", "1:4294967295", 4000000000) == 4000000000
    assert copyuid_target("4", "7", 5) is None
