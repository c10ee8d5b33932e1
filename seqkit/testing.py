"""The conformance kit for recurrent cells: does a ``seqkit.Cell`` keep the contract?

One call checks a cell class and returns a report; the pytest forms raise ``AssertionError``
with that report as the message::

    report = seqkit.testing.check_cell(MyCell)
    print(report)                                   # one line per check
    seqkit.testing.assert_cell_conforms(MyCell)     # in a test

    @pytest.mark.parametrize("check", seqkit.testing.CHECKS)
    def test_my_cell(check):
        seqkit.testing.assert_cell_conforms(MyCell, only=[check])

Checks (all in float64 on CPU, with fixed seeds):

- ``construct``: ``cell_cls(input_size, hidden_size)`` builds a ``Cell`` with those sizes.
- ``shapes``: ``initial_state`` and ``forward`` return (N, H) tensors, state shaped like the
  input state, in the input's dtype.
- ``hoisting``: if the cell declares ``project_input``: it works on any leading shape and
  ``forward == forward_projected(project_input(x))``; if it declares ``recurrent_weight`` and
  ``gates``: the weight is (G, H), the bias (G,), and ``forward_projected(xp, s)`` equals
  ``gates(xp, linear(s[0], W, b), s)``.
- ``engine``: the encoder's fast recurrence engine equals a plain step loop, outputs, final
  states and all gradients, on variable lengths (cells that declare ``gates``).
- ``padding``: inside a 2-layer bidirectional encoder, each sequence alone gives the same
  outputs and final states as in a padded batch with other sequences; padding outputs are 0.
- ``state``: one call over L steps equals two calls with the state carried across.
- ``gradcheck``: ``torch.autograd.gradcheck`` of a tiny bidirectional encoder with respect to
  its input, its initial state and every parameter, on variable lengths.
- ``determinism``: the same seed builds the same parameters; the same call gives the same output.
- ``export`` (reported, not required): ``torch.jit.script`` and ``torch.export`` of the cell.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.autograd.gradcheck import GradcheckError
from torch.nn import functional as F

from .cells import Cell
from .encoder import Encoder
from .engine import _autograd_loop, _recurrence

__all__ = ["CHECKS", "Check", "Report", "assert_cell_conforms", "check_cell", "installed_plugin_info",
           "registered_plugin"]

CHECKS = ("construct", "shapes", "hoisting", "engine", "padding", "state", "gradcheck", "determinism",
          "export")
_INFORMATIVE = ("export",)  # reported, never a failure
_DTYPE = torch.float64


@dataclass
class Check:
    name: str
    status: str  # "pass", "fail", "skip" (does not apply) or "info" (optional, not met)
    detail: str = ""


@dataclass
class Report:
    """What ``check_cell`` found: one :class:`Check` per check, in order."""

    cell: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    def __getitem__(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def __str__(self) -> str:
        verdict = "conforms" if self.ok else f"FAILS {len(self.failures)} check(s)"
        lines = [f"{self.cell}: {verdict}"]
        for c in self.checks:
            lines.append(f"  {c.status.upper():<5} {c.name}" + (f": {c.detail}" if c.detail else ""))
        return "\n".join(lines)


class _Failed(Exception):
    """A check's verdict: the cell breaks the contract (the message says how)."""


class _Skipped(Exception):
    """A check that does not apply to this cell."""


@dataclass
class _Context:
    cell_cls: type
    input_size: int
    hidden_size: int
    batch_size: int
    length: int
    seed: int
    kwargs: dict[str, Any]

    def cell(self, input_size: Optional[int] = None, hidden_size: Optional[int] = None) -> Cell:
        torch.manual_seed(self.seed)
        cell = self.cell_cls(input_size or self.input_size, hidden_size or self.hidden_size, **self.kwargs)
        return cell.to(_DTYPE)

    def encoder(self, input_size: Optional[int] = None, hidden_size: Optional[int] = None,
                **kw: Any) -> Encoder:
        torch.manual_seed(self.seed)
        enc = Encoder(input_size or self.input_size, hidden_size or self.hidden_size,
                      cell=_with_kwargs(self.cell_cls, self.kwargs), batch_first=True, **kw)
        return enc.to(_DTYPE).eval()

    def engines(self) -> list[str]:
        return ["auto", "generic"] if getattr(self.cell_cls, "fused", None) else ["auto"]


