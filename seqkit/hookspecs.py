"""The hooks a seqkit plugin may implement.

Each ``register_*`` hook receives a ``register(name, obj)`` callback and returns nothing.
A hook implementation may accept a subset of a hook's arguments.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("seqkit")
hookimpl = pluggy.HookimplMarker("seqkit")


@hookspec
def register_cells(register):
    """Register recurrent cells: ``register("name", CellSubclass)``."""


@hookspec
def register_heads(register):
    """Register task heads: ``register("name", HeadSubclass)`` (options: its ``Config`` dataclass)."""


@hookspec
def register_datasets(register):
    """Register dataset providers: ``register("name", provider)`` (options: ``provider.Config``)."""


@hookspec
def register_features(register):
    """Register feature front-ends: ``register("name", FrontEnd)`` (with a ``Config`` dataclass)."""


@hookspec
def register_tasks(register):
    """Register tasks: ``register("name", TaskSubclass)`` (see ``seqkit.tasks.Task``)."""


@hookspec
def register_commands(cli):
    """Add commands to the ``seqkit`` command-line group (a ``click.Group``)."""
