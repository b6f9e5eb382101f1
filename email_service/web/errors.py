"""Every failure answers with an ``ErrorResponse``: ``{error, message, code, timestamp}``.

Two places raise: Connexion's middleware (validation, security, routing) and the Flask
handlers (our domain exceptions). Both are mapped here, and nothing internal - stack
traces, SQL, exception reprs - ever reaches a response; unexpected errors are logged.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

import flask
from connexion import FlaskApp
from connexion.context import operation
from connexion.exceptions import ProblemException
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from starlette.exceptions import HTTPException

from email_service.errors import ServiceError
from email_service.present import JSON_SEPARATORS

log = logging.getLogger(__name__)

_BY_STATUS: dict[int, tuple[str, str]] = {
    400: ("Bad request", "VALIDATION_ERROR"),
    401: ("Unauthorized", "UNAUTHORIZED"),
    403: ("Forbidden", "FORBIDDEN"),
    404: ("Not found", "NOT_FOUND"),
    405: ("Method not allowed", "METHOD_NOT_ALLOWED"),
    406: ("Not acceptable", "NOT_ACCEPTABLE"),
    413: ("Payload too large", "PAYLOAD_TOO_LARGE"),
    415: ("Unsupported media type", "UNSUPPORTED_MEDIA_TYPE"),
    429: ("Rate limit exceeded", "RATE_LIMITED"),
    500: ("Internal server error", "INTERNAL_ERROR"),
    501: ("Not implemented", "NOT_IMPLEMENTED"),
    502: ("Bad gateway", "MAIL_SERVER_UNAVAILABLE"),
    503: ("Service unavailable", "DEPENDENCY_UNAVAILABLE"),
}


def error_body(
    status: int, message: str, *, error: str | None = None, code: str | None = None
) -> dict[str, Any]:
    default_error, default_code = _BY_STATUS.get(status, ("Error", f"HTTP_{status}"))
    return {
        "error": error or default_error,
        "message": message,
        "code": code or default_code,
        "timestamp": int(time.time() * 1000),
    }


def _connexion_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> ConnexionResponse:
    return ConnexionResponse(
        status_code=status,
        mimetype="application/json",
        content_type="application/json",
        body=json.dumps(body, separators=JSON_SEPARATORS).encode(),
        headers=headers or {},
    )


def _first_line(text: str | None, fallback: str) -> str:
    # Type errors on query parameters carry a whole jsonschema dump: the first line says it.
    if not text:
        return fallback
    line = str(text).strip().splitlines()[0].strip()
    return line or fallback


def _problem(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, ProblemException)
    status = exc.status or 500
    if status >= 500:
        # Response validation failures land here in tests: log the detail, return none.
        log.error("request failed with %s: %s", status, exc.detail)
        message = "The server failed to handle the request"
    else:
        message = _first_line(exc.detail, exc.title or "Request rejected")
    headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() != "content-type"}
    return _connexion_response(status, error_body(status, message), headers)


def _http_exception(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    headers = dict(exc.headers or {})
    if status == 404:
        message = f"No route for {request.url.path}"
    elif status == 405:
        allowed = allowed_methods(request.url.path)
        if allowed:
            headers["Allow"] = ", ".join(allowed)
        message = f"Method {request.method} is not allowed here"
    else:
        message = _first_line(exc.detail, _BY_STATUS.get(status, ("Error", ""))[0])
    if status >= 500:
        log.error("HTTP %s: %s", status, exc.detail)
        message = "The server failed to handle the request"
    return _connexion_response(status, error_body(status, message), headers)


def _service_error(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, ServiceError)
    body, headers = service_error_body(exc)
    return _connexion_response(exc.status, body, headers)


def service_error_body(exc: ServiceError) -> tuple[dict[str, Any], dict[str, str]]:
    headers: dict[str, str] = {}
    retry_after = getattr(exc, "retry_after", None)  # RateLimited, BuildBusy
    if isinstance(retry_after, int):
        headers["Retry-After"] = str(retry_after)
    return error_body(exc.status, exc.message, error=exc.error, code=exc.code), headers


def _bad_encoding(_request: ConnexionRequest, _exc: Exception) -> ConnexionResponse:
    return _connexion_response(400, error_body(400, "The request body is not valid UTF-8"))


def _unexpected(_request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    log.error("unhandled error", exc_info=exc)
    return _connexion_response(500, error_body(500, "The server failed to handle the request"))


# Flask side: our handlers raise domain exceptions inside the Flask app.
def _flask_service_error(exc: ServiceError) -> flask.Response:
    body, headers = service_error_body(exc)
    response = flask.jsonify(body)
    response.status_code = exc.status
    response.headers.update(headers)
    return response


def _flask_unexpected(exc: Exception) -> flask.Response:
    log.error("unhandled error in handler", exc_info=exc)
    response = flask.jsonify(error_body(500, "The server failed to handle the request"))
    response.status_code = 500
    return response


class RouteTable:
    """The methods the spec defines for each path, for a correct 405 ``Allow`` header.

    Starlette builds one route per method, so the Allow header it makes lists only one.
    """

    def __init__(self, paths: dict[str, dict[str, Any]]) -> None:
        self._routes: list[tuple[re.Pattern[str], list[str]]] = []
        for template, item in paths.items():
            pattern = re.sub(r"\\{[^}/]+\\}", "[^/]+", re.escape(template))
            methods = {m.upper() for m in item if m.lower() in _HTTP_METHODS}
            if "GET" in methods:
                methods.add("HEAD")
            self._routes.append((re.compile(f"^{pattern}$"), sorted(methods)))

    def allowed(self, path: str) -> list[str]:
        for pattern, methods in self._routes:
            if pattern.match(path):
                return methods
        return []


_HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
_routes = RouteTable({})


def allowed_methods(path: str) -> list[str]:
    return _routes.allowed(path)


def install(app: FlaskApp) -> None:
    """Register the error mapping on the middleware and on the Flask app."""
    app.add_error_handler(ProblemException, _problem)
    app.add_error_handler(HTTPException, _http_exception)
    app.add_error_handler(ServiceError, _service_error)
    app.add_error_handler(UnicodeDecodeError, _bad_encoding)
    app.add_error_handler(Exception, _unexpected)
    app.app.register_error_handler(ServiceError, _flask_service_error)
    app.app.register_error_handler(Exception, _flask_unexpected)
    app.app.before_request(_require_operation)


def _require_operation() -> flask.Response | None:
    """Refuse requests that reach Flask without passing Connexion's routing.

    Starlette and werkzeug match some paths differently (a path parameter holding a
    newline matches in Flask only). Such a request skipped validation and security,
    so it must not reach a handler; for the client it is an unknown route.
    """
    try:
        operation.operation_id  # noqa: B018 - raises outside an operation context
    except RuntimeError:
        response = flask.jsonify(error_body(404, f"No route for {flask.request.path!r}"))
        response.status_code = 404
        return response
    return None


def set_routes(paths: dict[str, dict[str, Any]]) -> None:
    global _routes
    _routes = RouteTable(paths)
