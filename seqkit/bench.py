"""Encoder speed in one table: raw ``nn.LSTM`` against seqkit's engines and every installed cell.

``seqkit bench encoder`` and ``bench/encoder.py`` print it; ``run_encoder_bench`` returns it.
Times are medians over repeats after warm-up.  The ratio column divides by raw fp32
``nn.LSTM`` in the same mode (forward, or forward+backward); GFLOP/s counts the matmul work of
the real (unpadded) frames, against a matmul ceiling measured at the start.
"""

from __future__ import annotations

import copy
import datetime
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import registry
from .cells import Cell
from .encoder import Encoder
from .recipe import PRECISIONS

__all__ = ["BenchConfig", "BenchSkipped", "ThirdPartyLSTMCell", "format_table", "run_encoder_bench"]

MODES = ("fwd", "fwd+bwd")


class BenchSkipped(Exception):
    """Nothing can be measured here (e.g. ``--device cuda`` without a GPU)."""


@dataclass
class BenchConfig:
    batch: int = 32
    length: int = 200
    input_size: int = 80
    hidden_size: int = 256
    num_layers: int = 3
    repeats: int = 5
    warmup: int = 1
    threads: int = 2  # 0: torch's default
    device: str = "cpu"
    precisions: tuple[str, ...] = PRECISIONS
    modes: tuple[str, ...] = MODES
    only: tuple[str, ...] = ()  # keep rows whose name contains one of these
    seed: int = 0


class _LSTMWeights(Cell):
    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        bound = 1.0 / math.sqrt(hidden_size)
        self.w_x = nn.Parameter(torch.empty(4 * hidden_size, input_size).uniform_(-bound, bound))
        self.w_h = nn.Parameter(torch.empty(4 * hidden_size, hidden_size).uniform_(-bound, bound))
        self.b = nn.Parameter(torch.empty(4 * hidden_size).uniform_(-bound, bound))

    def initial_state(self, batch_size, *, device=None, dtype=None):
        z = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return (z, z.clone())


