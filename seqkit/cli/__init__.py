"""The ``seqkit`` command line."""

from __future__ import annotations

import sys
import warnings

import click

from ..errors import SeqkitError

__all__ = ["cli", "main"]


class _Group(click.Group):
    """Adds plugin commands lazily and turns user errors into one line on stderr."""

    _plugins_added = False

    def _add_plugin_commands(self) -> None:
        if not self._plugins_added:
            self._plugins_added = True
            from ..plugins import get_plugin_manager

            get_plugin_manager().hook.register_commands(cli=self)

    def list_commands(self, ctx):
        self._add_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        self._add_plugin_commands()
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SeqkitError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(getattr(exc, "exit_code", 2))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="seqkit", prog_name="seqkit")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Recurrent sequence models on one shared (bi)directional encoder.

    Train with `seqkit recipe run RECIPE --out DIR`, then use the run folder with
    `seqkit tag`, `seqkit evaluate` or `seqkit.load(DIR)` in Python.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"


from . import bench, commands, recipe  # noqa: E402,F401  (they attach their commands to `cli`)


def main() -> None:
    cli(prog_name="seqkit")
