"""The application factory: the spec, loaded by Connexion, routed to ``handlers``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import flask
import yaml
from connexion import FlaskApp
from connexion.jsonifier import Jsonifier
from connexion.middleware import MiddlewarePosition
from connexion.middleware.lifespan import Lifespan
from connexion.options import SwaggerUIOptions

import workers
from email_service.config import Settings, load_settings
from email_service.jobs import NoJobQueue
from email_service.present import JSON_SEPARATORS
from email_service.ratelimit import RateLimitPolicy, RateLimits
from email_service.runtime import Runtime, build_runtime, set_runtime
from email_service.web import errors, wsgi
from email_service.web.bodylimit import BodyLimitMiddleware
from email_service.web.heap import settled_heap
from email_service.web.middleware import ObservabilityMiddleware, operation_names
from email_service.web.probes import ProbeMiddleware
from email_service.web.ratelimit import RateLimitHeadersMiddleware, RateLimitMiddleware
from email_service.web.resolver import OperationResolver
from email_service.web.security import security_map
from email_service.web.speccache import SpecCacheMiddleware
from email_service.web.stream import ChangeStreamMiddleware
from email_service.web.validation import validator_map
from workers.outbox import resume_interrupted
from workers.scheduler import start_scheduler_thread

log = logging.getLogger(__name__)

SPEC_DIR = Path(__file__).resolve().parent.parent / "openapi"
SPEC_FILE = "openapi.yaml"


# libyaml's loader where PyYAML has it: the pure-Python one took a third of create_app.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_spec() -> dict[str, Any]:
    """The contract as a dict (also the source of the rate limits and route table)."""
    with (SPEC_DIR / SPEC_FILE).open() as handle:
        spec: dict[str, Any] = yaml.load(handle, Loader=_LOADER)  # noqa: S506 (a safe loader)
    return spec


def api_jsonifier() -> Jsonifier:
    """The encoder of the handlers' bodies: compact JSON through Flask's JSON provider."""
    return Jsonifier(flask.json, separators=JSON_SEPARATORS)


def create_app(
    settings: Settings | None = None,
    *,
    runtime: Runtime | None = None,
    validate_responses: bool = False,
    lifespan: Lifespan | None = None,
) -> FlaskApp:
    """Build the Connexion app for ``settings`` (read from the environment when None).

    ``validate_responses`` is for tests: a body that does not match the spec becomes
    a 500, so a drift between code and contract cannot pass unnoticed. ``lifespan`` runs
    at the ASGI lifespan's startup, once Connexion has built its middleware stack.
    """
    if runtime is None:
        runtime = build_runtime(settings or load_settings())
    if isinstance(runtime.jobs, NoJobQueue):
        workers.install(runtime)
    set_runtime(runtime)
    spec = load_spec()

    # pythonic_params: accountId arrives as account_id, filter as filter_. The handlers'
    # bodies are compact JSON (Connexion's default for Flask indents them by 2), through
    # Flask's provider as before: sorted keys, ASCII, Connexion's dates.
    app = FlaskApp(
        __name__,
        specification_dir=SPEC_DIR,
        pythonic_params=True,
        lifespan=lifespan,
        jsonifier=api_jsonifier(),
    )
    # ``flask.jsonify`` (the Flask-side error bodies) compact even in debug mode.
    app.app.json.compact = True
    app.add_api(
        # A dict of its own (Connexion fills in defaults in place), read with libyaml: given the
        # file, Connexion would parse it again with the pure-Python loader.
        load_spec(),
        resolver=OperationResolver(),
        strict_validation=True,
        validator_map=validator_map(),
        security_map=security_map(),
        validate_responses=validate_responses,
        swagger_ui_options=SwaggerUIOptions(swagger_ui=True, swagger_ui_path="/ui"),
    )
    errors.install(app)
    errors.set_routes(spec["paths"])
    # Flask's responses reach the event loop in one hand-off, not one per part (web/wsgi.py).
    wsgi.install(app)
    # Guard rails (README "Rate limits and guard rails"), after authentication: the rate
    # limits, then the body cap, then Connexion's validation reads the body.
    if runtime.settings.rate_limit_enabled:
        app.add_middleware(
            RateLimitMiddleware,
            position=MiddlewarePosition.BEFORE_VALIDATION,
            limits=RateLimits(RateLimitPolicy.from_spec(spec), runtime.rate_limiter),
            operation_names=operation_names(spec),
        )
        # Outside the exception middleware, so error responses carry the headers too.
        app.add_middleware(RateLimitHeadersMiddleware, position=MiddlewarePosition.BEFORE_EXCEPTION)
    app.add_middleware(
        BodyLimitMiddleware,
        position=MiddlewarePosition.BEFORE_VALIDATION,
        max_bytes=runtime.settings.max_request_bytes,
    )
    # streamChanges, served asynchronously once routed, authenticated, counted, validated.
    app.add_middleware(
        ChangeStreamMiddleware, position=MiddlewarePosition.BEFORE_CONTEXT, runtime=runtime
    )
    # The spec documents are built once per process, not per request (web/speccache.py).
    app.add_middleware(SpecCacheMiddleware, position=MiddlewarePosition.BEFORE_SWAGGER)
    # Outermost, so error responses get the request id too and /metrics skips auth.
    app.add_middleware(
        ObservabilityMiddleware, position=MiddlewarePosition.BEFORE_EXCEPTION, spec=spec
    )
    # Probes are answered before anything else runs (README "Untrusted servers and
    # failures"): no routing, no limits, no dependency but the database for /readyz.
    app.add_middleware(
        ProbeMiddleware, position=MiddlewarePosition.BEFORE_EXCEPTION, runtime=runtime
    )
    return app


def create_app_from_env() -> FlaskApp:
    """Factory for ``uvicorn --factory``: each server process builds its own app."""
    from email_service.logging_setup import configure

    settings = load_settings()
    configure(settings)
    runtime = build_runtime(settings)
    jobs = workers.install(runtime)
    # The server's heap, once built, is frozen out of the collector's scans (web/heap.py).
    app = create_app(runtime=runtime, lifespan=settled_heap)
    if settings.embedded:
        # Nothing else will run the jobs or the scheduler: this process does. Its queue
        # lives in memory, so work that was pending or running when the last process
        # died is sent again first.
        resume_interrupted(runtime, jobs)
        workers.start_worker(jobs, settings.embedded_worker_threads)
        start_scheduler_thread(runtime)
        if settings.embedded_watcher:
            from email_service.watcher import start_watcher_thread

            start_watcher_thread(runtime)
        log.warning(
            "embedded default: jobs, the scheduler and the watcher run inside the API process"
        )
    return app
