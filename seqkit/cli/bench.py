"""``seqkit bench encoder``: the encoder speed table (see ``seqkit.bench``)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click

from ..bench import BenchConfig
from ..recipe import PRECISIONS
from . import cli

_DEFAULT = BenchConfig()  # the options' defaults are the library's


@cli.group("bench")
def bench_group() -> None:
    """Measure speed on this machine (never asserted in tests; see bench/)."""


@bench_group.command("encoder")
@click.option("--batch", default=_DEFAULT.batch, show_default=True, help="N, sequences per batch.")
@click.option("--length", default=_DEFAULT.length, show_default=True, help="L, steps of the longest sequence.")
@click.option("--input", "input_size", default=_DEFAULT.input_size, show_default=True, help="I, input features.")
@click.option("--hidden", "hidden_size", default=_DEFAULT.hidden_size, show_default=True,
              help="H, hidden size per direction.")
@click.option("--layers", "num_layers", default=_DEFAULT.num_layers, show_default=True, help="Bidirectional layers.")
@click.option("--repeats", default=_DEFAULT.repeats, show_default=True, help="Timed repeats per cell (median).")
@click.option("--warmup", default=_DEFAULT.warmup, show_default=True, help="Untimed runs first.")
@click.option("--threads", default=_DEFAULT.threads, show_default=True,
              help="torch intra-op threads (0: torch's default).")
@click.option("--device", default=_DEFAULT.device, show_default=True, help="cpu or cuda[:N].")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(PRECISIONS),
              help=f"Repeat to pick several (default: {', '.join(_DEFAULT.precisions)}).")
@click.option("--mode", "modes", multiple=True, type=click.Choice(["fwd", "fwd+bwd"]),
              help=f"Repeat to pick several (default: {', '.join(_DEFAULT.modes)}).")
@click.option("--only", multiple=True, help="Keep rows whose name contains this (raw nn.LSTM always stays).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the results as JSON here.")
def encoder_cmd(json_out: Path | None, precisions, modes, only, **options) -> None:
    """Raw nn.LSTM vs seqkit lstm/gru, the generic engine and every installed plugin cell.

    Forward and forward+backward, fp32 and bf16; ms per batch, frames/s, ratio to raw fp32
    nn.LSTM, GFLOP/s against a measured matmul ceiling.
    """
    from ..bench import BenchSkipped, format_table, run_encoder_bench

    config = BenchConfig(**options, precisions=tuple(precisions) or _DEFAULT.precisions,
                         modes=tuple(modes) or _DEFAULT.modes, only=tuple(only))
    try:
        result = run_encoder_bench(config, progress=lambda line: click.echo(line, err=True))
    except BenchSkipped as exc:
        click.echo(f"skipped: {exc}", err=True)
        return
    click.echo(format_table(result))
    if json_out is not None:
        json_out.write_text(json.dumps(dataclasses.asdict(result), indent=1) + "\n", encoding="utf-8")
        print(f"wrote {json_out}", file=sys.stderr)
