"""Probes: /livez never asks a dependency, /readyz asks only the database, /health all.

Each case builds an app whose dependency points at a port where nothing listens (never
the shared Redis or PostgreSQL, which other tests use).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from db.session import Database
from email_service.app import create_app
from email_service.config import Settings
from email_service.runtime import Runtime, build_runtime, set_runtime
from tests.conftest import make_settings


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def app_with(tmp_path: Path, settings: Settings, runtime: Runtime) -> Iterator[Any]:
    built: list[Runtime] = []

    def make(**overrides: object) -> Any:
        assert settings.database_url is not None
        values: dict[str, object] = {
            "database_url": settings.database_url,
            "jwt_secret": settings.jwt_secret,
            "credential_keys": settings.credential_keys,
            **overrides,
        }
        url = values.pop("database_url")
        rt = build_runtime(make_settings(tmp_path / f"d{len(built)}", str(url), **values))
        built.append(rt)
        client = create_app(runtime=rt).test_client()
        client.app.runtime = rt
        return client

    yield make
    for rt in built:
        rt.close()
    set_runtime(runtime)


def test_probes_answer_without_credentials_before_routing(client: Any) -> None:
    live = client.get("/livez")
    assert live.status_code == 200 and live.json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    assert client.get("/health").status_code == 200


def test_redis_down_keeps_the_pod_alive_and_ready_but_health_says_so(app_with: Any) -> None:
    with app_with(redis_url=f"redis://127.0.0.1:{dead_port()}/0") as client:
        assert client.get("/livez").status_code == 200
        assert client.get("/readyz").status_code == 200
        health = client.get("/health")
        assert health.status_code == 503
        assert "redis" in health.json()["message"]


def test_blob_store_down_shows_in_health_only(app_with: Any) -> None:
    with app_with(
        s3_endpoint=f"127.0.0.1:{dead_port()}",
        s3_access_key="k",
        s3_secret_key="s",
        s3_secure=False,
    ) as client:
        assert client.get("/livez").status_code == 200
        assert client.get("/readyz").status_code == 200
        health = client.get("/health")
        assert health.status_code == 503
        assert "blob store" in health.json()["message"]


def test_database_down_makes_the_pod_unready_but_still_alive(app_with: Any) -> None:
    client = app_with()
    # The service starts against a database, which then stops answering.
    runtime = client.app.runtime
    runtime.db.dispose()
    runtime.db = Database.from_url(f"postgresql+psycopg://nobody@127.0.0.1:{dead_port()}/none")
    with client:
        assert client.get("/livez").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json() == {"status": "not ready"}
