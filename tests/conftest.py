"""Shared fixtures: plugin autoload off, a fresh plugin manager per test, a --device option."""

from __future__ import annotations

import os

os.environ["SEQKIT_LOAD_PLUGINS"] = os.environ.get("SEQKIT_TEST_LOAD_PLUGINS", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

from seqkit import plugins  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="torch device for device-aware tests (cpu, cuda, ...)")


@pytest.fixture
def device(request) -> torch.device:
    spec = request.config.getoption("--device")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine")
    return torch.device(spec)


@pytest.fixture
def plugin_manager():
    """A fresh plugin manager with only the built-in plugins; restored afterwards."""
    pm = plugins._make_manager(load_entry_points=False)
    plugins.reset(pm)
    try:
        yield pm
    finally:
        plugins.reset(None)


@pytest.fixture
def register_plugin(plugin_manager):
    """Register a plugin module or object for one test; unregistered in ``finally``."""
    added = []

    def register(plugin, name=None):
        plugin_manager.register(plugin, name=name)
        added.append(plugin)
        plugins.registry.reset()
        return plugin

    try:
        yield register
    finally:
        for plugin in added:
            if plugin_manager.is_registered(plugin):
                plugin_manager.unregister(plugin)
        plugins.registry.reset()


@pytest.fixture(autouse=True)
def _fresh_registry():
    plugins.registry.reset()
    yield
    plugins.registry.reset()
