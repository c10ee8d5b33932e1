"""The plugin manager: built-in plugins plus those found through the ``seqkit`` entry points.

A plugin that fails to import is reported with one warning and skipped; two plugins
registering the same name is an error naming both.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import pluggy

from . import hookspecs, registry
from .errors import SeqkitError
from .registry import Entry

__all__ = ["DEFAULT_PLUGINS", "PluginInfo", "get_plugin_manager", "plugin_info", "reset"]

ENTRY_POINT_GROUP = "seqkit"
DEFAULT_PLUGINS = (
    "seqkit.default_plugins.cells",
    "seqkit.default_plugins.heads",
    "seqkit.default_plugins.datasets",
    "seqkit.default_plugins.features",
    "seqkit.default_plugins.tasks",
)
HOOK_KINDS = {"register_cells": "cell", "register_heads": "head", "register_datasets": "dataset",
              "register_features": "features", "register_tasks": "task"}
# PluginInfo field of each kind
_INFO_FIELD = {"cell": "cells", "head": "heads", "dataset": "datasets", "features": "features", "task": "tasks"}

_pm: Optional[pluggy.PluginManager] = None


class PluginLoadWarning(UserWarning):
    """A third-party plugin could not be loaded; seqkit carries on without it."""


def _autoload() -> bool:
    # SEQKIT_LOAD_PLUGINS=0 turns entry-point discovery off (the tests do this).
    return os.environ.get("SEQKIT_LOAD_PLUGINS", "1").strip().lower() not in ("0", "false", "no", "")


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created on first use."""
    global _pm
    if _pm is None:
        _pm = _make_manager(load_entry_points=_autoload())
    return _pm


def _make_manager(*, load_entry_points: bool) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("seqkit")
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if load_entry_points:
        _load_entry_points(pm)
    return pm


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # a broken plugin must not take seqkit down
            dist = getattr(ep, "dist", None)
            label = f"{ep.name} ({dist.name} {dist.version})" if dist else ep.name
            warnings.warn(
                f"seqkit plugin {label} failed to load and is skipped: "
                f"{type(exc).__name__}: {exc}",
                PluginLoadWarning,
                stacklevel=2,
            )
            continue
        if dist := getattr(ep, "dist", None):
            pm._plugin_distinfo.append((plugin, dist))  # noqa: SLF001 (as pluggy does itself)


def reset(pm: Optional[pluggy.PluginManager] = None) -> None:
    """Use ``pm`` (or a fresh default manager on next use) and forget registered names."""
    global _pm
    _pm = pm
    registry.reset()


def _collect(pm: pluggy.PluginManager, kind: str) -> dict[str, Entry]:
    hook_name = next(h for h, k in HOOK_KINDS.items() if k == kind)
    entries: dict[str, Entry] = {}
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)

        def register(name: str, obj: Any, _plugin: str = plugin_name) -> None:
            if name in entries:
                raise SeqkitError(
                    f"{kind} {name!r} is registered twice: by plugin {entries[name].plugin} and by "
                    f"plugin {_plugin}; uninstall or rename one of them"
                )
            entries[name] = Entry(name, obj, _plugin)

        impl.function(**({"register": register} if "register" in impl.argnames else {}))
    return entries


def _registry_loader(kind: str) -> dict[str, Entry]:
    return _collect(get_plugin_manager(), kind)


registry.set_loader(_registry_loader)


@dataclass
class PluginInfo:
    name: str
    version: Optional[str]
    distribution: Optional[str]
    hooks: list[str]
    cells: list[str] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)


def plugin_info(pm: Optional[pluggy.PluginManager] = None) -> list[PluginInfo]:
    """Every plugin, its version and what it registers."""
    pm = pm or get_plugin_manager()
    dists = {id(p): d for p, d in pm.list_plugin_distinfo()}
    infos = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        dist = dists.get(id(plugin))
        if dist is None and name.startswith("seqkit."):
            version, dist_name = _own_version(), "seqkit"
        else:
            version = dist.version if dist else None
            dist_name = dist.metadata["Name"] if dist else None
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        info = PluginInfo(name, version, dist_name, hooks)
        for hook, kind in HOOK_KINDS.items():
            if hook in hooks:
                names: list[str] = []
                fn = getattr(plugin, hook)
                takes = "register" in inspect.signature(fn).parameters
                fn(**({"register": lambda n, _o, _names=names: _names.append(n)} if takes else {}))
                setattr(info, _INFO_FIELD[kind], names)
        infos.append(info)
    return infos


def _own_version() -> str:
    from . import __version__

    return __version__


def load_plugin_module(module: str) -> None:
    """Register an importable module as a plugin (used by ``--plugin`` and tests)."""
    pm = get_plugin_manager()
    mod = sys.modules.get(module) or importlib.import_module(module)
    if pm.get_plugin(module) is None:
        pm.register(mod, name=module)
    registry.reset()
