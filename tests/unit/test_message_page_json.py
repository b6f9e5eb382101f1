"""listMessages' direct JSON writer against the encoder the API's other bodies go through."""

from __future__ import annotations

import json
from typing import Any

import flask
import pytest
from connexion.frameworks.flask import FlaskJSONProvider
from connexion.jsonifier import Jsonifier

from email_service import present
from email_service.app import api_jsonifier

KEYS = (
    "id", "accountId", "folderId", "from", "fromName", "to", "cc", "bcc", "subject",
    "preview", "isRead", "isStarred", "isSpam", "isDeleted", "labels", "attachmentCount",
    "receivedAt", "createdAt", "updatedAt",
)  # fmt: skip


def _row(n: int, **changes: object) -> tuple[object, ...]:
    values: dict[str, object] = {
        "id": f"id-{n}",
        "accountId": "acc",
        "folderId": "fold",
        "from": f"sender{n}@example.test",
        "fromName": f"Sender {n}",
        "to": ["dana@example.test", "eve@example.test"],
        "cc": [],
        "bcc": [],
        "subject": f"Report {n}",
        "preview": "Hello " * 60,  # longer than the 200 characters a list entry shows
        "isRead": n % 2 == 0,
        "isStarred": False,
        "isSpam": False,
        "isDeleted": True,
        "labels": ["work"],
        "attachmentCount": n,
        "receivedAt": 1_767_225_600_000 + n,
        "createdAt": 0,
        "updatedAt": -1,
    }
    values.update(changes)
    return tuple(values[key] for key in KEYS)


def _connexion_json(
    rows: list[tuple[object, ...]], total: int, limit: int, offset: int, jsonifier: Any = None
) -> str:
    """What the API's encoder (Connexion's Jsonifier over Flask's provider) writes, or
    ``jsonifier`` in its place."""
    app = flask.Flask(__name__)
    app.json = FlaskJSONProvider(app)
    body = {
        "messages": [present.message_summary(_Row(row)) for row in rows],
        "pagination": {"total": total, "limit": limit, "offset": offset},
    }
    with app.app_context():
        text: str = (jsonifier or api_jsonifier()).dumps(body)
    return text


class _Row:
    def __init__(self, values: tuple[object, ...]) -> None:
        names = (
            "id", "account_id", "folder_id", "from_address", "from_name", "to_addresses",
            "cc_addresses", "bcc_addresses", "subject", "preview", "is_read", "is_starred",
            "is_spam", "is_deleted", "labels", "attachment_count", "received_at",
            "created_at", "updated_at",
        )  # fmt: skip
        self.__dict__.update(zip(names, values, strict=True))


@pytest.mark.parametrize(
    "rows",
    [
        [],
        [_row(1)],
        [_row(n) for n in range(50)],
        # Text the encoder escapes: non-ASCII, astral characters, quotes, controls.
        [_row(1, subject='Grüße "quoted" \\ back\tslash\n\x00 🎉', fromName="Zoë 😀")],
        [_row(2, fromName=None, subject="", labels=["ünïcode", "\u2028"])],
    ],
)
def test_the_direct_writer_writes_what_the_generic_encoder_writes(
    rows: list[tuple[object, ...]],
) -> None:
    expected = _connexion_json(rows, 100_000, 50, 0)
    assert present.message_page_json(rows, 100_000, 50, 0) == expected


def test_a_value_of_another_kind_falls_back_to_the_generic_encoder() -> None:
    # An address list holding objects, and a float: not what the writer writes itself.
    rows = [_row(1, to=[{"address": "a@example.test"}], attachmentCount=1.5), _row(2)]
    assert present.message_page_json(rows, 2, 10, 5) == _connexion_json(rows, 2, 10, 5)


def test_the_writer_reads_rows_in_the_order_of_the_list_columns() -> None:
    from email_service.services.mailbox import LIST_COLUMNS

    assert [column.key for column in LIST_COLUMNS] == list(_Row(_row(1)).__dict__)
    assert list(present.message_summary(_Row(_row(1)))) == list(KEYS)


def test_the_api_encoder_is_compact_with_sorted_keys_and_ascii() -> None:
    # Only whitespace changed when the API's JSON became compact (README "Performance", P3).
    body = {"b": [1, "\u00e9"], "a": {"d": None, "c": True}}
    app = flask.Flask(__name__)
    app.json = FlaskJSONProvider(app)
    with app.app_context():
        compact = api_jsonifier().dumps(body)
        indented = Jsonifier(flask.json, indent=2).dumps(body)
    assert compact == '{"a":{"c":true,"d":null},"b":[1,"\\u00e9"]}\n'
    assert json.loads(compact) == json.loads(indented) == body
    assert compact.replace("\n", "") == "".join(indented.split())
    rows = [_row(n) for n in range(50)]
    assert len(present.message_page_json(rows, 100_000, 50, 0)) < len(
        _connexion_json(rows, 100_000, 50, 0, Jsonifier(flask.json, indent=2))
    )
