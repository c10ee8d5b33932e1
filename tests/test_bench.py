"""The encoder benchmark runs at tiny sizes and produces every row and column (speed is
never asserted here; see bench/)."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import seqkit
import seqkit.testing
from seqkit.bench import BenchConfig, _flops, format_table, run_encoder_bench
from seqkit.cells import GRUCell
from seqkit.cli import cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--batch", "3", "--length", "6", "--input", "4", "--hidden", "5", "--layers", "2",
        "--repeats", "1", "--warmup", "0", "--threads", "1"]
COLUMNS = {"row", "precision", "mode", "ms_per_batch", "frames_per_s", "ratio_to_fp32_nn_lstm", "gflops",
           "percent_of_ceiling"}


class PluginGRU(GRUCell):
    fused = None


def _plugin():
    module = types.ModuleType("bench_plugin")

    @seqkit.hookimpl
    def register_cells(register):
        register("plugin-gru", PluginGRU)

    module.register_cells = register_cells
    return module


def test_every_row_precision_and_mode():
    config = BenchConfig(batch=3, length=6, input_size=4, hidden_size=5, num_layers=2, repeats=1,
                         warmup=0, threads=1)
    with seqkit.testing.registered_plugin(_plugin(), name="bench_plugin"):
        result = run_encoder_bench(config)
    names = sorted({r["row"] for r in result.rows})
    assert names == sorted([
        "nn.LSTM (raw, full length)", "seqkit lstm (fused)", "seqkit lstm (fused, full length)",
        "seqkit gru (fused)", "generic: LSTM cell with hints", "generic: LSTM cell with hints, full length",
        "generic: LSTM cell, forward only",
        "plugin plugin-gru (bench_plugin)",
    ])
    assert len(result.rows) == len(names) * 2 * 2
    for row in result.rows:
        assert set(row) == COLUMNS
        assert row["ms_per_batch"] > 0 and row["frames_per_s"] > 0 and row["gflops"] > 0
    baseline = {r["mode"]: r["ms_per_batch"] for r in result.rows
                if r["row"].startswith("nn.LSTM") and r["precision"] == "fp32"}
    assert len(baseline) == 2  # one per mode
    for row in result.rows:  # every ratio is to raw fp32 nn.LSTM in the same mode
        assert row["ratio_to_fp32_nn_lstm"] == pytest.approx(row["ms_per_batch"] / baseline[row["mode"]])
    for row in result.rows:  # the plugin's FLOPs come from its own (3H, H) recurrent weight, not 4H
        if row["row"].startswith("plugin"):
            flops = _flops(3, config, result.frames["real"]) * (3 if row["mode"] == "fwd+bwd" else 1)
            assert row["gflops"] == pytest.approx(flops / (row["ms_per_batch"] / 1e3) / 1e9)
    assert set(result.ceiling_gflops) == {"fp32", "bf16"}
    assert result.frames["padded"] == 18 and 9 <= result.frames["real"] <= 18
    table = format_table(result)
    assert "torch " + torch.__version__ in table and "ratio" in table and "GFLOP/s" in table
    assert table.count("\n") >= len(result.rows) + 5


def test_cli_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, ["bench", "encoder", *TINY, "--precision", "fp32", "--mode", "fwd",
                                      "--only", "gru", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [r["row"] for r in data["rows"]] == ["nn.LSTM (raw, full length)", "seqkit gru (fused)"]
    assert data["machine"]["torch"] == torch.__version__ and data["config"]["batch"] == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_a_gpu_skips_cleanly():
    result = CliRunner().invoke(cli, ["bench", "encoder", *TINY, "--device", "cuda"])
    assert result.exit_code == 0
    assert "skipped: CUDA is not available" in result.output


def test_script_runs_as_a_subprocess():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "encoder.py"), *TINY, "--precision", "bf16",
                           "--mode", "fwd+bwd", "--only", "hints"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "generic: LSTM cell with hints" in done.stdout and "machine:" in done.stdout


def test_cli_defaults_are_the_library_defaults():
    command = cli.commands["bench"].commands["encoder"]
    options = {p.name: p.default for p in command.params if p.name in vars(BenchConfig()) and not p.multiple}
    assert len(options) == 9  # batch, length, input_size, hidden_size, num_layers, repeats, warmup, threads, device
    assert options == {name: getattr(BenchConfig(), name) for name in options}
