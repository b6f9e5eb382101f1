"""The server process settles its heap at startup (email_service/web/heap.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from email_service.app import create_app
from email_service.runtime import Runtime, set_runtime
from email_service.web.heap import THRESHOLDS, settled_heap
from tests.conftest import Identity


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_the_heap_is_frozen_once_the_app_is_built_and_requests_still_work(
    runtime: Runtime, restored_gc: None, alice: Identity
) -> None:
    app = create_app(runtime=runtime, lifespan=settled_heap)
    set_runtime(runtime)
    assert gc.get_freeze_count() == 0
    with app.test_client() as client:
        # Startup has built Connexion's stack and frozen it with the rest of the heap.
        assert gc.get_freeze_count() > 10_000
        assert gc.get_threshold() == THRESHOLDS
        response = client.get("/api/accounts", headers=alice.bearer)
        assert response.status_code == 200, response.text
        assert response.json()["accounts"] == []


def test_without_the_lifespan_nothing_is_frozen(runtime: Runtime, restored_gc: None) -> None:
    app = create_app(runtime=runtime)
    set_runtime(runtime)
    with app.test_client() as client:
        assert client.get("/livez").status_code == 200
    assert gc.get_freeze_count() == 0
