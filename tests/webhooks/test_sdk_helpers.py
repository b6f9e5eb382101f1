"""The SDKs' signature helpers, checked against real deliveries of the server.

The Python helper is ``email_service_client.webhooks`` (copied into the generated package
by scripts/sdk.sh), the TypeScript one ``verifyWebhook`` (client-sdks/typescript/src),
run by Node through scripts/verify-webhook.ts.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from email_service.runtime import Runtime
from tests.conftest import Identity
from tests.factories import create_account
from tests.sdk.conftest import NODE, TYPESCRIPT_SDK  # also puts the Python SDK on sys.path
from tests.webhooks.conftest import Receiver
from tests.webhooks.test_delivery import change, emit, register

# tsconfig.json's settings, for compiling two files without the project.
TSC_OPTIONS = (
    "--module",
    "NodeNext",
    "--moduleResolution",
    "NodeNext",
    "--target",
    "ES2022",
    "--types",
    "node",
    "--strict",
    "--skipLibCheck",
    "--rootDir",
    ".",
)


@pytest.fixture
def delivered(
    api: Any, webhook_runtime: Runtime, alice: Identity, receiver: Receiver
) -> dict[str, Any]:
    """A real delivery after a rotation (two signatures), with both secrets."""
    account = create_account(api, alice.bearer)
    hook = register(api, alice, receiver.url)
    rotated = api.post(f"/api/webhooks/{hook['id']}/rotate-secret", headers=alice.bearer).json()
    sent = change(account["id"], "message.created", subject="Grüße")
    emit(webhook_runtime, alice, sent)
    (got,) = receiver.wait_for(1)
    return {
        "change": sent,
        "secrets": [hook["secret"], rotated["secret"]],
        "headers": got.headers,
        "body": got.body,
    }


def test_python_helper_accepts_real_deliveries_and_refuses_tampering(
    delivered: dict[str, Any],
) -> None:
    from email_service_client.webhooks import InvalidWebhook, verify_webhook

    headers, body = delivered["headers"], delivered["body"]
    for secret in delivered["secrets"]:
        assert verify_webhook(secret, headers, body) == delivered["change"]
    secret = delivered["secrets"][0]
    refused = [
        (secret, headers, body.replace(b"Gr", b"gr")),
        ("whsec_" + "A" * 43 + "=", headers, body),
        (secret, {**headers, "webhook-id": "other"}, body),
        (secret, {**headers, "webhook-timestamp": str(int(time.time()) - 3600)}, body),
        (secret, {k: v for k, v in headers.items() if k != "webhook-signature"}, body),
    ]
    for args in refused:
        with pytest.raises(InvalidWebhook):
            verify_webhook(*args)


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_typescript_helper_accepts_real_deliveries_and_refuses_tampering(
    delivered: dict[str, Any], tmp_path: Path
) -> None:
    tsc = TYPESCRIPT_SDK / "node_modules" / ".bin" / "tsc"
    assert tsc.exists(), "the TypeScript client's dependencies are missing: run `make sdk-tools`"
    body = delivered["body"].decode()
    cases = [
        {"secret": secret, "headers": delivered["headers"], "body": body}
        for secret in delivered["secrets"]
    ]
    cases.append(
        {"secret": delivered["secrets"][0], "headers": delivered["headers"], "body": body + " "}
    )
    recorded = tmp_path / "deliveries.json"
    recorded.write_text(json.dumps(cases))
    out = tmp_path / "dist"
    # Only the helper and its script (the whole client is compiled by the SDK's own tests).
    compiled = subprocess.run(
        [str(tsc), *TSC_OPTIONS, "--outDir", str(out), "scripts/verify-webhook.ts"],
        cwd=TYPESCRIPT_SDK,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    ran = subprocess.run(
        [NODE or "node", str(out / "scripts" / "verify-webhook.js"), str(recorded)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    results = [json.loads(line) for line in ran.stdout.strip().splitlines()]
    change_id = delivered["change"]["id"]
    assert results[:2] == [{"ok": True, "id": change_id}] * 2
    assert results[2]["ok"] is False and "no signature" in results[2]["error"]