def _with_kwargs(cell_cls: type, kwargs: dict[str, Any]) -> type:
    """``cell_cls`` with extra constructor arguments bound (the encoder passes only the sizes)."""
    if not kwargs:
        return cell_cls

    def __init__(self: Any, input_size: int, hidden_size: int) -> None:
        cell_cls.__init__(self, input_size, hidden_size, **kwargs)  # type: ignore[misc]

    return type(cell_cls.__name__, (cell_cls,), {"__init__": __init__})


def check_cell(cell_cls: type, *, input_size: int = 5, hidden_size: int = 7, batch_size: int = 4,
               length: int = 6, seed: int = 0, only: Optional[Sequence[str]] = None,
               cell_kwargs: Optional[dict[str, Any]] = None) -> Report:
    """Run the conformance checks on ``cell_cls`` and return a :class:`Report` (never raises
    for a broken cell: every problem becomes a failed check with a readable detail).

    Args:
        cell_cls: the ``seqkit.Cell`` subclass.
        input_size, hidden_size, batch_size, length: sizes of the test inputs.
        seed: torch seed for parameters and inputs.
        only: run just these checks (names from ``CHECKS``); ``construct`` always runs first.
        cell_kwargs: extra keyword arguments for the cell's constructor.
    """
    names = list(CHECKS if only is None else only)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; known: {', '.join(CHECKS)}")
    ctx = _Context(cell_cls, input_size, hidden_size, batch_size, length, seed, dict(cell_kwargs or {}))
    report = Report(getattr(cell_cls, "__qualname__", repr(cell_cls)))
    construct = _run("construct", _check_construct, ctx)
    report.checks.append(construct)
    if construct.status == "fail":
        return report
    for name in names:
        if name != "construct":
            report.checks.append(_run(name, _CHECK_FUNCTIONS[name], ctx))
    return report


def assert_cell_conforms(cell_cls: type, **kwargs: Any) -> Report:
    """``check_cell``, raising ``AssertionError`` with the report when any check fails."""
    report = check_cell(cell_cls, **kwargs)
    if not report.ok:
        raise AssertionError("\n" + str(report))
    return report


@contextlib.contextmanager
def registered_plugin(plugin: Any, name: Optional[str] = None) -> Iterator[Any]:
    """Register a plugin module in a fresh plugin manager (built-ins only) for a ``with`` block.

    The previous manager and the registered names come back afterwards, so a plugin's own
    tests can check that ``register_cells`` and friends work without installing anything.
    """
    from . import plugins

    previous = plugins._pm  # noqa: SLF001
    pm = plugins._make_manager(load_entry_points=False)  # noqa: SLF001
    pm.register(plugin, name=name)
    plugins.reset(pm)
    try:
        yield plugin
    finally:
        plugins.reset(previous)


def installed_plugin_info(distribution: str) -> list[dict[str, Any]]:
    """What ``seqkit plugins --json`` reports for the plugins of an installed distribution, run
    in a real subprocess with entry-point loading on: proof that the installed plugin is found.

    Raises ``AssertionError`` when the command fails or finds none of the distribution's plugins.
    """
    importlib.metadata.distribution(distribution)  # PackageNotFoundError when not installed
    env = {**os.environ, "SEQKIT_LOAD_PLUGINS": "1"}
    done = subprocess.run([sys.executable, "-c", "from seqkit.cli import main; main()", "plugins", "--json"],
                          env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"seqkit plugins --json failed ({done.returncode}): {done.stderr.strip()}")
    infos = [info for info in json.loads(done.stdout) if info["distribution"] == distribution]
    if not infos:
        raise AssertionError(f"seqkit found no plugin of {distribution} through the 'seqkit' entry points")
    return infos


def _run(name: str, fn: Callable[[_Context], str], ctx: _Context) -> Check:
    try:
        detail = fn(ctx)
    except _Skipped as exc:
        return Check(name, "skip", str(exc))
    except _Failed as exc:
        return Check(name, "info" if name in _INFORMATIVE else "fail", str(exc))
    except Exception as exc:  # a crash inside the cell is a failed check, not a crashed kit
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return Check(name, "info" if name in _INFORMATIVE else "fail", f"raised {type(exc).__name__}: {message}")
    return Check(name, "pass", detail or "")


