"""The request's caller and unit of work, for handlers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from connexion.context import context

from email_service.auth import caller_from_token_info
from email_service.identity import Caller
from email_service.runtime import get_runtime
from email_service.scope import Scope, open_scope


def current_caller() -> Caller:
    """The authenticated caller; the spec guarantees every /api operation has one."""
    return caller_from_token_info(context["token_info"])


@contextmanager
def request_scope() -> Iterator[Scope]:
    """The request's single transaction, owned by the request."""
    with open_scope(get_runtime(), current_caller()) as scope:
        yield scope
