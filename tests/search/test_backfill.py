"""Migration 0016 indexes the messages that were stored before it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from db.migrate import upgrade
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


def _downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    from db.migrate import alembic_config

    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def _seed_and_search(runtime: Runtime, client: Any, alice: Identity, migrate: Any) -> None:
    # Given mail stored before the search index existed
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
    # When the migration runs
    migrate()
    # Then that mail is found
    for q in ("lighthouse", "subject:harbour", "filename:chart"):
        response = client.get("/api/messages/search", params={"q": q}, headers=alice.bearer)
        assert response.status_code == 200, response.text
        assert [hit["subject"] for hit in response.json()["messages"]] == ["Harbour plans"]


def test_backfill_on_sqlite(tmp_path: Path, alice: Identity) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    runtime = build_runtime(make_settings(tmp_path / "data", url, rate_limit_enabled=False))
    try:
        upgrade(runtime.db.engine, _before_0016())
        set_runtime(runtime)
        with create_app(runtime=runtime).test_client() as client:
            _seed_and_search(runtime, client, alice, lambda: upgrade(runtime.db.engine))
    finally:
        runtime.close()


def test_backfill_on_postgresql(
    owner_engine: Engine, runtime: Runtime, client: Any, alice: Identity
) -> None:
    _downgrade(owner_engine, _before_0016())
    try:
        _seed_and_search(runtime, client, alice, lambda: upgrade(owner_engine))
    finally:
        upgrade(owner_engine)
