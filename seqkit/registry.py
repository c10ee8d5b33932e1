"""Name -> component tables for cells, heads, datasets, feature front-ends and tasks, filled by
the plugins.

This module sits low in the import graph so that the encoder can resolve ``cell="lstm"``
without importing the plugin machinery; ``seqkit.plugins`` installs the loader that fills it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from .errors import RecipeError

__all__ = ["Entry", "Registry", "cells", "datasets", "features", "heads", "reset", "set_loader", "tasks"]


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Any
    plugin: str  # the plugin (module or distribution name) that registered it


Loader = Callable[[str], dict[str, Entry]]
_loader: Optional[Loader] = None


class Registry:
    """The registered components of one kind ("cell", "head", "dataset", "features" or "task")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: Optional[dict[str, Entry]] = None

    def entries(self) -> dict[str, Entry]:
        if self._entries is None:
            if _loader is None:
                from . import plugins  # noqa: F401  (importing it installs the loader)
            assert _loader is not None
            self._entries = _loader(self.kind)
        return self._entries

    def names(self) -> list[str]:
        return sorted(self.entries())

    def get(self, name: str, *, where: str = "") -> Any:
        entries = self.entries()
        prefix = f"{where}: " if where else ""
        if not isinstance(name, str):
            raise RecipeError(f"{prefix}expected the name of a {self.kind} (a string), got {type(name).__name__}")
        if name not in entries:
            known = ", ".join(sorted(entries)) or "none"
            raise RecipeError(
                f"{prefix}unknown {self.kind} {name!r}; registered {self.kind}s: {known} "
                f"(`seqkit plugins` lists them and the plugins that add them)"
            )
        return entries[name].obj

    def clear(self) -> None:
        self._entries = None


cells = Registry("cell")
heads = Registry("head")
datasets = Registry("dataset")
features = Registry("features")
tasks = Registry("task")
ALL = (cells, heads, datasets, features, tasks)


def set_loader(loader: Loader) -> None:
    global _loader
    _loader = loader
    reset()


def reset() -> None:
    """Forget what was loaded, so the next lookup asks the plugins again."""
    for registry in ALL:
        registry.clear()
