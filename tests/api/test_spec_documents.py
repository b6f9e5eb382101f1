"""/openapi.json and /openapi.yaml: built once per process, then replayed (web/speccache.py)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from connexion.middleware.swagger_ui import SwaggerUIAPI

from email_service.app import load_spec


@pytest.mark.parametrize("path", ["/openapi.json", "/openapi.yaml"])
def test_a_spec_document_is_built_once_and_served_the_same_every_time(
    client: Any, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    built = {"n": 0}
    original = SwaggerUIAPI._spec_for_prefix

    def counted(self: SwaggerUIAPI, request: Any) -> dict[str, Any]:
        built["n"] += 1
        return original(self, request)

    monkeypatch.setattr(SwaggerUIAPI, "_spec_for_prefix", counted)

    # When the document is asked for several times
    responses = [client.get(path) for _ in range(5)]

    # Then it was built at most once (the first request, unless an earlier test built it),
    # and every answer is the same complete document, with its headers and request ids
    assert built["n"] <= 1
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    assert len({r.headers["content-type"] for r in responses}) == 1
    assert len({r.headers["x-request-id"] for r in responses}) == 5
    assert all(list(r.headers).count("x-request-id") == 1 for r in responses)
    document = yaml.safe_load(responses[0].content)
    assert set(document["paths"]) == set(load_spec()["paths"])
