"""``seqkit recipe list|show|validate|run``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import yaml

from ..recipe import Recipe
from . import cli

_SET_HELP = "Override a recipe key, e.g. --set encoder.num_layers=3 (repeatable; value read as YAML)."


def recipe_dirs() -> list[Path]:
    """Where `seqkit recipe list` looks: $SEQKIT_RECIPES, ./recipes, and the source checkout's."""
    dirs = [Path(p) for p in os.environ.get("SEQKIT_RECIPES", "").split(os.pathsep) if p]
    dirs += [Path("recipes"), Path(__file__).resolve().parents[2] / "recipes"]
    seen, out = set(), []
    for d in dirs:
        if d.is_dir() and d.resolve() not in seen:
            seen.add(d.resolve())
            out.append(d)
    return out


@cli.group("recipe")
def recipe_group() -> None:
    """List, inspect, validate and run recipes (YAML files that describe a training run)."""


@recipe_group.command("list")
def recipe_list() -> None:
    """The shipped recipes with one-line descriptions."""
    found = False
    for folder in recipe_dirs():
        for path in sorted(folder.rglob("*.yaml")):
            try:
                raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
                desc = raw.get("description", "") if isinstance(raw, dict) else ""
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                desc = "(unreadable)"
            click.echo(f"{path}  {desc}")
            found = True
    if not found:
        click.echo("no recipes found (looked in ./recipes and $SEQKIT_RECIPES)", err=True)


@recipe_group.command("show")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
def recipe_show(recipe: Path, overrides: tuple[str, ...]) -> None:
    """Print the resolved recipe: defaults < RECIPE < --set."""
    click.echo(Recipe.load(recipe, overrides).to_yaml(), nl=False)


@recipe_group.command("validate")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
def recipe_validate(recipe: Path, overrides: tuple[str, ...]) -> None:
    """Check a recipe: keys, types, registered names, device. Exit 0 when it is valid."""
    from ..build import check_recipe

    check_recipe(Recipe.load(recipe, overrides))
    click.echo(f"{recipe}: ok")


@recipe_group.command("run")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder: checkpoints, metrics.jsonl, metrics.json and the resolved recipe.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--resume", is_flag=True,
              help="Continue the run in --out from its last checkpoint, with the run's own recipe.yaml "
                   "(--set may change how long to train, the device, threads and logging).")
@click.option("--no-progress", is_flag=True, help="No progress bar (log lines only).")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train with N data-parallel processes on this machine (DDP through torchrun's launcher; "
                   "the recipe's batch_size stays the global batch). See docs/distributed.md.")
@click.pass_context
def recipe_run(ctx: click.Context, recipe: Path, out: Path, overrides: tuple[str, ...], resume: bool,
               no_progress: bool, nproc: int) -> None:
    """Train RECIPE, evaluate the best checkpoint on the test split, write OUT/metrics.json.

    OUT is locked while the run writes to it. A fresh run refuses a folder that holds a trained
    model (use --resume, or another --out); Ctrl-C or SIGTERM saves a checkpoint first.
    Under torchrun (or with --nproc N) the run trains with DistributedDataParallel."""
    from ..build import RECIPE_FILE, resume_recipe, run_recipe
    from ..distributed import from_env, launch

    if nproc > 1 and from_env() is None:
        Recipe.load(recipe, overrides)  # a bad recipe is one line here, not one per process
        argv = [*(["--debug"] if ctx.obj and ctx.obj.get("debug") else []), "recipe", "run", str(recipe),
                "--out", str(out), *[a for o in overrides for a in ("--set", o)],
                *(["--resume"] if resume else []), *(["--no-progress"] if no_progress else [])]
        ctx.exit(launch(nproc, argv))

    resolved = Recipe.load(recipe, overrides)
    if resume and (out / RECIPE_FILE).is_file():
        resolved = resume_recipe(resolved, out, overrides)
    metrics = run_recipe(resolved, out, resume=resume, progress=not no_progress)
    if (from_env() or (0,))[0] != 0:
        return  # rank 0 prints the metrics
    shown = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    click.echo(json.dumps(shown, ensure_ascii=False))
