"""schemathesis over every implemented operation, with all checks, through the ASGI app.

The operations later issues implement (sync, task status, send, draft, message patch)
answer 501 for now and are excluded here.
"""

from __future__ import annotations

from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings

from tests.conftest import new_identity

SPEC = Path(__file__).resolve().parents[2] / "openapi" / "openapi.yaml"
NOT_YET = ["syncAccount", "getSyncStatus", "sendEmail", "saveDraft", "updateMessage"]

schema = schemathesis.openapi.from_path(SPEC).exclude(operation_id=NOT_YET)
CALLER = new_identity()


@schema.auth()
class BearerToken:
    def get(self, case: schemathesis.Case, context: object) -> str:
        return CALLER.token

    def set(self, case: schemathesis.Case, data: str, context: object) -> None:
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_contract(case: schemathesis.Case, live_server: str) -> None:
    case.call_and_validate(base_url=live_server)
