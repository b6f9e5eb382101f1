"""Migration 0016 indexes the messages that were stored before it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from db.migrate import downgrade, upgrade
from email_service.app import create_app
from email_service.runtime import Runtime, build_runtime, set_runtime
from tests.conftest import Identity, make_settings
from tests.factories import SeededAttachment, SeededMessage, create_account, seed_folder


def _before_0016() -> str:
    from alembic.script import ScriptDirectory

    from db.migrate import alembic_config

    parent = ScriptDirectory.from_config(alembic_config("sqlite://")).get_revision("0016")
    assert parent is not None and isinstance(parent.down_revision, str)
    return parent.down_revision


def _seed_and_search(runtime: Runtime, client: Any, alice: Identity, remigrate: Any) -> None:
    # Given mail stored while the search index did not exist (stored at the current schema, then
    # migrated down past 0016, which drops the index and keeps the mail; seeding through the app
    # at an old revision would tie this test to every later migration's columns)
    account = create_account(client, alice.bearer)["id"]
    seed_folder(
        runtime,
        alice.caller,
        account,
        messages=[
            SeededMessage(
                subject="Harbour plans",
                body_text="The lighthouse keeper wrote.",
                attachments=[SeededAttachment("chart.png", "image/png", b"png")],
            )
        ],
    )
    # When the schema goes back to before 0016 and the migrations run again
    remigrate()
    # Then that mail is found
    for q in ("lighthouse", "subject:harbour", "filename:chart"):
        response = client.get("/api/messages/search", params={"q": q}, headers=alice.bearer)
        assert response.status_code == 200, response.text
        assert [hit["subject"] for hit in response.json()["messages"]] == ["Harbour plans"]


def test_backfill_on_sqlite(tmp_path: Path, alice: Identity) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    runtime = build_runtime(make_settings(tmp_path / "data", url, rate_limit_enabled=False))
    engine = runtime.db.engine

    def remigrate() -> None:
        downgrade(engine, _before_0016())
        upgrade(engine)

    try:
        upgrade(engine)
        set_runtime(runtime)
        with create_app(runtime=runtime).test_client() as client:
            _seed_and_search(runtime, client, alice, remigrate)
    finally:
        runtime.close()


def test_backfill_on_postgresql(
    owner_engine: Engine, runtime: Runtime, client: Any, alice: Identity
) -> None:
    def remigrate() -> None:
        downgrade(owner_engine, _before_0016())
        upgrade(owner_engine)

    try:
        _seed_and_search(runtime, client, alice, remigrate)
    finally:
        upgrade(owner_engine)
