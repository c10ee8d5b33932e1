"""The plugin manager: built-in plugins plus those found through the ``seqkit`` entry points.

A broken plugin never takes the rest down. One that fails to import, or whose hook raises or
registers something malformed, is reported once by name (a ``PluginLoadWarning``) and disabled;
everything else keeps working. When two plugins register the same name, the built-in (or else the
one loaded first) wins and the clash is reported. ``problems()`` lists what went wrong, and
``seqkit plugins`` prints it and exits non-zero.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import pluggy

from . import hookspecs, registry
from .registry import Entry

__all__ = ["DEFAULT_PLUGINS", "PluginInfo", "PluginLoadWarning", "get_plugin_manager", "plugin_info", "problems",
           "report_problem", "reset"]

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
# plugin name -> what is wrong with it, for the current manager (reported once each)
_problems: dict[str, list[str]] = {}
_labels: dict[str, str] = {}  # plugin name -> "name (distribution version)"


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
    _problems.clear()
    _labels.clear()
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
        dist = getattr(ep, "dist", None)
        _labels[ep.name] = f"{ep.name} ({dist.name} {dist.version})" if dist else ep.name
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # a broken plugin must not take seqkit down
            report_problem(ep.name, f"failed to load and is skipped: {describe(exc)}")
            continue
        if dist:
            pm._plugin_distinfo.append((plugin, dist))  # noqa: SLF001 (as pluggy does itself)


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, on one line and cut short."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def label(plugin: str) -> str:
    """``name (distribution version)`` for an installed plugin, else its name."""
    return _labels.get(plugin, plugin)


def report_problem(plugin: str, what: str) -> None:
    """Record that ``plugin`` is broken (``what``: the rest of the sentence) and warn once."""
    seen = _problems.setdefault(plugin, [])
    if what in seen:
        return
    seen.append(what)
    warnings.warn(f"seqkit plugin {label(plugin)} {what}", PluginLoadWarning, stacklevel=2)


def problems() -> dict[str, list[str]]:
    """Plugin name -> what went wrong with it, after every hook has been asked (``seqkit plugins``)."""
    for table in registry.ALL:
        table.entries()
    return {name: list(what) for name, what in _problems.items()}


def disable(pm: pluggy.PluginManager, plugin_name: str, what: str) -> None:
    """Report a broken plugin and unregister it, so nothing it registered is used."""
    report_problem(plugin_name, what)
    plugin = pm.get_plugin(plugin_name)
    if plugin is not None:
        pm.unregister(plugin)
    registry.reset()  # tables loaded before now may hold its entries


def builtin(plugin_name: str) -> bool:
    """Whether a plugin is one of seqkit's own."""
    return plugin_name in DEFAULT_PLUGINS


def reset(pm: Optional[pluggy.PluginManager] = None) -> None:
    """Use ``pm`` (or a fresh default manager on next use) and forget registered names."""
    global _pm
    _pm = pm
    registry.reset()


def _collect(pm: pluggy.PluginManager, kind: str) -> dict[str, Entry]:
    """Ask every plugin's hook for ``kind``: the built-ins first, then the others in load order.
    A hook that raises or registers something malformed disables its plugin; a name registered
    twice keeps the first (so built-ins win) and reports the other."""
    hook_name = next(h for h, k in HOOK_KINDS.items() if k == kind)
    entries: dict[str, Entry] = {}
    impls = list(getattr(pm.hook, hook_name).get_hookimpls())
    impls.sort(key=lambda impl: not builtin(pm.get_name(impl.plugin) or ""))  # stable: load order otherwise
    for impl in impls:
        plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)
        mine: list[Entry] = []

        def register(name: str, obj: Any, _plugin: str = plugin_name, _mine: list = mine) -> None:
            if not isinstance(name, str) or not name.strip():
                raise TypeError(f"{kind} names are non-empty strings, got {name!r}")
            if obj is None:
                raise TypeError(f"{kind} {name!r} is None")
            _mine.append(Entry(name, obj, _plugin))

        try:
            impl.function(**({"register": register} if "register" in impl.argnames else {}))
        except Exception as exc:
            if builtin(plugin_name):
                raise
            disable(pm, plugin_name, f"is disabled: its {hook_name} raised {describe(exc)}")
            continue
        for entry in mine:
            if entry.name in entries:
                first = entries[entry.name].plugin
                report_problem(plugin_name, f"registers {kind} {entry.name!r}, which plugin {label(first)} "
                                            f"already registers; {plugin_name}'s is ignored (rename it)")
                continue
            entries[entry.name] = entry
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
    problems: list[str] = field(default_factory=list)  # what is wrong with it (broken, clashes)


