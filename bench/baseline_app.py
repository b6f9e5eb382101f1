"""The P3 baseline: the same page query in a minimal Flask + psycopg app.

Served by the same server (uvicorn, through a2wsgi as Connexion serves Flask) with the
same number of processes, so the ratio measures what our stack adds to the query.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import psycopg
from a2wsgi import WSGIMiddleware
from flask import Flask, jsonify, request

_local = threading.local()
flask_app = Flask(__name__)

PAGE = """
SELECT m.id, m.account_id, m.folder_id, m.from_address, m.from_name, m.to_addresses,
       m.cc_addresses, m.bcc_addresses, m.subject, m.preview, m.is_read, m.is_starred,
       m.is_spam, m.is_deleted, m.labels, m.attachment_count, m.received_at, m.created_at,
       m.updated_at
FROM messages m
JOIN (SELECT id FROM messages WHERE folder_id = %(f)s AND tenant_id = %(t)s
      ORDER BY received_at DESC, id DESC LIMIT %(l)s OFFSET %(o)s) page ON page.id = m.id
ORDER BY m.received_at DESC, m.id DESC
"""
# Like the service, the total is the folder's stored count.
COUNT = "SELECT message_count FROM folders WHERE id = %(f)s AND tenant_id = %(t)s"


def _conn() -> psycopg.Connection[Any]:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = psycopg.connect(os.environ["BASELINE_DSN"])
        _local.conn = conn
    return conn


@flask_app.get("/api/<account_id>/folders/<folder_id>/messages")
def list_messages(account_id: str, folder_id: str) -> Any:
    params = {
        "f": folder_id,
        "t": os.environ["BASELINE_TENANT"],
        "l": int(request.args.get("limit", 50)),
        "o": int(request.args.get("offset", 0)),
    }
    conn = _conn()
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT set_config('app.tenant_id', %(t)s, true)", params)
        cur.execute(COUNT, params)
        total = cur.fetchone()[0]  # type: ignore[index]
        cur.execute(PAGE, params)
        names = [column.name for column in cur.description or ()]
        rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    return jsonify(
        {
            "messages": rows,
            "pagination": {"total": total, "limit": params["l"], "offset": params["o"]},
        }
    )


app = WSGIMiddleware(flask_app)  # type: ignore[arg-type]
