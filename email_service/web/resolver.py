"""Maps the contract's camelCase operationIds to ``handlers.<tag>.<snake_case>``."""

from __future__ import annotations

import re
from typing import Any

from connexion.resolver import Resolver

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def snake_case(name: str) -> str:
    return _CAMEL_BOUNDARY.sub("_", name).lower()


def handler_name(tag: str, operation_id: str) -> str:
    """The dotted name of the function serving ``operation_id`` (first tag ``tag``)."""
    return f"handlers.{snake_case(tag)}.{snake_case(operation_id)}"


class OperationResolver(Resolver):
    """``listAccounts`` tagged ``Accounts`` resolves to ``handlers.accounts.list_accounts``."""

    def resolve_operation_id(self, operation: Any) -> str:
        tags = operation._operation.get("tags") or []
        if not tags:
            raise ValueError(f"operation {operation.operation_id} has no tag to find its module")
        return handler_name(tags[0], operation.operation_id)
