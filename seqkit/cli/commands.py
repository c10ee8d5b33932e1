"""``seqkit plugins``, ``seqkit evaluate`` and ``seqkit export``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from ..recipe import PRECISIONS
from . import cli


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_cmd(as_json: bool) -> None:
    """Every plugin, its version, and the tasks/cells/heads/datasets/features it adds. Exits 1
    when a plugin is broken (failed to load, a hook raised, a name clash), after listing it."""
    from ..plugins import plugin_info

    infos = plugin_info()
    broken = [i for i in infos if i.problems]
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(i) for i in infos], indent=1))
        if broken:
            raise SystemExit(1)
        return
    for info in infos:
        click.echo(f"{info.name} {info.version or '(no version)'}")
        for problem in info.problems:
            click.echo(f"  problem: {problem}")
        for kind in ("tasks", "cells", "heads", "datasets", "features"):
            names = getattr(info, kind)
            if names:
                click.echo(f"  {kind}: {', '.join(names)}")
        other = [h for h in info.hooks if not h.startswith("register_") or h == "register_commands"]
        if other:
            click.echo(f"  hooks: {', '.join(other)}")
    if broken:
        click.echo(f"error: {len(broken)} plugin(s) with problems: {', '.join(i.name for i in broken)}", err=True)
        raise SystemExit(1)


@cli.command("evaluate")
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.option("--data", type=click.Path(path_type=Path),
              help="A data file or folder in the task's format (a CoNLL file for tagging, a JSONL audio manifest "
                   "for transcription, a text file for language models, a folder of MIDI files for piano-roll "
                   "music; default: the run's test split).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(PRECISIONS),
              help="The recurrences' precision (as seqkit serve --precision): what bf16 costs in accuracy.")
def evaluate_cmd(run: Path, data: Path | None, as_json: bool, batch_size: int, precision: str) -> None:
    """Scores of the model in RUN on its test split or on --data, as its task reports them
    (tagging: span precision/recall/F1 per type; transcription: CER/WER; language model:
    perplexity)."""
    from ..build import evaluate_run

    metrics, task = evaluate_run(run, data, batch_size=batch_size, precision=precision)
    if as_json:
        click.echo(json.dumps(metrics, indent=1, ensure_ascii=False))
        return
    click.echo(task.format_metrics(metrics))
    for line in task.format_notes(metrics):
        click.echo(line, err=True)


@cli.command("export")
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript", "pt2"]), default="onnx", show_default=True,
              help="onnx: runs with numpy and onnxruntime only; torchscript: torch.jit.load (also from C++); "
                   "pt2: a torch.export program (import seqkit_ops.py from the folder before torch.export.load).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="A new (or empty) folder: the graph, vocabularies, manifest.json and runtime.py.")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True)
@click.option("--check-batches", default=5, show_default=True, type=click.IntRange(min=1),
              help="Random batches of random lengths the exported graph is checked on against the model "
                   "(largest difference allowed: 1e-4); a graph that disagrees is not written.")
def export_cmd(run: Path, fmt: str, out: Path, checkpoint: str, check_batches: int) -> None:
    """Export the model in RUN for apps that do not run seqkit: lengths (and a forward model's
    carried state) are real inputs of the graph. `python -c "import runtime; runtime.load('OUT')"`
    in OUT gives the model back with numpy and onnxruntime only (docs/deploying.md)."""
    from ..export import export_run

    manifest = export_run(run, fmt, out, checkpoint=checkpoint, trials=check_batches,
                          log=lambda m: click.echo(m, err=True))
    click.echo(f"{out}: {manifest['graph']} ({fmt}), inputs {', '.join(manifest['inputs'])}, "
               f"outputs {', '.join(manifest['outputs'])}")
