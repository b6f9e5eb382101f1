"""What the benchmarks run against: a private Dovecot, an S3 server, a fresh database.

The same servers the tests use (``tests/servers``), started once for the whole run.
PostgreSQL and Redis are the machine's own (127.0.0.1:5432 trust auth, 127.0.0.1:6379);
the database and its non-superuser role are created here and dropped at the end.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from db.migrate import upgrade
from db.roles import runtime_grants
from db.session import make_engine
from tests.servers.dovecot import Dovecot, ensure_dovecot_installed
from tests.servers.s3 import S3Server

PG_ADMIN_DSN = os.environ.get(
    "BENCH_PG_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


@dataclass
class BenchEnv:
    dovecot: Dovecot
    s3: S3Server
    bucket: str
    database_url: str
    data_dir: Path
    env: dict[str, str]
    owner_url: str = ""  # the owner role: DDL and VACUUM in the benchmarks' seeding

    def child_env(self, **extra: str) -> dict[str, str]:
        """Environment for a service process (serve, a sync run) of this benchmark."""
        return {**os.environ, **self.env, **extra}


def ensure_tools() -> None:
    ensure_dovecot_installed()
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "update"], check=True, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "wrk"],
            check=True,
            capture_output=True,
        )


@contextmanager
def bench_env() -> Iterator[BenchEnv]:
    ensure_tools()
    # moto's request log would drown the figures.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    suffix = uuid.uuid4().hex[:10]
    name = role = f"email_bench_{suffix}"
    owner = f"email_bench_owner_{suffix}"
    # The roles production uses (db/roles.py): the owner migrates, the service runs as
    # a runtime role, which is all it will accept.
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{owner}" LOGIN NOSUPERUSER NOBYPASSRLS')
        admin.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOBYPASSRLS')
        admin.execute(f'CREATE DATABASE "{name}" OWNER "{owner}"')
    owner_url = f"postgresql+psycopg://{owner}@127.0.0.1:5432/{name}"
    with psycopg.connect(owner_url.replace("+psycopg", ""), autocommit=True) as conn:
        for statement in runtime_grants(owner, role):
            conn.execute(statement)
        # The sync benchmark empties the tables between its runs.
        conn.execute(
            f'ALTER DEFAULT PRIVILEGES FOR ROLE "{owner}" IN SCHEMA public '
            f'GRANT TRUNCATE ON TABLES TO "{role}"'
        )
    url = f"postgresql+psycopg://{role}@127.0.0.1:5432/{name}"
    dovecot = Dovecot(name=f"bench-{suffix}")
    s3 = S3Server()
    data_dir = Path(tempfile.mkdtemp(prefix="email-bench-"))
    try:
        dovecot.start()
        s3.start()
        bucket = s3.new_bucket("bench")
        engine = make_engine(owner_url)
        upgrade(engine)
        engine.dispose()
        env = {
            "DATABASE_URL": url,
            "JWT_SECRET": "bench-" + secrets.token_hex(16),
            "CREDENTIAL_KEYS": "b1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
            "MAIL_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "MAIL_ALLOW_PLAINTEXT": "true",
            "MAIL_CA_FILE": str(dovecot.ca_file),
            "S3_ENDPOINT": s3.endpoint,
            "S3_ACCESS_KEY": s3.access_key,
            "S3_SECRET_KEY": s3.secret_key,
            "S3_BUCKET": bucket,
            "S3_SECURE": "false",
            "DATA_DIR": str(data_dir),
            "LOG_LEVEL": "WARNING",
            "RATE_LIMIT_ENABLED": "false",
        }
        yield BenchEnv(dovecot, s3, bucket, url, data_dir, env, owner_url)
    finally:
        dovecot.close()
        s3.close()
        shutil.rmtree(data_dir, ignore_errors=True)
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')
            admin.execute(f'DROP ROLE IF EXISTS "{owner}"')
