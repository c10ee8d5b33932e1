"""``seqkit plugins``, ``seqkit tag`` and ``seqkit evaluate``."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from ..errors import SeqkitError
from . import cli


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_cmd(as_json: bool) -> None:
    """Every plugin, its version, and the cells/heads/datasets it adds."""
    from ..plugins import plugin_info

    infos = plugin_info()
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(i) for i in infos], indent=1))
        return
    for info in infos:
        click.echo(f"{info.name} {info.version or '(no version)'}")
        for kind in ("cells", "heads", "datasets"):
            names = getattr(info, kind)
            if names:
                click.echo(f"  {kind}: {', '.join(names)}")
        other = [h for h in info.hooks if not h.startswith("register_") or h == "register_commands"]
        if other:
            click.echo(f"  hooks: {', '.join(other)}")


@cli.command("tag")
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.argument("texts", nargs=-1)
@click.option("--input", "input_file", type=click.File("r", encoding="utf-8"),
              help="Read one text per line from a file ('-' for stdin).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per text.")
@click.option("--batch-size", default=64, show_default=True)
def tag_cmd(run: Path, texts: tuple[str, ...], input_file, as_json: bool, batch_size: int) -> None:
    """Tag TEXTS with the model in RUN: entities with types and character offsets."""
    from .. import load

    lines = list(texts)
    if input_file is not None:
        try:
            lines += [line.rstrip("\n") for line in input_file]
        except UnicodeDecodeError as exc:
            raise SeqkitError(f"{input_file.name}: not UTF-8 text (byte {exc.start}); convert it to UTF-8") from None
    if not lines:
        raise SeqkitError("nothing to tag: give texts as arguments or --input FILE")
    model = load(run)
    for text, result in zip(lines, model.tag(lines, batch_size=batch_size)):
        if as_json:
            click.echo(json.dumps({"text": text, **result}, ensure_ascii=False))
            continue
        click.echo(text)
        for ent in result["entities"]:
            click.echo(f"  {ent['type']}\t{ent['start']}-{ent['end']}\t{ent['text']}")


@cli.command("evaluate")
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path),
              help="A CoNLL file (tagging) or JSONL audio manifest (transcription) to evaluate on "
                   "(default: the run's test split).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--batch-size", default=128, show_default=True)
def evaluate_cmd(run: Path, data: Path | None, as_json: bool, batch_size: int) -> None:
    """Scores of the model in RUN: span precision/recall/F1 per entity type (tagging) or
    CER/WER in percent (transcription)."""
    from ..build import evaluate_run

    metrics = evaluate_run(run, data, batch_size=batch_size)
    if as_json:
        click.echo(json.dumps(metrics, indent=1, ensure_ascii=False))
        return
    if "cer" in metrics and "per_type" not in metrics:
        _print_error_rates(metrics)
        return
    click.echo(f"{'type':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}")
    for kind, row in sorted(metrics["per_type"].items()):
        click.echo(f"{kind:<10}{row['precision']:>10.2f}{row['recall']:>10.2f}{row['f1']:>10.2f}{row['support']:>9}")
    click.echo(f"{'micro':<10}{metrics['precision']:>10.2f}{metrics['recall']:>10.2f}{metrics['f1']:>10.2f}"
               f"{metrics['gold_spans']:>9}")
    print(f"{metrics['sentences']} sentences from {metrics['data']}", file=sys.stderr)


def _print_error_rates(metrics: dict) -> None:
    beam = metrics.get("beam_size")
    click.echo(f"{'':<6}{'greedy':>10}" + (f"{f'beam {beam}':>10}" if beam else ""))
    for key in ("cer", "wer"):
        click.echo(f"{key:<6}{metrics[key]:>10.2f}" + (f"{metrics[key + '_beam']:>10.2f}" if beam else ""))
    print(f"{metrics['utterances']} utterances ({metrics['audio_s']} s of audio) from {metrics['data']}",
          file=sys.stderr)
    for error in metrics.get("unreadable", []):
        print(f"left out: {error}", file=sys.stderr)
