"""Load the server fixtures for these self-tests unless the root conftest already did."""

from __future__ import annotations

import pytest

PLUGIN = "tests.servers.plugin"


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin(PLUGIN):
        config.pluginmanager.import_plugin(PLUGIN)
