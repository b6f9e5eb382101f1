"""Connexion's security handlers for the spec's schemes, with their set-up done once.

Connexion's handlers ask, on every request, whether the info function
(``email_service.auth.bearer_info`` / ``header_info``) takes ``request`` and
``required_scopes`` arguments, by building its ``inspect.signature``: about 5% of an
API process's CPU under the P3 load (README "Performance"). The answer is a property of
the function, so these handlers remember it; everything else (which header, the
schemes' order, the errors) is Connexion's own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from connexion.security import (
    AbstractSecurityHandler,
    ApiKeySecurityHandler,
    BearerSecurityHandler,
)


@functools.lru_cache(maxsize=64)
def _accepts_kwarg(func: Callable[..., Any], keyword: str) -> bool:
    return AbstractSecurityHandler._accepts_kwarg(func, keyword)


class BearerHandler(BearerSecurityHandler):
    _accepts_kwarg = staticmethod(_accepts_kwarg)


class ApiKeyHandler(ApiKeySecurityHandler):
    _accepts_kwarg = staticmethod(_accepts_kwarg)


def security_map() -> dict[str, type[AbstractSecurityHandler]]:
    """The ``security_map`` for ``add_api``: the spec's ``bearer`` and ``apiKey`` schemes."""
    return {"bearer": BearerHandler, "apiKey": ApiKeyHandler}
