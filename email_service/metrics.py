"""Prometheus metrics of the service, and the small functions that record them.

Every process of the service - API server processes, Dramatiq workers, the scheduler -
imports this module and records through the ``observe_*`` helpers below; nothing else
touches the metric objects. The HTTP metrics are recorded by
``email_service.web.middleware``; the task, sync and SMTP helpers are for the job code.

Label values are a small fixed set (the contract's operation ids and enums), never ids,
addresses or paths: each distinct value is a time series kept forever by Prometheus.
The helpers raise ``ValueError`` for a value outside that set, which tests catch.

Several processes: prometheus-client's multiprocess mode is on when
``PROMETHEUS_MULTIPROC_DIR`` is set *before this module is first imported* (the metric
objects pick their storage at creation). Each process then writes its values to files
there and :func:`exposition` adds them up, so any one process answers for all of them.
``email-service serve --workers N`` (N > 1) sets the variable up itself (and empties a
directory an operator set), before any server process imports this module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from email_service.mail.errors import (
    MailAuthError,
    MailError,
    SmtpPermanentError,
    SmtpTransientError,
)
from email_service.mail.smtp import SmtpResult

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The contract's enums (TaskStatusResponse.kind / .status).
TaskKind = Literal["sync", "send", "draft", "flags", "purge"]
TaskStatus = Literal["pending", "started", "success", "failure", "retry"]
# How one SMTP submission ended (email_service.mail.smtp.send and its exceptions).
SmtpOutcome = Literal[
    "sent",  # every recipient accepted
    "partial",  # accepted for some recipients, refused for others
    "transient_error",  # 4xx reply, network failure or timeout: will be retried
    "permanent_error",  # 5xx reply: the message was rejected
    "auth_error",  # the server refused the account's credentials
    "blocked",  # the outbound connection guard refused the destination
]

TASK_KINDS: frozenset[str] = frozenset(get_args(TaskKind))
TASK_STATUSES: frozenset[str] = frozenset(get_args(TaskStatus))
SMTP_OUTCOMES: frozenset[str] = frozenset(get_args(SmtpOutcome))

#: ``operation`` label of requests that matched no operation of the spec (unknown
#: routes, the Swagger UI, /openapi.json): the path itself would be unbounded.
UNROUTED = "unrouted"

_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A sync fetches a whole folder in batches: seconds to an hour.
_SYNC_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

HTTP_REQUESTS = Counter(
    "email_service_http_requests",
    "HTTP requests answered, by the spec's operationId and response status.",
    ["operation", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "email_service_http_request_duration_seconds",
    "Time from receiving a request to handing over the last byte of its response.",
    ["operation"],
    buckets=_HTTP_BUCKETS,
)
TASKS = Counter(
    "email_service_tasks",
    "Background task state changes, by task kind and the status entered.",
    ["kind", "status"],
)
SYNC_DURATION = Histogram(
    "email_service_sync_duration_seconds",
    "Duration of completed mailbox syncs.",
    buckets=_SYNC_BUCKETS,
)
MESSAGES_SYNCED = Counter(
    "email_service_messages_synced",
    "Messages stored or updated by mailbox syncs.",
)
SMTP_RESULTS = Counter(
    "email_service_smtp_results",
    "Outcomes of SMTP submissions.",
    ["result"],
)
OAUTH2_REFRESHES = Counter(
    "email_service_oauth2_refreshes",
    "Access token refreshes asked of OAuth2 token endpoints, by outcome.",
    ["result"],
)
OAUTH2_REFRESH_RESULTS = frozenset({"ok", "revoked", "unavailable", "error"})
RATE_LIMIT_STORE_ERRORS = Counter(
    "email_service_rate_limit_store_errors",
    "Requests admitted uncounted because the rate limit store (Redis) failed.",
)

# Push sync (email_service.watcher). Gauges add up across processes ("livesum").
WATCHER_ACCOUNTS = Gauge(
    "email_service_watcher_accounts",
    "Accounts watched (leased) by watcher processes.",
    multiprocess_mode="livesum",
)
WATCHER_CONNECTIONS = Gauge(
    "email_service_watcher_connections",
    "Open watching IMAP connections.",
    multiprocess_mode="livesum",
)
# The change feed's live streams (email_service.web.stream), across API processes.
CHANGE_STREAMS = Gauge(
    "email_service_change_streams",
    "Open streamChanges responses.",
    multiprocess_mode="livesum",
)
WATCHER_IDLE_RESTARTS = Counter(
    "email_service_watcher_idle_restarts",
    "IDLE commands ended by the watcher and issued again (timer or folder poll).",
)
WATCHER_CONNECTS = Counter(
    "email_service_watcher_connects",
    "Watching connections attempted, by result.",
    ["result"],
)
WATCHER_CONNECT_RESULTS: frozenset[str] = frozenset({"ok", "login_refused", "error"})
PUSH_LATENCY = Histogram(
    "email_service_push_latency_seconds",
    "Time from a mail server's change notice to the end of the sync that stored it.",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)

# Webhooks (email_service.services.webhooks).
WEBHOOK_ATTEMPTS = Counter(
    "email_service_webhook_attempts",
    "Webhook delivery attempts, by result.",
    ["result"],
)
WEBHOOK_ATTEMPT_RESULTS: frozenset[str] = frozenset({"delivered", "failed", "given_up", "disabled"})
WEBHOOK_ATTEMPT_DURATION = Histogram(
    "email_service_webhook_attempt_duration_seconds",
    "Time of one webhook delivery attempt (connect, send, read the answer's head).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def _check(value: str, allowed: frozenset[str], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {sorted(allowed)}, not {value!r}")
    return value


def observe_request(operation: str | None, status: int, duration_s: float) -> None:
    """Record one answered HTTP request (called by the web middleware only).

    ``operation`` is the spec's operationId, or ``None`` when the request matched none
    (recorded as :data:`UNROUTED`).
    """
    label = operation or UNROUTED
    HTTP_REQUESTS.labels(operation=label, status=str(status)).inc()
    HTTP_REQUEST_DURATION.labels(operation=label).observe(max(duration_s, 0.0))


def observe_task(kind: TaskKind | str, status: TaskStatus | str) -> None:
    """Count a task entering ``status``: call it wherever a task row's status changes.

    ``kind`` is one of ``sync, send, draft, flags, purge`` and ``status`` one of ``pending,
    started, success, failure, retry`` (the contract's enums). Raises ``ValueError`` for
    anything else.
    """
    TASKS.labels(
        kind=_check(kind, TASK_KINDS, "task kind"),
        status=_check(status, TASK_STATUSES, "task status"),
    ).inc()


def observe_sync(duration_s: float, messages: int) -> None:
    """Record one finished mailbox sync: how long it took and how many messages it stored.

    ``messages`` counts messages added or updated (0 is fine). Raises ``ValueError`` for
    a negative duration or count.
    """
    if duration_s < 0 or messages < 0:
        raise ValueError("sync duration and message count cannot be negative")
    SYNC_DURATION.observe(duration_s)
    MESSAGES_SYNCED.inc(messages)


def observe_smtp(result: SmtpOutcome | str) -> None:
    """Count one SMTP submission by how it ended (see :data:`SmtpOutcome`).

    :func:`smtp_outcome` turns what ``email_service.mail.smtp.send`` returned or raised
    into the value: ``observe_smtp(smtp_outcome(result_or_exception))``. Raises
    ``ValueError`` for a value outside :data:`SmtpOutcome`.
    """
    SMTP_RESULTS.labels(result=_check(result, SMTP_OUTCOMES, "SMTP result")).inc()


def observe_oauth2_refresh(result: str) -> None:
    """Count one token endpoint exchange: ``ok``, ``revoked`` (invalid_grant),
    ``unavailable`` (5xx, 429, timeout, network; retried) or ``error`` (anything else)."""
    OAUTH2_REFRESHES.labels(
        result=_check(result, OAUTH2_REFRESH_RESULTS, "OAuth2 refresh result")
    ).inc()


def observe_rate_limit_store_error() -> None:
    """Count one request admitted without counting because the limiter's store failed."""
    RATE_LIMIT_STORE_ERRORS.inc()


def watcher_gauges(accounts_delta: int = 0, connections_delta: int = 0) -> None:
    """Move the watcher's gauges: accounts watched and connections open."""
    if accounts_delta:
        WATCHER_ACCOUNTS.inc(accounts_delta)
    if connections_delta:
        WATCHER_CONNECTIONS.inc(connections_delta)


def change_streams(delta: int) -> None:
    """One more (1) or one fewer (-1) open change stream."""
    CHANGE_STREAMS.inc(delta)


def observe_watcher_connect(result: str) -> None:
    """Count one watching connection attempt: ``ok``, ``login_refused`` or ``error``."""
    WATCHER_CONNECTS.labels(result=_check(result, WATCHER_CONNECT_RESULTS, "connect result")).inc()


def observe_idle_restart() -> None:
    """Count one IDLE ended and issued again on a live connection."""
    WATCHER_IDLE_RESTARTS.inc()


def observe_webhook_attempt(result: str, duration_s: float) -> None:
    """Count one webhook attempt: ``delivered``, ``failed`` (to be retried), ``given_up``
    (its delivery marked failed) or ``disabled`` (it disabled the webhook)."""
    WEBHOOK_ATTEMPTS.labels(result=_check(result, WEBHOOK_ATTEMPT_RESULTS, "attempt result")).inc()
    WEBHOOK_ATTEMPT_DURATION.observe(max(duration_s, 0.0))


def observe_push_latency(seconds: float) -> None:
    """Record notice → stored for a sync the watcher asked for (negative clamps to 0)."""
    PUSH_LATENCY.observe(max(seconds, 0.0))


def smtp_outcome(outcome: SmtpResult | MailError) -> SmtpOutcome:
    """Classify what ``mail.smtp.send`` returned (an ``SmtpResult``) or raised.

    The connection guard's refusal is not a mail error (the guard picks its exception):
    the code that catches it records ``observe_smtp("blocked")`` itself. Raises
    ``TypeError`` for anything that is neither an ``SmtpResult`` nor a mail error.
    """
    if isinstance(outcome, SmtpResult):
        return "partial" if outcome.refused else "sent"
    if isinstance(outcome, MailAuthError):
        return "auth_error"
    if isinstance(outcome, SmtpPermanentError):
        return "permanent_error"
    if isinstance(outcome, SmtpTransientError):
        return "transient_error"
    raise TypeError(f"not an SMTP outcome: {type(outcome).__name__}")


def multiprocess_dir() -> Path | None:
    """The multiprocess directory of this process, or None in single-process mode."""
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def registry() -> CollectorRegistry:
    """The registry to expose: every process's values in multiprocess mode, else ours.

    In multiprocess mode a fresh registry is built per call, as prometheus-client
    prescribes (a collector registered on the global registry would be exported twice).
    """
    directory = multiprocess_dir()
    if directory is None:
        return REGISTRY
    aggregate = CollectorRegistry()
    MultiProcessCollector(aggregate, path=str(directory))
    return aggregate


def exposition(accept: str | None = None) -> tuple[bytes, str]:
    """The metrics as ``(body, content type)``, in the format the ``Accept`` header asks.

    Without a recognised ``Accept`` this is the Prometheus text format 0.0.4, which
    every Prometheus version scrapes.
    """
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry()), content_type