def plugin_info(pm: Optional[pluggy.PluginManager] = None) -> list[PluginInfo]:
    """Every plugin, its version, what it registers and what is wrong with it (a plugin that
    failed to load or was disabled is listed with its problems only)."""
    pm = pm or get_plugin_manager()
    found = problems()
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
        info = PluginInfo(name, version, dist_name, hooks, problems=found.pop(name, []))
        for hook, kind in HOOK_KINDS.items():
            if hook in hooks:
                entries = getattr(registry, _INFO_FIELD[kind]).entries()
                setattr(info, _INFO_FIELD[kind], [n for n, e in entries.items() if e.plugin == name])
        infos.append(info)
    installed = _dists() if found else {}
    for name, what in found.items():  # failed to load, or disabled
        dist = installed.get(name)
        infos.append(PluginInfo(name, dist.version if dist else None, dist.name if dist else None, [],
                                problems=what))
    return infos


def versions(recipe: Any = None) -> dict[str, Any]:
    """The versions a run was trained with: seqkit, torch, and every loaded plugin distribution;
    given the run's ``recipe``, also ``uses``: the plugin distributions whose components (task,
    cell, head, dataset, features) it names."""
    import torch

    infos = [i for i in plugin_info() if i.distribution and i.distribution != "seqkit" and not i.problems]
    out = {"seqkit": _own_version(), "torch": torch.__version__,
           "plugins": dict(sorted((i.distribution, i.version) for i in infos))}
    if recipe is not None:
        named = {"tasks": _named(recipe, "task", "name"), "cells": _named(recipe, "encoder", "cell"),
                 "heads": _named(recipe, "head", "name"), "datasets": _named(recipe, "data", "dataset"),
                 "features": _named(recipe, "features", "kind")}
        out["uses"] = sorted({i.distribution for i in infos
                              if any(name in getattr(i, kind) for kind, name in named.items() if name)})
    return out


def _named(recipe: Any, section: str, key: str) -> Optional[str]:
    return getattr(getattr(recipe, section, None), key, None)


def version_mismatch(saved: dict[str, Any]) -> list[str]:
    """What differs between ``saved`` (:func:`versions` of a run) and what is installed now: seqkit,
    and the plugin distributions the run uses (all it recorded, for a run that did not say)."""
    now = versions()
    out = []
    if saved.get("seqkit") != now["seqkit"]:
        out.append(f"seqkit {saved.get('seqkit')} (now {now['seqkit']})")
    uses = saved.get("uses")
    for dist, version in (saved.get("plugins") or {}).items():
        if uses is not None and dist not in uses:
            continue  # loaded when it trained, but none of its components is in the run
        if now["plugins"].get(dist) != version:
            out.append(f"{dist} {version} (now {now['plugins'].get(dist) or _unloaded(dist)})")
    return out


def _unloaded(dist: str) -> str:
    """Why a plugin distribution is not among the loaded ones."""
    try:
        installed = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
    if not _autoload():
        return f"{installed} installed but not loaded: SEQKIT_LOAD_PLUGINS=0"
    return f"{installed} installed but not loaded: see `seqkit plugins`"


def _dists() -> dict[str, Any]:
    return {ep.name: ep.dist for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
            if getattr(ep, "dist", None) is not None}


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
