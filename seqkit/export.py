"""Export a trained model to ONNX, TorchScript or a ``torch.export`` program (``seqkit export``).

A task model that can be exported defines ``export_spec()`` returning an :class:`ExportSpec`:
a module whose ``forward`` uses tensor operations only (lengths and carried state are tensors,
never Python numbers, so they stay real graph inputs), example inputs, the dynamic dimensions,
and the files the post-processing needs (vocabularies, CRF transitions). :func:`export_run`
writes the graph, those files, ``manifest.json`` and ``runtime.py`` (the numpy post-processing
of ``seqkit/export_runtime.py``), then checks the exported graph against the eager model on
random batches with random lengths before the folder appears; a graph that disagrees is an
error, never a file.

The encoder's recurrences become one node each (:mod:`seqkit.export_ops`): ONNX's ``LSTM`` and
``GRU`` operators in ONNX, custom operators in a ``.pt2`` program, torch's fused kernels in
TorchScript. A cell without a fused kernel (a plugin's peephole or layer-norm LSTM) cannot be
one node, and is refused by name.

Shape legend: N batch, L length, I input features, H hidden, D directions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

from . import export_ops as ops
from .errors import SeqkitError

__all__ = ["FORMATS", "ExportEncoder", "ExportGraph", "ExportSpec", "export_encoder", "export_run", "random_lengths",
           "state_inputs"]

# ``ExportSpec``, ``ExportGraph``, ``export_encoder``, ``random_lengths`` and ``state_inputs`` are the
# public API a task (a plugin's too) uses in its model's ``export_spec()``; docs/plugins.md shows one.

FORMATS = {"onnx": "model.onnx", "torchscript": "model.ts", "pt2": "model.pt2"}
TOLERANCE = 1e-4  # largest difference allowed between exported and eager outputs


@dataclass
class ExportSpec:
    """What a task model hands to :func:`export_run`.

    build: ``build(mode)`` returns the module whose ``forward(*inputs)`` returns a tuple of
        tensors. ``mode`` is passed to :func:`export_encoder`: ``"ops"`` (the recurrences as
        seqkit's custom operators: ONNX, pt2), ``"kernels"`` (torch's kernels: TorchScript) or
        ``"eager"`` (the model's own encoder, the reference of the parity check).
    inputs: example inputs by name, in ``forward``'s order (no dimension of size 0 or 1).
    outputs: output names.
    dynamic: per input, its dynamic dimensions by name (``{"ids": {0: "batch", 1: "length"}}``),
        or by name and least size (``("frames", 5)``) where the graph needs more than one.
    sample: random inputs of random shapes for the parity check, from a ``torch.Generator``.
    files: files for the runtime, name -> JSON-able object, a numpy array (``.npy``) or a
        ``Path`` (copied).
    manifest: what the runtime needs to know (task, vocabulary kind, labels...). A task whose
        post-processing ``runtime.py`` does not know (a plugin's) ships its own numpy module in
        ``files`` and names it here as ``"runtime_module"``; ``runtime.load(folder)`` then
        returns that module's ``load(graph)``.
    """

    build: Callable[[str], nn.Module]
    inputs: dict[str, Tensor]
    outputs: list[str]
    dynamic: dict[str, dict[int, Any]]
    sample: Callable[[torch.Generator], dict[str, Tensor]]
    files: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)


def random_lengths(gen: torch.Generator, n: int, longest: int) -> Tensor:
    """(N,) lengths in [1, longest], one of them ``longest`` (so the padded length is it)."""
    lengths = torch.randint(1, longest + 1, (n,), generator=gen)
    lengths[int(torch.randint(0, n, (1,), generator=gen))] = longest
    return lengths


def export_encoder(encoder: nn.Module, mode: str) -> nn.Module:
    """The encoder as an export graph uses it: ``forward(x, lengths, state=None)`` with x
    (N, L, I) and lengths (N,) tensors. ``mode``: see :class:`ExportSpec`."""
    if not encoder.batch_first:
        raise SeqkitError("export needs a batch-first encoder (batch_first=True), as recipes build")
    return encoder if mode == "eager" else ExportEncoder(encoder, custom_ops=mode == "ops")


class ExportGraph(nn.Module):
    """Base of a task's export module: ``self.model`` is the trained model and ``self.encoder``
    its encoder in the form ``mode`` asks for (:func:`export_encoder`); a subclass writes
    ``forward(*inputs)`` with them, and ``ExportSpec(build=functools.partial(MyGraph, model))``."""

    def __init__(self, model: nn.Module, mode: str) -> None:
        super().__init__()
        self.model = model
        self.encoder = export_encoder(model.encoder, mode)


def state_inputs(gen: torch.Generator, encoder: nn.Module, n: int) -> dict[str, Tensor]:
    """Random carried states ``state0``, ``state1`` (num_layers, N, H) of a forward encoder, for
    an ``ExportSpec.sample`` (the state is a real graph input; its check needs random values)."""
    return {f"state{k}": torch.randn(encoder.num_layers, n, encoder.hidden_size, generator=gen) * 0.5
            for k in range(encoder._num_states)}


class ExportEncoder(nn.Module):
    """A :class:`seqkit.Encoder`'s eval-mode computation with lengths as a tensor.

    Inputs: ``x`` (N, L, I) batch first, ``lengths`` (N,) in [1, L], and for a forward encoder
    optionally the carried state, a tuple of (num_layers, N, H) tensors. Outputs: (N, L, D*H)
    (zero past each length) and the final state at each row's last real step, as the encoder's.
    """

    def __init__(self, encoder: nn.Module, *, custom_ops: bool) -> None:
        super().__init__()
        if not encoder.fused:
            owner = f" (plugin {encoder._cell_plugin})" if encoder._cell_plugin else ""
            raise SeqkitError(
                f"cell {encoder.cell_name!r}{owner} cannot be exported: it has no fused kernel, and an exported graph "
                f"needs each recurrence as one operator (ONNX's LSTM/GRU) to keep the length a real input; "
                f"train with encoder.cell: lstm or gru to export")
        self.encoder = encoder
        self.custom_ops = custom_ops

    @staticmethod
    def _custom_op(cell: nn.Module, x: Tensor, lengths: Tensor, state: tuple[Tensor, ...], weight=None):
        """One layer-direction as seqkit's custom operator (state (N, H) each, as the encoder's)."""
        h0 = tuple(s.unsqueeze(0) for s in state)  # (1, N, H)
        if cell.fused == "lstm":
            out, h, c = torch.ops.seqkit.lstm_layer(x, lengths, h0[0], h0[1], *cell.fused_weights())
            return out, (h[0], c[0])
        out, h = torch.ops.seqkit.gru_layer(x, lengths, h0[0], *cell.fused_weights())
        return out, (h[0],)

    def forward(self, x: Tensor, lengths: Tensor,
                state: Optional[tuple[Tensor, ...]] = None) -> tuple[Tensor, tuple[Tensor, ...]]:
        # the encoder's own layer loop, with the lengths kept a tensor (never a Python list)
        run = self._custom_op if self.custom_ops else None
        out, final = self.encoder._layers(x.transpose(0, 1), lengths, state, {}, run)
        return out.transpose(0, 1), final


# -- writing an export ----------------------------------------------------------------------------


def _onnx_rnn(kernel: str):
    """The ONNX translation of seqkit's custom recurrence operator: ONNX's LSTM/GRU operator
    with ``sequence_lens``, torch's gate order (i f g o; r z n) reordered to ONNX's (i o f c;
    z r h), and torch's GRU (reset applied after the recurrent matmul: linear_before_reset)."""
    from onnxscript import opset18 as op

    def reorder(w, order):
        parts = op.Split(w, num_outputs=len(order), axis=0)
        return op.Concat(*[parts[i] for i in order], axis=0)

    order = [0, 3, 1, 2] if kernel == "lstm" else [1, 0, 2]

    def weights(w_ih, w_hh, b_ih, b_hh):
        w = op.Unsqueeze(reorder(w_ih, order), [0])
        r = op.Unsqueeze(reorder(w_hh, order), [0])
        b = op.Unsqueeze(op.Concat(reorder(b_ih, order), reorder(b_hh, order), axis=0), [0])
        return w, r, b

    def lstm(x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh):
        w, r, b = weights(w_ih, w_hh, b_ih, b_hh)
        y, yh, yc = op.LSTM(x, w, r, b, op.Cast(lengths, to=6), h0, c0, hidden_size=w_hh.shape[1])
        return op.Squeeze(y, [1]), yh, yc

    def gru(x, lengths, h0, w_ih, w_hh, b_ih, b_hh):
        w, r, b = weights(w_ih, w_hh, b_ih, b_hh)
        y, yh = op.GRU(x, w, r, b, op.Cast(lengths, to=6), h0, hidden_size=w_hh.shape[1], linear_before_reset=1)
        return op.Squeeze(y, [1]), yh

    return lstm if kernel == "lstm" else gru


def _write_graph(spec: ExportSpec, fmt: str, path: Path) -> None:
    args = tuple(spec.inputs.values())
    dims: dict[str, Any] = {}
    dynamic = []
    for name in spec.inputs:
        axes = {}
        for axis, label in spec.dynamic.get(name, {}).items():
            label, least = (label, 1) if isinstance(label, str) else label
            axes[axis] = dims.setdefault(label, torch.export.Dim(label, min=least, max=1 << 20))
        dynamic.append(axes or None)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # notes about torchvision operators it skips
    with warnings.catch_warnings(), contextlib.ExitStack() as stack:
        stack.callback(quiet.setLevel, level)
        warnings.simplefilter("ignore")  # exporters' own progress warnings
        if fmt == "torchscript":
            traced = torch.jit.trace(spec.build("kernels").eval(), args, check_trace=False)
            torch.jit.save(traced, str(path))
            return
        module = spec.build("ops").eval()
        if fmt == "pt2":
            torch.export.save(torch.export.export(module, args, dynamic_shapes=tuple(dynamic)), str(path))
            return
        table = {torch.ops.seqkit.lstm_layer.default: _onnx_rnn("lstm"),
                 torch.ops.seqkit.gru_layer.default: _onnx_rnn("gru")}
        program = torch.onnx.export(module, args, dynamic_shapes=tuple(dynamic), dynamo=True, verbose=False,
                                    input_names=list(spec.inputs), output_names=spec.outputs,
                                    custom_translation_table=table, optimize=False)
        program.save(str(path))


def _write_files(spec: ExportSpec, folder: Path) -> None:
    for name, value in spec.files.items():
        if isinstance(value, np.ndarray):
            np.save(folder / name, value)
        elif isinstance(value, Path):
            shutil.copyfile(value, folder / name)
        else:
            (folder / name).write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")


def _check(spec: ExportSpec, eager: nn.Module, folder: Path, trials: int, log: Callable[[str], None]) -> float:
    """Largest difference between the exported graph and the eager module over random batches."""
    from .export_runtime import Graph

    graph = Graph(folder)
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for trial in range(trials):
        inputs = spec.sample(gen)
        with torch.inference_mode():
            want = eager(*inputs.values())
        got = graph.run({k: v.numpy() for k, v in inputs.items()})
        for name, a, b in zip(spec.outputs, got, want, strict=True):
            b = b.numpy()
            if a.shape != b.shape:
                raise SeqkitError(f"export check failed: output {name!r} has shape {a.shape}, the model gives "
                                  f"{b.shape} (inputs {', '.join(f'{k} {tuple(v.shape)}' for k, v in inputs.items())})")
            diff = float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0
            if b.dtype.kind == "f":
                worst = max(worst, diff)
            if diff > TOLERANCE * max(1.0, float(np.abs(b).max()) if b.size else 1.0):
                shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in inputs.items())
                raise SeqkitError(f"export check failed: output {name!r} differs from the model by {diff:.3g} on "
                                  f"random batch {trial} ({shapes}); nothing was written")
    log(f"checked against the model on {trials} random batches of random lengths: largest difference {worst:.2g}")
    return worst


