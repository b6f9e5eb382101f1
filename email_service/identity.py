"""Who is calling: the tenant and user from a verified token."""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    tenant_id: uuid.UUID
    user_id: uuid.UUID