def _lstm_gates(xp: Tensor, hp: Tensor, c: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    i, f, g, o = (xp + hp).chunk(4, dim=-1)
    c = torch.addcmul(torch.sigmoid(f) * c, torch.sigmoid(i), torch.tanh(g))
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, (h, c)


class ThirdPartyLSTMCell(_LSTMWeights):
    """An LSTM written as a plugin author would, with the engine hints, for the generic row."""

    recurrent_weight = "w_h"

    def project_input(self, x: Tensor) -> Tensor:
        return F.linear(x, self.w_x, self.b)

    def gates(self, xp, hp, state):
        return _lstm_gates(xp, hp, state[1])


class ForwardOnlyLSTMCell(_LSTMWeights):
    """The same LSTM with only ``forward``: what the engine does without any hints."""

    def forward(self, x, state):
        return _lstm_gates(F.linear(x, self.w_x, self.b), F.linear(state[0], self.w_h), state[1])


@dataclass
class _Row:
    name: str
    build: Callable[[], nn.Module]
    run: Callable[[nn.Module, Tensor, Optional[Tensor]], Tensor]
    gates: Optional[int]  # G / H: 4 for LSTM-like cells, 3 for GRU; None: read from the built cell
    full_length: bool = False
    raw: bool = False


@dataclass
class BenchResult:
    config: dict[str, Any]
    machine: dict[str, Any]
    ceiling_gflops: dict[str, float]
    frames: dict[str, int]
    rows: list[dict[str, Any]] = field(default_factory=list)


def _rows(cfg: BenchConfig) -> list[_Row]:
    size = (cfg.input_size, cfg.hidden_size)
    kw: dict[str, Any] = dict(num_layers=cfg.num_layers, bidirectional=True, batch_first=True)

    def encoder(cell: Any) -> Callable[[], nn.Module]:
        return lambda: Encoder(*size, cell=cell, **kw)

    def seqkit_run(m, x, lengths):
        return m(x, lengths)[0]

    rows = [
        _Row("nn.LSTM (raw, full length)", lambda: nn.LSTM(*size, **kw), lambda m, x, _: m(x)[0], 4,
             full_length=True, raw=True),
        _Row("seqkit lstm (fused)", encoder("lstm"), seqkit_run, 4),
        _Row("seqkit lstm (fused, full length)", encoder("lstm"), seqkit_run, 4, full_length=True),
        _Row("seqkit gru (fused)", encoder("gru"), seqkit_run, 3),
        _Row("generic: LSTM cell with hints", encoder(ThirdPartyLSTMCell), seqkit_run, 4),
        _Row("generic: LSTM cell with hints, full length", encoder(ThirdPartyLSTMCell), seqkit_run, 4,
             full_length=True),
        _Row("generic: LSTM cell, forward only", encoder(ForwardOnlyLSTMCell), seqkit_run, 4),
    ]
    for name, entry in sorted(registry.cells.entries().items()):
        if name not in ("lstm", "gru"):
            rows.append(_Row(f"plugin {name} ({entry.plugin})", encoder(name), seqkit_run, None))
    if cfg.only:
        rows = [r for r in rows if r.raw or any(o in r.name for o in cfg.only)]
    return rows


def _machine(cfg: BenchConfig, device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_bf16": bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Callable[[], Any], cfg: BenchConfig, device: torch.device) -> float:
    for _ in range(cfg.warmup):
        fn()
    return statistics.median(_timed(fn, device) for _ in range(max(1, cfg.repeats)))


def _ceiling(dtype: torch.dtype, cfg: BenchConfig, device: torch.device) -> float:
    """GFLOP/s of one large matmul shaped like the hoisted input projection."""
    m = min(cfg.batch * cfg.length, 2048)
    k = max(cfg.input_size, 2 * cfg.hidden_size)
    n = 4 * cfg.hidden_size
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    seconds = _median_time(lambda: torch.mm(a, b), BenchConfig(repeats=5, warmup=1), device)
    return 2 * m * k * n / seconds / 1e9


def _gates(module: nn.Module, hidden_size: int) -> Optional[int]:
    """G / H of a plugin cell that declares its recurrent weight (G, H); None when it does not."""
    cells = getattr(module, "cells", None)
    cell = cells["l0"] if cells is not None and "l0" in cells else None
    if cell is None or not cell.declares_recurrence():
        return None
    return cell.recurrent_parameters()[0].size(0) // hidden_size


def _flops(gates: int, cfg: BenchConfig, frames: int) -> float:
    """Matmul FLOPs of one forward pass over ``frames`` real frames (backward: twice that)."""
    h, g = cfg.hidden_size, gates * cfg.hidden_size
    per_frame = sum(2 * g * ((cfg.input_size if layer == 0 else 2 * h) + h) for layer in range(cfg.num_layers))
    return 2 * per_frame * frames  # two directions


def _step(row: _Row, module: nn.Module, x: Tensor, lengths: Optional[Tensor], precision: str,
          mode: str) -> Callable[[], None]:
    """One timed call of ``row``: a forward pass, or a forward and backward pass."""
    bf16 = precision == "bf16"
    if row.raw and bf16:
        # nn.LSTM under CPU autocast hands fp32 weights to oneDNN, which fails on CPUs without
        # native bf16; a bf16 copy of the module is the raw bf16 baseline everywhere.
        module, x = copy.deepcopy(module).to(torch.bfloat16), x.to(torch.bfloat16)
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16 and not row.raw)
    params = list(module.parameters())

    def forward() -> None:
        module.eval()
        with torch.no_grad(), autocast:
            row.run(module, x, lengths)

    def forward_backward() -> None:
        module.train()
        for p in params:
            p.grad = None
        with autocast:
            out = row.run(module, x, lengths)
        out.float().sum().backward()

    return forward if mode == "fwd" else forward_backward


def _timed(step: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - t0


def run_encoder_bench(cfg: BenchConfig, progress: Optional[Callable[[str], None]] = None) -> BenchResult:
    """Measure every row in every precision and mode; see the module doc for the columns.

    Rows take turns, one call each per round, so that a slow spell of a shared machine
    spreads over all rows instead of skewing one of them (the baseline above all).
    """
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchSkipped("CUDA is not available on this machine; nothing measured")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(cfg.batch, cfg.length, cfg.input_size, generator=gen).to(device)
    low = max(1, cfg.length // 2)
    lengths = torch.randint(low, cfg.length + 1, (cfg.batch,), generator=gen)
    lengths[0] = cfg.length  # the batch is as long as its longest sequence
    frames = {"padded": cfg.batch * cfg.length, "real": int(lengths.sum())}
    result = BenchResult(asdict(cfg), _machine(cfg, device), {}, frames)
    for precision in cfg.precisions:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        result.ceiling_gflops[precision] = _ceiling(dtype, cfg, device)
    entries, gates = [], {}
    for row in _rows(cfg):
        torch.manual_seed(cfg.seed)
        module = row.build().to(device)
        gates[row.name] = row.gates or _gates(module, cfg.hidden_size)
        for precision in cfg.precisions:
            for mode in cfg.modes:
                step = _step(row, module, x, None if row.full_length else lengths, precision, mode)
                entries.append((row, precision, mode, step, []))
    for *_, step, _ in entries:
        for _ in range(cfg.warmup):
            step()
    rounds = max(1, cfg.repeats)
    for k in range(rounds):
        for *_, step, times in entries:
            times.append(_timed(step, device))
        if progress is not None:
            progress(f"round {k + 1}/{rounds} done")
    medians = {(row.name, precision, mode): statistics.median(times) for row, precision, mode, _, times in entries}
    baselines = {m: v for (name, p, m), v in medians.items() if p == "fp32" and name.startswith("nn.LSTM")}
    for row, precision, mode, _, _ in entries:
        seconds = medians[(row.name, precision, mode)]
        baseline = baselines.get(mode)
        row_frames = frames["padded"] if row.full_length else frames["real"]
        g = gates[row.name]
        gflops = _flops(g, cfg, row_frames) * (3 if mode == "fwd+bwd" else 1) / seconds / 1e9 if g else None
        result.rows.append({
            "row": row.name, "precision": precision, "mode": mode,
            "ms_per_batch": seconds * 1e3, "frames_per_s": row_frames / seconds,
            "ratio_to_fp32_nn_lstm": seconds / baseline if baseline else None,
            "gflops": gflops,
            "percent_of_ceiling": 100 * gflops / result.ceiling_gflops[precision] if gflops else None,
        })
    return result


_HEADER = f"{'row':<44}{'prec':<6}{'mode':<9}{'ms/batch':>10}{'frames/s':>11}{'ratio':>7}{'GFLOP/s':>9}{'%ceil':>7}"


def _format_row(r: dict[str, Any]) -> str:
    ratio = f"{r['ratio_to_fp32_nn_lstm']:.2f}" if r["ratio_to_fp32_nn_lstm"] is not None else "-"
    gflops = f"{r['gflops']:.1f}" if r["gflops"] is not None else "-"  # unknown for an undeclared cell
    ceil = f"{r['percent_of_ceiling']:.0f}" if r["percent_of_ceiling"] is not None else "-"
    return (f"{r['row']:<44}{r['precision']:<6}{r['mode']:<9}{r['ms_per_batch']:>10.1f}"
            f"{r['frames_per_s']:>11,.0f}{ratio:>7}{gflops:>9}{ceil:>7}")


def describe(result: BenchResult) -> str:
    """The header lines: machine, workload, ceilings and what the columns mean."""
    m, c, fr = result.machine, result.config, result.frames
    ceilings = ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in result.ceiling_gflops.items())
    lines = [
        f"seqkit bench encoder, {m['date']}",
        f"machine: {m['cpu']} ({m['cores']} cores), {m['device']}"
        + (f" {m['gpu']}" if "gpu" in m else "")
        + f", torch {m['torch']}, CPU capability {m['cpu_capability']}, threads {m['threads']}, "
        f"oneDNN native bf16: {'yes' if m['onednn_bf16'] else 'no'}"
        + (f", load average at start {m['load_average']:.2f}" if m.get("load_average") is not None else ""),
        f"workload: N={c['batch']} L={c['length']} I={c['input_size']} H={c['hidden_size']} "
        f"layers={c['num_layers']} bidirectional; seqkit rows use lengths uniform in "
        f"[{max(1, c['length'] // 2)}, {c['length']}] (seed {c['seed']}, {fr['real']} real of {fr['padded']} "
        f"frames) unless marked full length",
        f"matmul ceiling: {ceilings}; median of {c['repeats']} after {c['warmup']} warm-up",
        "ratio: time / raw fp32 nn.LSTM in the same mode; bf16 = autocast (raw nn.LSTM: a bf16 copy);"
        " GFLOP/s: matmul work of real frames (fwd+bwd = 3x fwd); rows take turns, one call per round",
    ]
    return "\n".join(lines)


def format_table(result: BenchResult) -> str:
    return "\n".join([describe(result), "", _HEADER, *(_format_row(r) for r in result.rows)])