def _close(actual: Tensor, expected: Tensor, what: str, *, atol: float = 1e-9, rtol: float = 1e-7) -> None:
    if actual.shape != expected.shape:
        raise _Failed(f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    if not torch.allclose(actual, expected, atol=atol, rtol=rtol, equal_nan=True):
        diff = (actual - expected).abs().max().item()
        raise _Failed(f"{what}: differs by up to {diff:.3g}")


def _inputs(ctx: _Context, n: int, length: int, size: Optional[int] = None) -> Tensor:
    gen = torch.Generator().manual_seed(ctx.seed + 1)
    return torch.randn(n, length, size or ctx.input_size, generator=gen, dtype=_DTYPE)


def _lengths(n: int, length: int) -> Tensor:
    """Distinct lengths from ``length`` down, one of them 1 (descending order shuffled)."""
    lens = [max(1, length - (i * length) // max(n, 1)) for i in range(n)]
    lens[-1] = 1 if n > 1 else lens[-1]
    order = list(range(1, n)) + [0]  # not sorted: the encoder must sort and restore
    return torch.tensor([lens[i] for i in order])


def _check_construct(ctx: _Context) -> str:
    if not (isinstance(ctx.cell_cls, type) and issubclass(ctx.cell_cls, Cell)):
        raise _Failed(f"{ctx.cell_cls!r} is not a seqkit.Cell subclass")
    cell = ctx.cell()
    if (cell.input_size, cell.hidden_size) != (ctx.input_size, ctx.hidden_size):
        raise _Failed(f"input_size/hidden_size are {cell.input_size}/{cell.hidden_size}, expected "
                      f"{ctx.input_size}/{ctx.hidden_size} (call super().__init__(input_size, hidden_size))")
    return f"{sum(p.numel() for p in cell.parameters())} parameters"


def _check_shapes(ctx: _Context) -> str:
    cell, n, hsz = ctx.cell(), ctx.batch_size, ctx.hidden_size
    for dtype in (torch.float64, torch.float32):
        cell = cell.to(dtype)
        state = cell.initial_state(n, device=torch.device("cpu"), dtype=dtype)
        if not isinstance(state, tuple) or not state:
            raise _Failed(f"initial_state must return a non-empty tuple, got {type(state).__name__}")
        for i, s in enumerate(state):
            if not isinstance(s, Tensor) or s.shape != (n, hsz) or s.dtype != dtype:
                got = f"{tuple(s.shape)} {s.dtype}" if isinstance(s, Tensor) else type(s).__name__
                raise _Failed(f"initial_state[{i}] is {got}, expected ({n}, {hsz}) {dtype}")
        x = torch.randn(n, ctx.input_size, dtype=dtype)
        result = cell(x, state)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise _Failed("forward must return (h, new_state)")
        h, new = result
        if not isinstance(h, Tensor) or h.shape != (n, hsz) or h.dtype != dtype:
            got = f"{tuple(h.shape)} {h.dtype}" if isinstance(h, Tensor) else type(h).__name__
            raise _Failed(f"forward's h is {got}, expected ({n}, {hsz}) {dtype}")
        if not isinstance(new, tuple) or len(new) != len(state):
            raise _Failed(f"forward's new_state must be a tuple of {len(state)} tensors like the state")
        for i, (a, b) in enumerate(zip(new, state)):
            if not isinstance(a, Tensor) or a.shape != b.shape or a.dtype != b.dtype:
                got = f"{tuple(a.shape)} {a.dtype}" if isinstance(a, Tensor) else type(a).__name__
                raise _Failed(f"new_state[{i}] is {got}, expected {tuple(b.shape)} {b.dtype}")
    return f"state: {len(state)} tensor(s) of (N, H)"


def _check_hoisting(ctx: _Context) -> str:
    cell = ctx.cell()
    hoists, recurrent = cell.hoists_input(), cell.declares_recurrence()
    if not hoists and not recurrent:
        if type(cell).forward_projected is not Cell.forward_projected:
            raise _Failed("forward_projected is defined but project_input is not; define both")
        if cell.recurrent_weight is not None or type(cell).gates is not Cell.gates:
            raise _Failed("declare both recurrent_weight and gates, or neither")
        raise _Skipped("the cell declares neither project_input nor gates (slowest engine)")
    n, length = ctx.batch_size, 3
    state = _random_state(cell, n)
    x = _inputs(ctx, n, length)[:, 0]
    h_ref, s_ref = cell(x, state)
    done = []
    if hoists:
        xs = _inputs(ctx, n, length).transpose(0, 1)  # (L, N, I)
        xp_all = cell.project_input(xs)
        for t in range(length):
            _close(xp_all[t], cell.project_input(xs[t]), f"project_input on (L, N, I), step {t}")
        h, s = cell.forward_projected(cell.project_input(x), state)
        _close(h, h_ref, "forward_projected(project_input(x)) vs forward: h")
        for i, (a, b) in enumerate(zip(s, s_ref)):
            _close(a, b, f"forward_projected(project_input(x)) vs forward: state[{i}]")
        done.append("forward == forward_projected(project_input)")
    elif type(cell).forward_projected is not Cell.forward_projected:
        raise _Failed("forward_projected is defined but project_input is not; define both")
    if recurrent or cell.recurrent_weight is not None or type(cell).gates is not Cell.gates:
        if not recurrent:
            raise _Failed("declare both recurrent_weight and gates, or neither")
        weight, bias = cell.recurrent_parameters()
        xp = cell.project_input(x) if hoists else x
        g = xp.size(-1)
        if not isinstance(weight, Tensor) or weight.shape != (g, ctx.hidden_size):
            shape = tuple(weight.shape) if isinstance(weight, Tensor) else weight
            raise _Failed(f"recurrent_weight {cell.recurrent_weight!r} is {shape}, expected ({g}, {ctx.hidden_size})")
        if bias is not None and bias.shape != (g,):
            raise _Failed(f"recurrent_bias {cell.recurrent_bias!r} is {tuple(bias.shape)}, expected ({g},)")
        h, s = cell.gates(xp, F.linear(state[0], weight, bias), state)
        _close(h, h_ref, "gates(xp, linear(state[0], W, b), state) vs forward: h")
        for i, (a, b) in enumerate(zip(s, s_ref)):
            _close(a, b, f"gates(...) vs forward: state[{i}]")
        done.append("forward == gates(xp, recurrent projection)")
    return "; ".join(done)


def _random_state(cell: Cell, n: int) -> tuple[Tensor, ...]:
    gen = torch.Generator().manual_seed(7)
    return tuple(torch.randn(s.shape, generator=gen, dtype=_DTYPE) * 0.5
                 for s in cell.initial_state(n, dtype=_DTYPE))


def _check_engine(ctx: _Context) -> str:
    cell = ctx.cell()
    if not cell.declares_recurrence():
        raise _Skipped("the cell declares no gates: the engine runs its forward step by step")
    n, length = ctx.batch_size, ctx.length
    lens = sorted(_lengths(n, length).tolist(), reverse=True)
    x = _inputs(ctx, n, length).transpose(0, 1).contiguous()  # (L, N, I)
    state = _random_state(cell, n)
    gen = torch.Generator().manual_seed(3)
    grad_out = torch.randn(length, n, ctx.hidden_size, generator=gen, dtype=_DTYPE)
    grad_state = [torch.randn(s.shape, generator=gen, dtype=_DTYPE) for s in state]
    results = []
    for run in (_recurrence, _autograd_loop):
        xr = x.clone().requires_grad_()
        sr = tuple(s.clone().requires_grad_() for s in state)
        cell.zero_grad(set_to_none=True)
        out, final = run(cell, xr, lens, sr)
        loss = (out * grad_out).sum() + sum((f * g).sum() for f, g in zip(final, grad_state))
        loss.backward()
        grads = {"input": xr.grad, **{f"state[{i}]": s.grad for i, s in enumerate(sr)}}
        grads.update({name: p.grad for name, p in cell.named_parameters()})
        results.append((out, final, grads))
    (out, final, grads), (ref_out, ref_final, ref_grads) = results
    _close(out, ref_out, "fast engine vs step loop: outputs")
    for i, (a, b) in enumerate(zip(final, ref_final)):
        _close(a, b, f"fast engine vs step loop: final state[{i}]")
    for name, ref in ref_grads.items():
        got = grads[name]
        if got is not None or ref is not None:  # None: no gradient, the same as zeros
            some = got if got is not None else ref
            assert some is not None
            _close(got if got is not None else torch.zeros_like(some),
                   ref if ref is not None else torch.zeros_like(some),
                   f"fast engine vs step loop: gradient of {name}")
    return f"outputs, states and {len(ref_grads)} gradients agree on lengths {lens}"


def _check_padding(ctx: _Context) -> str:
    n, length = ctx.batch_size, ctx.length + 2  # two steps of padding after the longest
    x = _inputs(ctx, n, length)
    lengths = _lengths(n, ctx.length)
    for engine in ctx.engines():
        enc = ctx.encoder(num_layers=2, bidirectional=True, engine=engine)
        with torch.no_grad():
            out, state = enc(x, lengths)
            for i, k in enumerate(lengths.tolist()):
                where = f"[{engine} engine] sequence {i} (length {k})"
                if k < length and bool(out[i, k:].ne(0).any()):
                    raise _Failed(f"{where}: output at padded positions is not 0")
                alone, alone_state = enc(x[i: i + 1, :k], torch.tensor([k]))
                _close(out[i: i + 1, :k], alone, f"{where}: output in the batch vs alone")
                for j, (s, a) in enumerate(zip(state, alone_state)):
                    _close(s[:, i: i + 1], a, f"{where}: final state[{j}] in the batch vs alone")
    return f"lengths {lengths.tolist()} padded to {length}, both directions, 2 layers"


def _check_state(ctx: _Context) -> str:
    n, length = ctx.batch_size, ctx.length
    x = _inputs(ctx, n, length)
    split = length // 2
    for engine in ctx.engines():
        enc = ctx.encoder(num_layers=2, engine=engine)
        with torch.no_grad():
            out, state = enc(x)
            out1, state1 = enc(x[:, :split])
            out2, state2 = enc(x[:, split:], state=state1)
        _close(torch.cat([out1, out2], dim=1), out, f"[{engine} engine] output of two calls vs one")
        for j, (a, b) in enumerate(zip(state2, state)):
            _close(a, b, f"[{engine} engine] final state[{j}] of two calls vs one")
    return f"{length} steps as {split} + {length - split}"


def _check_gradcheck(ctx: _Context) -> str:
    input_size, hidden = 2, 3
    x = _inputs(ctx, 2, 3, input_size).requires_grad_()
    lengths = torch.tensor([3, 2])
    count = 0
    # forward with a carried initial state; bidirectional (which takes no state) from zeros
    for directions in ("forward", "bidirectional"):
        enc = ctx.encoder(input_size, hidden, num_layers=1, directions=directions, engine=ctx.engines()[-1])
        names = [name for name, _ in enc.named_parameters()]
        params = tuple(p.detach().clone().requires_grad_() for p in enc.parameters())
        state0: tuple[Tensor, ...] = ()
        if directions == "forward":
            state0 = tuple(s.unsqueeze(0).contiguous().requires_grad_()
                           for s in _random_state(enc.cells["l0"], 2))  # type: ignore[arg-type]

        def run(x, *rest, enc=enc, names=names, k=len(state0)):
            state, ps = rest[:k], rest[k:]
            out, final = torch.func.functional_call(enc, dict(zip(names, ps)), (x, lengths, state or None))
            return (out, *final)

        try:
            torch.autograd.gradcheck(run, (x, *state0, *params), eps=1e-6, atol=1e-5, rtol=1e-3)
        except GradcheckError as exc:
            first = str(exc).strip().splitlines()[0]
            raise _Failed(f"analytical and numerical gradients differ ({directions}): {first}") from None
        count += sum(p.numel() for p in params)
    return f"input, initial state and {count} parameter values (forward and bidirectional, lengths [3, 2])"


def _check_determinism(ctx: _Context) -> str:
    a, b = ctx.cell(), ctx.cell()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        if not torch.equal(p, q):
            raise _Failed(f"parameter {name} differs between two cells built under the same seed")
    enc = ctx.encoder(num_layers=1, bidirectional=True)
    x = _inputs(ctx, ctx.batch_size, ctx.length)
    lengths = _lengths(ctx.batch_size, ctx.length)
    with torch.no_grad():
        first = enc(x, lengths)[0]
        second = enc(x, lengths)[0]
    if not torch.equal(first, second):
        raise _Failed("two identical calls (eval mode) give different outputs")
    return "same seed, same parameters; same call, same output"


def _check_export(ctx: _Context) -> str:
    cell = ctx.cell()
    n = 2
    state = cell.initial_state(n, dtype=_DTYPE)
    x = torch.randn(n, ctx.input_size, dtype=_DTYPE)
    results, problems = [], []
    attempts = (("torch.jit.script", lambda: torch.jit.script(cell)),
                ("torch.export", lambda: torch.export.export(_StepModule(cell), (x, state))))
    for label, attempt in attempts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                attempt()
            results.append(label)
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [""])[0][:80]
            problems.append(f"{label}: {type(exc).__name__} {reason}".rstrip())
    if problems:
        raise _Failed("; ".join(problems) + (f" (works: {', '.join(results)})" if results else ""))
    return ", ".join(results)


class _StepModule(nn.Module):
    def __init__(self, cell: Cell) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x: Tensor, state: tuple[Tensor, ...]):
        return self.cell(x, state)


_CHECK_FUNCTIONS: dict[str, Callable[[_Context], str]] = {
    "construct": _check_construct,
    "shapes": _check_shapes,
    "hoisting": _check_hoisting,
    "engine": _check_engine,
    "padding": _check_padding,
    "state": _check_state,
    "gradcheck": _check_gradcheck,
    "determinism": _check_determinism,
    "export": _check_export,
}
assert set(_CHECK_FUNCTIONS) == set(CHECKS)
