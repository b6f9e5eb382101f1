"""The service's long-lived parts, built once from the settings.

Both the web app and the workers build one ``Runtime``; each outside system sits
behind a small interface with a production and an embedded implementation, chosen
here by configuration.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from db.listeners import uninstall_everywhere
from db.roles import refuse_privileged_role
from db.session import Database
from email_service.blobstore import BlobStore, LocalBlobStore, S3BlobStore
from email_service.buildbudget import BuildBudget
from email_service.changewake import ChangeWaker
from email_service.config import Settings
from email_service.crypto import KeyRing
from email_service.jobs import JobQueue, NoJobQueue
from email_service.mail.pool import MailPools
from email_service.netguard import HostPolicy, install_connect_guard
from email_service.oauth2 import Provider, parse_providers
from email_service.ratelimit import MemoryRateLimiter, RateLimiter, build_rate_limiter

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    db: Database
    keyring: KeyRing
    blobs: BlobStore
    redis: Any | None = None
    # Which mail hosts may be reached; also installed as the mail clients' connect guard.
    host_policy: HostPolicy = field(default_factory=HostPolicy)
    # The rate limits' counter store (Redis | memory).
    rate_limiter: RateLimiter = field(default_factory=MemoryRateLimiter)
    # Installed by ``workers.install``; services queue background jobs through it.
    jobs: JobQueue = field(default_factory=NoJobQueue)
    # OAuth2 providers for mail accounts (OAUTH2_PROVIDERS), by id.
    oauth2_providers: dict[str, Provider] = field(default_factory=dict)
    # Bounds the memory of concurrent message builds in this process.
    build_budget: BuildBudget = field(default_factory=lambda: BuildBudget(256 << 20, 20.0))
    # Mail connections kept open across jobs (SMTP submissions, IMAP sessions).
    mail_pools: MailPools = field(default_factory=MailPools)
    # Wakes this process's open change streams (made on first use).
    _waker: ChangeWaker | None = field(default=None, repr=False)

    def change_waker(self) -> ChangeWaker:
        if self._waker is None:
            dsn = None
            if self.db.is_postgres:
                url = self.db.engine.url.set(drivername="postgresql")
                dsn = url.render_as_string(hide_password=False)
            self._waker = ChangeWaker(dsn)
        return self._waker

    def close(self) -> None:
        # The after-commit wake-ups of this runtime's jobs (``workers.install``) are
        # registered process-wide; they would outlive it.
        uninstall_everywhere(self)
        self.mail_pools.close()
        if self._waker is not None:
            self._waker.close()
        self.db.dispose()
        self.rate_limiter.close()
        if self.redis is not None:
            self.redis.close()


_current: Runtime | None = None


def build_runtime(settings: Settings) -> Runtime:
    """Create the runtime for ``settings``.

    On PostgreSQL this connects once to check the role (raises
    :class:`db.roles.PrivilegedRole`); other connections are opened lazily.
    """
    assert settings.credential_keys is not None
    db = Database.from_url(settings.resolved_database_url())
    if not settings.database_allow_privileged_role:
        # Before anything else touches the database: a role that can switch row-level
        # security off must not serve requests or run jobs (db/roles.py says why).
        try:
            refuse_privileged_role(db.engine)
        except BaseException:
            db.dispose()
            raise
    keyring = KeyRing.parse(settings.credential_keys.get_secret_value())
    blobs: BlobStore
    if settings.s3_endpoint:
        if settings.s3_access_key is None or settings.s3_secret_key is None:
            raise ValueError("S3_ENDPOINT needs S3_ACCESS_KEY and S3_SECRET_KEY")
        blobs = S3BlobStore(
            settings.s3_endpoint,
            settings.s3_access_key.get_secret_value(),
            settings.s3_secret_key.get_secret_value(),
            settings.s3_bucket,
            region=settings.s3_region,
            secure=settings.s3_secure,
            public_endpoint=settings.s3_public_endpoint,
            public_secure=settings.s3_public_secure,
        )
    else:
        blobs = LocalBlobStore(settings.blob_dir())
    redis_client = None
    if settings.redis_url:
        import redis

        redis_client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    return Runtime(
        settings=settings,
        db=db,
        keyring=keyring,
        blobs=blobs,
        redis=redis_client,
        # Every process builds its runtime here, so none connects to a mail server unguarded.
        host_policy=install_connect_guard(settings),
        rate_limiter=build_rate_limiter(settings),
        oauth2_providers=parse_providers(
            settings.oauth2_providers.get_secret_value() if settings.oauth2_providers else None
        ),
        build_budget=BuildBudget(
            settings.compose_build_budget_mib << 20, settings.compose_build_wait_seconds
        ),
    )


def set_runtime(runtime: Runtime | None) -> None:
    global _current
    _current = runtime


def get_runtime() -> Runtime:
    if _current is None:
        raise RuntimeError("the service runtime is not initialised")
    return _current
