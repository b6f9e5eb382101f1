"""The UID watch: which UIDs a folder was given since a moment, less our own APPENDs."""

from __future__ import annotations

import threading
import time

from email_service.mail.uidwatch import SPAN, KnownFolders, UidWatch

KEY = ("account-settings", "Sent")


def test_nothing_is_known_without_a_look_before_the_moment() -> None:
    watch = UidWatch()
    assert watch.others(KEY, 7, 10, since=5.0, at=5.0) is None
    watch.looked(KEY, 7, 10, at=6.0)
    # a look after the submission began says nothing of what came before it
    assert watch.others(KEY, 7, 12, since=5.0, at=5.0) is None
    assert watch.others(KEY, 7, 12, since=6.5, at=6.5) == [10, 11]


def test_own_appends_are_not_counted_and_the_highest_earlier_bound_holds() -> None:
    watch = UidWatch()
    watch.looked(KEY, 7, 10, at=1.0)
    watch.looked(KEY, 7, 12, at=2.0)
    watch.appended(KEY, 7, 12)
    watch.appended(KEY, 7, 13)
    # UIDs 12 and 13 were ours; 14 came from elsewhere (the server's own copy, say)
    assert watch.others(KEY, 7, 15, since=3.0, at=3.0) == [14]
    assert watch.others(KEY, 7, 14, since=3.0, at=3.0) == []
    # a moment between the looks only has the first one's bound
    assert watch.others(KEY, 7, 14, since=1.5, at=1.5) == [10, 11]


def test_a_new_uidvalidity_or_a_uidnext_going_back_knows_nothing() -> None:
    watch = UidWatch()
    watch.looked(KEY, 7, 10, at=1.0)
    assert watch.others(KEY, 8, 10, since=2.0, at=2.0) is None
    assert watch.others(KEY, 7, 9, since=2.0, at=2.0) is None
    watch.looked(KEY, 8, 3, at=3.0)  # the folder was recreated
    assert watch.others(KEY, 7, 10, since=4.0, at=4.0) is None
    assert watch.others(KEY, 8, 4, since=4.0, at=4.0) == [3]
    # too many UIDs since to sort out: searched as without a watch
    assert watch.others(KEY, 8, 3 + SPAN + 1, since=4.0, at=4.0) is None


def test_bounds_forget_only_what_no_answer_needs() -> None:
    watch = UidWatch(folders=2, looks=2, own=3)
    watch.looked(KEY, 1, 10, at=1.0)
    watch.looked(KEY, 1, 11, at=2.0)
    watch.appended(KEY, 1, 10)
    watch.appended(KEY, 1, 11)
    watch.looked(KEY, 1, 12, at=3.0)  # the first look goes, and the own UID below 11
    assert watch.others(KEY, 1, 12, since=1.5, at=1.5) is None
    assert watch.others(KEY, 1, 12, since=2.5, at=2.5) == []
    for uid in (12, 13):
        watch.appended(KEY, 1, uid)
    # a fourth own UID would overflow: everything is forgotten rather than taken for others
    watch.appended(KEY, 1, 14)
    assert watch.others(KEY, 1, 15, since=3.5, at=3.5) is None
    # the least recently used folder makes room
    watch.looked(("b", "Sent"), 1, 1, at=1.0)
    watch.looked(("c", "Sent"), 1, 1, at=1.0)
    watch.looked(KEY, 1, 20, at=5.0)
    assert watch.others(("b", "Sent"), 1, 1, since=2.0, at=2.0) is None
    assert watch.others(("c", "Sent"), 1, 1, since=2.0, at=2.0) == []


def test_known_folders_are_kept_for_their_time_and_dropped_on_demand() -> None:
    now = [0.0]
    known: KnownFolders[str] = KnownFolders(ttl=10.0, size=2, clock=lambda: now[0])
    known.put("a", "Sent")
    now[0] = 9.0
    assert known.get("a") == "Sent"
    now[0] = 10.0
    assert known.get("a") is None  # expired: listed again
    known.put("a", "Sent")
    known.drop("a")
    assert known.get("a") is None
    for key in ("a", "b", "c"):
        known.put(key, key)
    assert [known.get(key) for key in ("a", "b", "c")] == [None, "b", "c"]


def test_an_append_under_way_when_the_folder_answered_is_waited_for() -> None:
    watch = UidWatch()
    watch.looked(KEY, 7, 10, at=time.monotonic())
    since = time.monotonic()
    appending = watch.appending(KEY)
    appending.__enter__()  # another thread's APPEND, begun before the answer below
    answered = time.monotonic()

    def finish() -> None:
        time.sleep(0.05)
        watch.appended(KEY, 7, 10)
        appending.__exit__(None, None, None)

    thread = threading.Thread(target=finish)
    thread.start()
    # UID 10 is not counted as another's: the APPEND under way turned out to be ours
    assert watch.others(KEY, 7, 11, since=since, at=answered) == []
    thread.join()
    # an APPEND begun after the answer is not waited for; nor one that takes too long
    with watch.appending(KEY):
        began = time.monotonic()
        assert watch.others(KEY, 7, 12, since=since, at=began - 1) == [11]
        assert watch.others(KEY, 7, 12, since=since, at=began + 1, wait=0.01) == [11]
