"""db.listeners: after-commit news told to each listener, and per-runtime job wake-ups."""

from __future__ import annotations

from typing import Any

import pytest

from db.listeners import CommitListeners


class Owner:
    """Stands for a runtime: what a job queue installs its wake-ups for."""


def test_each_owner_wakes_once_per_key_for_its_own_engine_only() -> None:
    news: CommitListeners[tuple[str, int]] = CommitListeners("test")
    mine, theirs = object(), object()
    woken: list[tuple[str, Any]] = []
    first, second = Owner(), Owner()
    news.install(first, mine, lambda k: woken.append(("first", k)), job="j", key=lambda i: i[0])
    news.install(second, theirs, lambda k: woken.append(("second", k)), job="j")

    news.notify(mine, [("a", 1), ("b", 2), ("a", 3)])
    assert woken == [("first", "a"), ("first", "b")]

    woken.clear()
    news.notify(theirs, [("a", 1)])
    assert woken == [("second", ("a", 1))]

    woken.clear()
    news.notify(mine, [])  # a commit that announced nothing tells nobody
    assert woken == []


def test_installing_again_replaces_and_uninstalling_stops() -> None:
    news: CommitListeners[str] = CommitListeners("test")
    engine, owner = object(), Owner()
    woken: list[str] = []
    news.install(owner, engine, lambda k: woken.append(f"old {k}"), job="j")
    news.install(owner, engine, lambda k: woken.append(f"new {k}"), job="j")
    assert len(news.installed()) == 1
    news.notify(engine, ["t"])
    assert woken == ["new t"]

    news.uninstall(owner)
    news.uninstall(owner)  # twice is harmless
    news.notify(engine, ["t"])
    assert woken == ["new t"]
    assert news.installed() == []


def test_a_failing_wake_up_is_logged_and_the_rest_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    news: CommitListeners[str] = CommitListeners("test")
    engine = object()
    woken: list[str] = []
    heard: list[list[str]] = []

    def wake(key: str) -> None:
        if key == "down":
            raise ConnectionError("broker outage")
        woken.append(key)

    def broken(_engine: Any, _items: list[str]) -> None:
        raise RuntimeError("a bug in a listener")

    news.add(broken)
    news.install(Owner(), engine, wake, job="test job")
    news.add(lambda _engine, items: heard.append(items))

    news.notify(engine, ["down", "up"])

    assert woken == ["up"]
    assert heard == [["down", "up"]]
    messages = [record.getMessage() for record in caplog.records]
    assert "could not queue a test job" in messages
    assert "a test listener failed" in messages
