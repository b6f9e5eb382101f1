"""Configuration, read once from the environment.

Every setting has a safe embedded default so that ``email-service serve`` works on a
fresh machine with nothing configured: SQLite and blobs under ``DATA_DIR``, an
in-process task worker, an in-memory rate limiter, and development secrets generated
once and kept in ``DATA_DIR``. Production sets ``DATABASE_URL``, ``REDIS_URL``,
``JWT_SECRET``, ``CREDENTIAL_KEYS`` and the ``S3_*`` settings.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from email_service.mail.limits import MailLimits

log = logging.getLogger(__name__)

DEV_SECRETS_FILE = "dev-secrets.json"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """All settings of the service; field names are the environment variable names."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    data_dir: Path = Field(default_factory=lambda: Path.cwd() / "data")
    database_url: str | None = None
    # The service refuses a PostgreSQL role that could switch row-level security off
    # (superuser, BYPASSRLS, table owner; see db/roles.py). Development only.
    database_allow_privileged_role: bool = False
    redis_url: str | None = None
    jwt_secret: SecretStr | None = None
    # Tokens living longer than this are refused, whatever their signature (one day).
    jwt_max_ttl_seconds: int = Field(default=86_400, gt=0)
    # When set, tokens must carry this `iss` / `aud`, and `email-service token` adds them.
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # "kid1:BASE64KEY,kid2:BASE64KEY" - the first key encrypts, all of them decrypt.
    credential_keys: SecretStr | None = None

    s3_endpoint: str | None = None
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_bucket: str = "email-attachments"
    s3_region: str = "us-east-1"
    s3_secure: bool = True
    # The host clients reach for presigned URLs, when it differs from the internal one.
    s3_public_endpoint: str | None = None
    s3_public_secure: bool | None = None

    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "text"

    # Hosts or networks (CIDR) that mail connections may reach even though they are
    # loopback or private. Empty by default: such addresses are refused.
    mail_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    mail_allow_plaintext: bool = False
    mail_ca_file: str | None = None
    # Deadlines (seconds) and caps for every mail connection: a server that is silent,
    # slow or sends without end fails the attempt within them (README, "Untrusted
    # servers and failures").
    mail_connect_timeout: float = Field(default=15.0, gt=0)
    mail_greeting_timeout: float = Field(default=30.0, gt=0)
    mail_login_timeout: float = Field(default=30.0, gt=0)
    mail_command_timeout: float = Field(default=120.0, gt=0)
    # Larger messages are kept with their headers and size only (a defect says why).
    max_message_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    mail_max_line_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    mail_max_response_bytes: int = Field(default=64 * 1024 * 1024, gt=0)

    # The limits themselves are the spec's ``x-rate-limits`` block. Off only where one
    # caller must make many requests quickly (the contract fuzz tests).
    rate_limit_enabled: bool = True
    # Largest request body accepted (bytes); a larger one answers 413 before it is read.
    # 25 MiB holds the longest message body the spec allows (5,000,000 characters) even
    # when every character takes four bytes of UTF-8.
    max_request_bytes: int = Field(default=25 * 1024 * 1024, gt=0)

    # Memory that message builds (send, draft) of one process may hold at once, and how
    # long a build waits for room before answering 503 (email_service/buildbudget.py).
    compose_build_budget_mib: int = Field(default=256, gt=0)
    compose_build_wait_seconds: float = Field(default=20.0, ge=0)

    # A task whose job never reached the queue (Redis down at commit time) is sent again
    # by the scheduler once it has been untouched this long (workers/outbox.py).
    outbox_grace_seconds: float = Field(default=30.0, gt=0)
    # A worker that sent no heartbeat for this long is dead, and the jobs it had taken
    # go back to their queue (Dramatiq's Redis broker).
    queue_heartbeat_timeout_ms: int = Field(default=30_000, gt=0)
    task_max_retries: int = 5
    # Backoff between retries of a failed job grows from the first to the second value.
    task_min_backoff_ms: int = 5_000
    task_max_backoff_ms: int = 300_000
    # Redis key prefix of the job queues, so several deployments can share one Redis.
    queue_namespace: str = "email-service"
    # Worker threads of the in-process worker on the embedded default.
    embedded_worker_threads: int = 2
    # How often the scheduler looks for accounts whose sync interval has passed.
    scheduler_tick_seconds: float = 15.0
    sync_time_limit_ms: int = 3_600_000
    sync_batch_size: int = 500
    presign_ttl_seconds: int = 3600
    # The change feed: how long changes are kept (older cursors answer 410), and how
    # often an open stream sends a keep-alive comment (proxies close idle responses).
    changes_retention_hours: float = Field(default=168, gt=0)
    changes_keepalive_seconds: float = Field(default=15, gt=0)
    # A stream ends after this long and the client resumes with Last-Event-ID (as every
    # EventSource does), which spreads long-lived connections over restarted processes.
    changes_stream_max_seconds: float = Field(default=3600, ge=0)

    # Push sync (email_service.watcher; README "Push").
    # Folders that IDLE/NOTIFY do not cover are polled with one LIST-STATUS this often.
    folder_poll_seconds: float = Field(default=60.0, gt=0)
    # A watcher's lease on an account lives this long unless renewed (every tick), so a
    # dead watcher's accounts are taken over within lease + tick seconds.
    watcher_lease_seconds: float = Field(default=20.0, gt=0)
    watcher_tick_seconds: float = Field(default=5.0, gt=0)
    # IDLE is ended and issued again after this long (servers may drop it after 30 min).
    watcher_idle_seconds: float = Field(default=25 * 60.0, gt=0, le=29 * 60.0)
    # New connections per second: for the whole process, and per mail server host.
    watcher_connect_rate: float = Field(default=20.0, gt=0)
    watcher_host_connect_rate: float = Field(default=5.0, gt=0)
    # Reconnect backoff (jittered, doubling) between these bounds.
    watcher_backoff_min_seconds: float = Field(default=1.0, gt=0)
    watcher_backoff_max_seconds: float = Field(default=300.0, gt=0)
    # A refused login is tried again when the account's settings change, or after this.
    watcher_auth_retry_seconds: float = Field(default=6 * 3600.0, gt=0)
    # Most accounts one watcher process takes, whatever its fair share.
    watcher_max_accounts: int = Field(default=5000, gt=0)
    # Run the watcher inside ``serve`` on the embedded default.
    embedded_watcher: bool = True

    # OAuth2 providers for mail accounts (README, "OAuth2 accounts"): a JSON object, provider
    # id -> {tokenUrl, clientId, clientSecret, mechanism, scopes?, authorizeUrl?}. The ids
    # "google" and "microsoft" need only clientId and clientSecret. Holds client secrets.
    oauth2_providers: SecretStr | None = None
    # Longest wait for a token endpoint (connect, read and the whole answer).
    oauth2_timeout: float = Field(default=10.0, gt=0)
    # An access token is refreshed when it has less than this many seconds left.
    oauth2_refresh_margin_seconds: int = Field(default=120, ge=0)

    # Webhooks (services/webhooks). Receivers are held to the mail hosts' outbound guard:
    # public addresses only unless listed here (same entry forms as MAIL_ALLOWED_HOSTS),
    # https unless WEBHOOK_ALLOW_HTTP; WEBHOOK_CA_FILE is trusted beside the system CAs.
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_allow_http: bool = False
    webhook_ca_file: str | None = None
    # One delivery attempt: connect, send and read the status line within this time.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    # Backoff between attempts of one delivery grows from the first to the second value
    # (with jitter); after WEBHOOK_RETRY_HOURS the delivery is marked failed, and an
    # endpoint that has not taken a delivery for WEBHOOK_DISABLE_AFTER_HOURS is disabled.
    webhook_min_backoff_ms: int = Field(default=5_000, gt=0)
    webhook_max_backoff_ms: int = Field(default=3_600_000, gt=0)
    webhook_retry_hours: float = Field(default=24.0, gt=0)
    webhook_disable_after_hours: float = Field(default=72.0, gt=0)
    # Webhooks one user may register.
    webhook_max_per_user: int = Field(default=20, gt=0)
    # Finished deliveries and their attempts are kept this long for listWebhookDeliveries.
    webhook_delivery_retention_hours: float = Field(default=168.0, gt=0)

    @field_validator("mail_allowed_hosts", "webhook_allowed_hosts", mode="before")
    @classmethod
    def _hosts_from_csv(cls, value: object) -> object:
        return _split_csv(value)

    def mail_limits(self) -> MailLimits:
        """The deadlines and caps every mail connection gets."""
        return MailLimits(
            connect_timeout=self.mail_connect_timeout,
            greeting_timeout=self.mail_greeting_timeout,
            login_timeout=self.mail_login_timeout,
            command_timeout=self.mail_command_timeout,
            max_message_bytes=self.max_message_bytes,
            max_line_bytes=self.mail_max_line_bytes,
            max_response_bytes=self.mail_max_response_bytes,
        )

    @property
    def embedded(self) -> bool:
        """True when running without an external broker (in-process worker)."""
        return self.redis_url is None

    def resolved_database_url(self) -> str:
        if self.database_url:
            url = self.database_url
            # Accept the plain URLs operators usually have; SQLAlchemy needs the driver.
            if url.startswith("postgres://"):
                url = "postgresql://" + url[len("postgres://") :]
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://") :]
            return url
        return f"sqlite:///{self.data_dir / 'email-service.sqlite3'}"

    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"