def export_run(run: Path, fmt: str, out: Path, *, checkpoint: str = "best", trials: int = 5,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Export the model of run folder ``run`` to ``out`` (created; must not exist or be empty)
    and return its manifest. ``fmt``: ``onnx``, ``torchscript`` or ``pt2``."""
    from .build import _load
    from .plugins import versions

    if fmt not in FORMATS:
        raise SeqkitError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SeqkitError(f"{out}: already exists and is not an empty folder; pick a new --out")
    model, task = _load(run, checkpoint=checkpoint)
    make = getattr(model, "export_spec", None)
    if make is None:
        raise SeqkitError(f"{run}: task {model.recipe.task.name!r} does not export (its model has no export_spec(); "
                          f"see docs/deploying.md)")
    spec: ExportSpec = make()
    if fmt == "onnx":
        try:
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as exc:
            raise SeqkitError(f"--format onnx needs onnx, onnxscript and onnxruntime ({exc.name} is missing): "
                              f"pip install seqkit[export]") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        log(f"exporting {run} ({model.recipe.task.name}) to {fmt}")
        _write_graph(spec, fmt, staging / FORMATS[fmt])
        _write_files(spec, staging)
        shutil.copyfile(Path(__file__).with_name("export_runtime.py"), staging / "runtime.py")
        if fmt == "pt2":
            shutil.copyfile(Path(ops.__file__), staging / "seqkit_ops.py")
        manifest = {
            "format": fmt, "graph": FORMATS[fmt], "task": model.recipe.task.name,
            "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch."),
                           "dynamic": {str(a): n if isinstance(n, str) else {"name": n[0], "min": n[1]}
                                   for a, n in spec.dynamic.get(k, {}).items()}}
                       for k, v in spec.inputs.items()},
            "outputs": spec.outputs, "run": str(run.resolve()), "checkpoint": checkpoint,
            **versions(model.recipe),
            **spec.manifest,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
        eager = spec.build("eager").eval()
        manifest["max_difference"] = _check(spec, eager, staging, trials, log)
        (staging / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest
