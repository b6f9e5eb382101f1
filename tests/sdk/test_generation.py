"""The SDKs under test are what the pinned generators make of the spec now; the spec suits them."""

from __future__ import annotations

import filecmp
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.sdk.conftest import NODE, ROOT, SDKS, TYPESCRIPT_SDK

SPEC = ROOT / "openapi" / "openapi.yaml"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
IGNORED = {"__pycache__", ".ruff_cache"}


def _files(root: Path) -> set[Path]:
    return {
        path.relative_to(root)
        for path in root.rglob("*")
        if path.is_file() and not IGNORED & set(path.relative_to(root).parts)
    }


def test_generated_sdks_are_current_and_reproducible(tmp_path: Path) -> None:
    """A second generation, elsewhere, gives the very files the tests drive.

    So generation is deterministic (pins, lockfile), and client-sdks/ is not left over from
    an older spec: a test run that skipped `make sdk` after a spec change fails here.
    """
    result = subprocess.run(
        [ROOT / "scripts" / "sdk.sh", "generate", tmp_path / "python", tmp_path / "schema.ts"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    generated, fresh = SDKS / "python", tmp_path / "python"
    stale = sorted(
        str(name)
        for name in _files(generated) ^ _files(fresh)
        | {
            name
            for name in _files(generated) & _files(fresh)
            if not filecmp.cmp(generated / name, fresh / name, shallow=False)
        }
    )
    if NODE and not filecmp.cmp(
        TYPESCRIPT_SDK / "src" / "schema.ts", tmp_path / "schema.ts", shallow=False
    ):
        stale.append("typescript/src/schema.ts")
    assert not stale, f"client-sdks/ is not what the spec generates now; run `make sdk`: {stale}"


def _spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    return loaded


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def _resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _anonymous_object(schema: dict[str, Any]) -> bool:
    """An inline schema a generator would have to name itself (Go's `InlineObject1` and kin)."""
    if "$ref" in schema:
        return False
    if schema.get("type") == "array":
        return _anonymous_object(schema.get("items", {}))
    return bool(
        schema.get("type") == "object" or {"properties", "allOf", "oneOf", "anyOf"} & schema.keys()
    )


def test_operation_ids_are_unique() -> None:
    operations = list(_operations(_spec()))
    missing = [
        f"{method.upper()} {path}" for path, method, op in operations if "operationId" not in op
    ]
    assert not missing, f"every operation needs an operationId: {missing}"
    ids = [str(op["operationId"]) for _, _, op in operations]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})


def test_request_and_response_bodies_use_named_schemas() -> None:
    spec = _spec()
    inline: list[str] = []
    for path, method, operation in _operations(spec):
        bodies: dict[str, dict[str, Any]] = {}
        if "requestBody" in operation:
            bodies["request"] = _resolve(spec, operation["requestBody"])
        for status, response in operation["responses"].items():
            bodies[status] = _resolve(spec, response)
        for where, body in bodies.items():
            for media, content in body.get("content", {}).items():
                if _anonymous_object(content.get("schema", {})):
                    inline.append(f"{method.upper()} {path} {where} {media}")
    assert not inline, f"give these bodies a schema in components/schemas: {inline}"


@pytest.mark.parametrize(
    ("schema", "anonymous"),
    [
        ({"$ref": "#/components/schemas/ErrorResponse"}, False),
        ({"type": "string", "format": "binary"}, False),
        ({"type": "array", "items": {"$ref": "#/components/schemas/Folder"}}, False),
        ({"type": "object", "properties": {"ok": {"type": "boolean"}}}, True),
        ({"allOf": [{"$ref": "#/components/schemas/Account"}]}, True),
        ({"type": "array", "items": {"properties": {"id": {"type": "string"}}}}, True),
    ],
)
def test_anonymous_object_detection(schema: dict[str, Any], anonymous: bool) -> None:
    assert _anonymous_object(schema) is anonymous