def _dev_secrets(data_dir: Path) -> dict[str, str]:
    """Development secrets, generated once and kept in the data directory."""
    path = data_dir / DEV_SECRETS_FILE
    if path.exists():
        loaded: dict[str, str] = json.loads(path.read_text())
        return loaded
    data_dir.mkdir(parents=True, exist_ok=True)
    values = {
        "jwt_secret": "dev-only-" + secrets.token_urlsafe(32),
        "credential_keys": "dev1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(values, handle)
    return values


class ConfigurationError(ValueError):
    """A setting the service refuses to start with."""


#: HS256 with a shorter secret can be brute-forced offline from one captured token.
MIN_JWT_SECRET_BYTES = 32


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment, filling development secrets if absent.

    Raises :class:`ConfigurationError` for a ``JWT_SECRET`` shorter than 32 bytes
    outside the embedded default (with ``DATABASE_URL`` or ``REDIS_URL`` set).
    """
    settings = Settings(**overrides)  # type: ignore[arg-type]
    if settings.jwt_secret is not None:
        length = len(settings.jwt_secret.get_secret_value().encode())
        if length < MIN_JWT_SECRET_BYTES:
            if settings.database_url or settings.redis_url:
                raise ConfigurationError(
                    f"JWT_SECRET is {length} bytes long; at least {MIN_JWT_SECRET_BYTES} "
                    "random bytes are needed (a short HMAC secret can be guessed offline "
                    "from one token)"
                )
            log.warning(
                "JWT_SECRET is shorter than %d bytes: fine for a try-out only",
                MIN_JWT_SECRET_BYTES,
            )
    if settings.jwt_secret is None or settings.credential_keys is None:
        dev = _dev_secrets(settings.data_dir)
        log.warning(
            "JWT_SECRET or CREDENTIAL_KEYS is not set: using development secrets kept in %s. "
            "Do not use them in production.",
            settings.data_dir / DEV_SECRETS_FILE,
        )
        if settings.jwt_secret is None:
            settings.jwt_secret = SecretStr(dev["jwt_secret"])
        if settings.credential_keys is None:
            settings.credential_keys = SecretStr(dev["credential_keys"])
    return settings
