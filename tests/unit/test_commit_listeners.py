"""db.listeners: after-commit news told to each listener, and per-runtime job wake-ups."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

import workers
from db import changes, textindex
from db.listeners import CommitListeners, uninstall_everywhere
from email_service.runtime import build_runtime
from email_service.services.search.fullindex import INDEX_ACTOR
from tests.conftest import make_settings


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


def test_uninstalling_everywhere_takes_an_owner_out_of_every_kind_of_news() -> None:
    first: CommitListeners[str] = CommitListeners("first")
    second: CommitListeners[str] = CommitListeners("second")
    engine, owner, other = object(), Owner(), Owner()
    woken: list[str] = []
    for news in (first, second):
        news.install(owner, engine, lambda k: woken.append(f"owner {k}"), job="j")
        news.install(other, engine, lambda k: woken.append(f"other {k}"), job="j")

    uninstall_everywhere(owner)
    uninstall_everywhere(owner)  # twice is harmless

    first.notify(engine, ["a"])
    second.notify(engine, ["b"])
    assert woken == ["other a", "other b"]
    assert len(first.installed()) == len(second.installed()) == 1


class Queued:
    """Stands for a runtime's job queue: notes what would be sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def prepare(self, actor: str, *_args: Any, **_kwargs: Any) -> Any:
        sent = self.sent

        class Job:
            def send(self) -> None:
                sent.append(actor)

        return Job()


def test_closing_a_runtime_takes_its_commit_listeners_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a runtime whose job queue is woken after its engine's commits (as every
    # process's is)
    kinds = (changes.LISTENERS, textindex.LISTENERS)
    before = [len(news.installed()) for news in kinds]
    runtime = build_runtime(make_settings(tmp_path / "data", f"sqlite:///{tmp_path}/db.sqlite"))
    jobs = workers.install(runtime)
    queued = Queued()
    monkeypatch.setattr(jobs, "prepare", queued.prepare)
    assert [len(news.installed()) for news in kinds] == [n + 1 for n in before]
    textindex.LISTENERS.notify(runtime.db.engine, [uuid.uuid4()])
    assert queued.sent == [INDEX_ACTOR]

    # When it is closed, its listeners are gone from every kind of news
    runtime.close()
    assert [len(news.installed()) for news in kinds] == before
    # and a commit of its engine wakes nothing of it any more
    textindex.LISTENERS.notify(runtime.db.engine, [uuid.uuid4()])
    assert queued.sent == [INDEX_ACTOR]
    # and closing it again is harmless
    runtime.close()
    assert [len(news.installed()) for news in kinds] == before
