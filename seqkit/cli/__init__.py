"""The ``seqkit`` command line."""

from __future__ import annotations

import signal
import sys
import warnings

import click

from ..errors import SeqkitError

__all__ = ["cli", "main"]


class Terminated(BaseException):
    """SIGTERM outside the training loop (which saves first and exits 143 itself)."""


def _rank() -> int:
    """This process's rank in a data-parallel run (0 outside one)."""
    try:
        from ..distributed import from_env

        found = from_env()
    except SeqkitError:
        return 0
    return found[0] if found else 0


def _on_sigterm(signum, frame):
    raise Terminated()


class _Group(click.Group):
    """Adds plugin commands lazily and turns user errors into one line on stderr."""

    _plugins_added = False

    def _add_plugin_commands(self) -> None:
        """Each plugin's ``register_commands`` on its own: one that raises is reported by name and
        adds nothing; a command whose name another plugin (or seqkit) already has is dropped."""
        if self._plugins_added:
            return
        self._plugins_added = True
        from ..plugins import builtin, describe, disable, get_plugin_manager, report_problem

        pm = get_plugin_manager()
        owners: dict[str, str] = {}  # command -> the plugin that added it ("seqkit": seqkit's own)
        impls = list(pm.hook.register_commands.get_hookimpls())
        impls.sort(key=lambda impl: not builtin(pm.get_name(impl.plugin) or ""))
        for impl in impls:
            name = pm.get_name(impl.plugin) or repr(impl.plugin)
            mine = "seqkit" if builtin(name) else name
            before = dict(self.commands)
            try:
                impl.function(cli=self)
            except Exception as exc:
                if builtin(name):
                    raise
                self.commands = before
                disable(pm, name, f"is disabled: its register_commands raised {describe(exc)}")
                continue
            for command, obj in list(self.commands.items()):
                if before.get(command) is obj:
                    continue
                owner = owners.get(command, "seqkit" if command in before else mine)
                if owner != mine:  # seqkit's own commands, or another plugin's, are kept
                    self.commands[command] = before[command]
                    report_problem(name, f"adds command {command!r}, which {owner} already has; "
                                         f"{name}'s is ignored (rename it)")
                else:
                    owners[command] = mine

    def list_commands(self, ctx):
        self._add_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        self._add_plugin_commands()
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # outside the training loop (which saves first), or a second Ctrl-C
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo("\nerror: interrupted", err=True)
            sys.exit(130)
        except Terminated:
            click.echo("\nerror: terminated (SIGTERM)", err=True)
            sys.exit(143)
        except SeqkitError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            if not exc.quiet:
                rank = _rank()
                click.echo(f"error: {exc}" if not rank else f"error (rank {rank}): {exc}", err=True)
            sys.exit(exc.exit_code)


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


from . import bench, commands, recipe, serve  # noqa: E402,F401  (they attach their commands to `cli`)


def main() -> None:
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    signal.signal(signal.SIGTERM, _on_sigterm)  # a clean exit 143 anywhere; training saves first
    cli(prog_name="seqkit")
