"""The generic recurrence engine: any ``seqkit.Cell`` over time-major, length-sorted batches.

Shape legend: L length, N batch, H hidden, G width of the recurrent projection.
``seqkit.Encoder`` calls it for cells without a fused kernel (and for every cell with
``engine="generic"``).  Lengths are a descending list, or None when every sequence fills all
L steps (no Python work per sequence then).  A direction may run with a tensor in place of its
cell's recurrent weight (the encoder's weight drop); the parameter itself is never touched.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import threading
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.nn.utils.rnn import pad_sequence

from .cells import Cell, State

__all__ = ["autocast_dtype", "generic_layer"]

Lengths = Optional[list[int]]  # sorted descending; None: all sequences are full length


def _segments(lens: Lengths, length: int, n: int) -> list[tuple[int, int, int]]:
    """(start, stop, rows) spans of time over which the first ``rows`` sequences are active.

    ``lens`` is sorted in descending order; one span per distinct length, so a batch
    bucketed by length needs few of them.
    """
    if lens is None:
        return [(0, length, n)] if length and n else []
    spans, start = [], 0
    for stop in sorted(set(lens)):
        if stop > start:
            rows = sum(1 for v in lens if v >= stop)
            spans.append((start, stop, rows))
            start = stop
    return spans


def _merge_state(new: State, old: State, rows: int) -> State:
    if rows == old[0].size(0):
        return tuple(new)
    return tuple(torch.cat([a, b[rows:]]) for a, b in zip(new, old))


def _assemble(pieces: list[Tensor], n: int, length: int) -> Tensor:
    """Pad (span, rows, H) pieces to N rows and join them along time into (L, N, H)."""
    out = torch.cat([F.pad(p, (0, 0, 0, n - p.size(1))) for p in pieces], dim=0)
    if out.size(0) < length:  # trailing padding that no sequence reaches
        out = F.pad(out, (0, 0, 0, 0, 0, length - out.size(0)))
    return out


def _assemble_or_empty(pieces: list[Tensor], x: Tensor, cell: Cell) -> Tensor:
    if not pieces:
        return x.new_zeros(x.size(0), x.size(1), cell.hidden_size)
    return _assemble(pieces, x.size(1), x.size(0))


def autocast_dtype(x: Tensor) -> Optional[torch.dtype]:
    """The lower precision dtype when autocast is on for ``x``'s device, else None."""
    kind = x.device.type
    if kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return None


# The generic engine.  Three speeds, picked by what the cell declares (see ``seqkit.Cell``):
# a plain ``forward`` runs step by step under autograd; ``project_input`` hoists the input
# projection of all steps into one matmul; ``recurrent_weight`` + ``gates`` run a direction's
# whole recurrence as one autograd node (``_Recurrence``; ``_PairRecurrence`` for both
# directions of a layer in two threads) whose steps never compute a weight gradient: the
# recurrent weight's gradient of all steps is one matmul at the end.


def generic_layer(cells: list[Cell], xs: list[Tensor], lens: Lengths, states: list[State],
                  weights: Optional[Sequence[Optional[Tensor]]] = None) -> list[tuple[Tensor, State]]:
    """The directions of one layer: each cell over its time-major input, columns sorted by length.

    ``weights[i]``, when not None, is a (G, H) tensor that ``cells[i]`` uses in place of its
    ``recurrent_weight`` parameter (e.g. a dropped copy of it); gradients flow into that tensor.
    """
    ws = list(weights) if weights is not None else [None] * len(cells)
    if len(cells) == 2 and _use_threads(xs[0]) and all(c.declares_recurrence() for c in cells):
        return _recurrence_pair(cells, xs, lens, states, ws)
    return [_generic_direction(c, x, lens, s, w) for c, x, s, w in zip(cells, xs, states, ws)]


def _generic_direction(cell: Cell, x: Tensor, lens: Lengths, state: State,
                       weight: Optional[Tensor] = None) -> tuple[Tensor, State]:
    """One direction of any cell over time-major ``x`` (L, N, I), columns sorted by length."""
    if cell.declares_recurrence():
        return _recurrence(cell, x, lens, state, weight)
    return _autograd_loop(cell, x, lens, state, weight)


def _autograd_loop(cell: Cell, x: Tensor, lens: Lengths, state: State,
                   weight: Optional[Tensor] = None) -> tuple[Tensor, State]:
    if weight is not None:
        with _recurrent_weight_as(cell, weight):
            return _autograd_loop(cell, x, lens, state)
    hoist = cell.hoists_input()
    xs = cell.project_input(x) if hoist else x  # (L, N, P)
    step = cell.forward_projected if hoist else cell.forward
    pieces = []
    for start, stop, rows in _segments(lens, x.size(0), x.size(1)):
        carried = tuple(s[:rows] for s in state)
        outs = []
        # unbind, not xs[t]: each select's backward would materialise a full-size zero tensor
        for xt in xs[start:stop, :rows].unbind(0):
            h, carried = step(xt, carried)
            outs.append(h)
        state = _merge_state(carried, state, rows)
        pieces.append(torch.stack(outs))  # (span, rows, H)
    return _assemble_or_empty(pieces, x, cell), state


@contextlib.contextmanager
def _recurrent_weight_as(cell: Cell, weight: Optional[Tensor]) -> Iterator[None]:
    """The cell reads ``weight`` as its recurrent weight inside the block.

    For cells whose own ``forward`` reads the parameter (no ``gates``): the module's entry is
    swapped for the tensor and restored, the parameter's values are never written.
    """
    if weight is None:
        yield
        return
    name = cell.recurrent_weight
    if name is None or name not in cell._parameters:
        raise ValueError(f"{type(cell).__name__} has no recurrent_weight parameter to replace")
    param = cell._parameters[name]
    cell._parameters[name] = weight  # type: ignore[assignment]
    try:
        yield
    finally:
        cell._parameters[name] = param


def _active_rows(lens: list[int]) -> list[int]:
    """Sequences still running at each step (``lens`` sorted descending), up to the longest."""
    rows: list[int] = []
    active = len(lens)
    for t in range(max(lens, default=0)):
        while active and lens[active - 1] <= t:
            active -= 1
        rows.append(active)
    return rows


def _recurrence_inputs(cell: Cell, x: Tensor, lens: Lengths, state: State,
                       weight: Optional[Tensor] = None):
    xp = cell.project_input(x) if cell.hoists_input() else x  # (L, N, G)
    own, bias = cell.recurrent_parameters()
    # an override (weight drop) goes where the parameter would: its gradient is the one matmul
    weight = own if weight is None else weight
    params = tuple(p for p in cell.parameters() if p.requires_grad)
    rows = _active_rows(lens) if lens is not None else [x.size(1)] * x.size(0)
    run = _RecurrenceRun(cell, rows, len(state), autocast_dtype(x))
    return run, (xp, weight, bias, *state, *params)


def _needs_grad(inputs: tuple) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)


def _recurrence(cell: Cell, x: Tensor, lens: Lengths, state: State,
                weight: Optional[Tensor] = None) -> tuple[Tensor, State]:
    run, inputs = _recurrence_inputs(cell, x, lens, state, weight)
    if _needs_grad(inputs):
        out, *final = _Recurrence.apply(run, *inputs)
        return out, tuple(final)
    return run.forward(*inputs[:3], inputs[3: 3 + run.num_states], record=False)


def _recurrence_pair(cells: list[Cell], xs: list[Tensor], lens: Lengths, states: list[State],
                     weights: list[Optional[Tensor]]) -> list[tuple[Tensor, State]]:
    """Both directions of a layer at once, each in its own thread with one intra-op thread."""
    runs, groups = zip(*(_recurrence_inputs(c, x, lens, s, w)
                         for c, x, s, w in zip(cells, xs, states, weights)))
    if _needs_grad(groups[0] + groups[1]):
        flat = _PairRecurrence.apply(runs, len(groups[0]), *groups[0], *groups[1])
        k0 = 1 + runs[0].num_states
        parts = (flat[:k0], flat[k0:])
        return [(p[0], tuple(p[1:])) for p in parts]
    tasks = [functools.partial(run.forward, *g[:3], g[3: 3 + run.num_states], record=False)
             for run, g in zip(runs, groups)]
    return _in_parallel(tasks)


class _RecurrenceRun:
    """One direction's recurrence: the forward loop, and what backward needs from it.

    With ``record`` the loop runs under autograd from detached leaves, with the recurrent
    weight detached too: each step's matmul then gets only its input gradient in backward
    (no per-step weight gradient), and the weight gradient of all steps is one matmul of the
    captured ``hp`` gradients with the saved matmul inputs.
    """

    def __init__(self, cell: Cell, rows: list[int], num_states: int, dtype: Optional[torch.dtype]):
        self.cell = cell
        self.rows = rows  # active sequences at each step, non-increasing
        self.num_states = num_states
        self.dtype = dtype  # the recurrent matmul's dtype under autocast, else None
        self.graph: Optional[tuple] = None  # what forward recorded for backward
        self.xp_like: Optional[Tensor] = None

    def forward(self, xp: Tensor, weight: Tensor, bias: Optional[Tensor], state: State,
                record: bool) -> tuple[Tensor, State]:
        cell, rows = self.cell, self.rows
        length, n = xp.shape[:2]
        weight = weight.detach()
        bias = bias.detach() if bias is not None else None
        if self.dtype is not None:
            weight = weight.to(self.dtype)
            bias = bias.to(self.dtype) if bias is not None else None
        wt = weight.t()  # (H, G), a view: BLAS reads it transposed in place
        if record:
            state = tuple(s.detach().requires_grad_() for s in state)
            leaves = state
        hs: list[Tensor] = []
        h_in: list[Tensor] = []
        hps: list[Tensor] = []
        xts: list[Tensor] = []
        finished: list[State] = []  # final states of sequences that ended, latest first
        with torch.enable_grad() if record else contextlib.nullcontext():
            for xt, r in zip(xp.detach().unbind(0), rows):
                if r < state[0].size(0):
                    finished.insert(0, tuple(s[r:] for s in state))
                    state = tuple(s[:r] for s in state)
                if r < n:
                    xt = xt[:r]
                x_h = state[0] if self.dtype is None else state[0].to(self.dtype)
                hp = torch.mm(x_h, wt) if bias is None else torch.addmm(bias, x_h, wt)  # (r, G)
                if record:
                    # each step's input is its own leaf: slicing one big leaf per step would
                    # make every slice's backward materialise a full-size zero tensor
                    xt = xt.requires_grad_()
                    xts.append(xt)
                    h_in.append(x_h)
                    hps.append(hp)
                h, state = cell.gates(xt, hp, state)
                hs.append(h)
            final = tuple(torch.cat(parts) for parts in zip(state, *finished)) if finished else state
        with torch.no_grad():
            out = _pad_steps(hs, length, n) if hs else xp.new_zeros(length, n, cell.hidden_size)
        if record:
            self.graph = (leaves, xts, hs, h_in, hps, final)
            self.xp_like = xp.new_zeros(()).expand(xp.shape)  # shape, dtype and device, no memory
            final = tuple(f.detach() for f in final)
        return out, final

    def backward(self, dout: Tensor, dfinal: tuple[Tensor, ...], weight: Tensor,
                 params: tuple[Tensor, ...]):
        assert self.graph is not None, "backward before a recording forward"
        leaves, xts, hs, h_in, hps, final = self.graph
        k, steps = self.num_states, len(hs)
        outputs, grads = [], []
        for t, h in enumerate(hs):
            outputs.append(h)
            grads.append(dout[t, : h.size(0)])
        for f, g in zip(final, dfinal):
            if f.requires_grad:
                outputs.append(f)
                grads.append(g)
        inputs = (*leaves, *params, *hps, *xts)
        # retain_graph: gradcheck and retain_graph=True callers run backward again
        res = torch.autograd.grad(outputs, inputs, grads, allow_unused=True, retain_graph=True)
        dstate = [g if g is not None else torch.zeros_like(s) for g, s in zip(res[:k], leaves)]
        dparams = list(res[k: k + len(params)])
        dhp = _zeros_for_none(res[k + len(params): k + len(params) + steps], hps)
        dxt = _zeros_for_none(res[k + len(params) + steps:], xts)
        length, n = dout.shape[:2]
        w = weight if self.dtype is None else weight.to(self.dtype)
        if steps:
            dxp = _pad_steps(dxt, length, n)  # (L, N, G)
            g_all = torch.cat(dhp)  # (R, G), R = active sequence-steps
            h_all = torch.cat([x.detach() for x in h_in])  # (R, H)
            dw = torch.mm(g_all.t().to(w.dtype), h_all.to(w.dtype))  # (G, H): all steps at once
            db = g_all.sum(0)
        else:
            assert self.xp_like is not None
            dxp = torch.zeros_like(self.xp_like)
            dw, db = torch.zeros_like(w), w.new_zeros(w.size(0))
        return dxp, dw, db, dstate, dparams


def _zeros_for_none(grads, like: list[Tensor]) -> list[Tensor]:
    return [g if g is not None else torch.zeros_like(t) for g, t in zip(grads, like)]


def _pad_steps(hs: list[Tensor], length: int, n: int) -> Tensor:
    """Per-step (r_t, H) outputs, r_t non-increasing, as (L, N, H) with zeros at padding."""
    out = pad_sequence(hs, batch_first=True)  # (T, r_0, H)
    if out.shape[:2] == (length, n):
        return out
    return F.pad(out, (0, 0, 0, n - out.size(1), 0, length - out.size(0)))


class _Recurrence(torch.autograd.Function):
    """The recurrence of one direction as one autograd node (see ``_RecurrenceRun``)."""

    @staticmethod
    def forward(ctx, run: _RecurrenceRun, xp, weight, bias, *rest):  # type: ignore[override]
        state, params = rest[: run.num_states], rest[run.num_states:]
        ctx.run, ctx.params, ctx.has_bias = run, params, bias is not None
        ctx.save_for_backward(weight)
        out, final = run.forward(xp, weight, bias, state, record=True)
        return (out, *final)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, *dfinal):  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        dxp, dw, db, dstate, dparams = ctx.run.backward(dout, dfinal, weight, ctx.params)
        db = db.to(weight.dtype) if ctx.has_bias else None
        return (None, dxp, dw.to(weight.dtype), db, *dstate, *dparams)


class _PairRecurrence(torch.autograd.Function):
    """Two directions' recurrences as one autograd node, run in two threads both ways."""

    @staticmethod
    def forward(ctx, runs, split: int, *flat):  # type: ignore[override]
        groups = (flat[:split], flat[split:])
        ctx.runs, ctx.split = runs, split
        ctx.has_bias = [g[2] is not None for g in groups]
        ctx.params = [g[3 + run.num_states:] for run, g in zip(runs, groups)]
        ctx.save_for_backward(groups[0][1], groups[1][1])
        tasks = [functools.partial(run.forward, *g[:3], g[3: 3 + run.num_states], record=True)
                 for run, g in zip(runs, groups)]
        results = _in_parallel(tasks)
        return tuple(t for out, final in results for t in (out, *final))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):  # type: ignore[override]
        w0, w1 = ctx.saved_tensors
        k0 = 1 + ctx.runs[0].num_states
        parts = (grads[:k0], grads[k0:])
        tasks = [functools.partial(run.backward, g[0], g[1:], w, params)
                 for run, g, w, params in zip(ctx.runs, parts, (w0, w1), ctx.params)]
        out: list = [None, None]
        for (dxp, dw, db, dstate, dparams), w, has_bias in zip(_in_parallel(tasks), (w0, w1), ctx.has_bias):
            out += [dxp, dw.to(w.dtype), db.to(w.dtype) if has_bias else None, *dstate, *dparams]
        return tuple(out)


# The worker thread that runs a layer's second direction, and the process that started it
# (a forked child, e.g. a DataLoader worker, must start its own).
_worker: Optional[tuple[int, concurrent.futures.ThreadPoolExecutor]] = None
_in_worker = threading.local()


def _use_threads(x: Tensor) -> bool:
    """Run a layer's two directions in two threads: in training (grad enabled) on CPU with at
    least two intra-op threads. Never at inference: the trick sets torch's intra-op thread
    count while it runs, which an app serving requests from several threads must not see.

    The per-step work of one direction is too small to keep two cores busy (a 32 x 256 by
    256 x 1024 matmul scales poorly, and the pointwise gates are dispatch-bound), so two
    single-threaded directions side by side beat two threads taking turns.
    ``SEQKIT_PARALLEL_DIRECTIONS=0`` turns this off.
    """
    return (x.device.type == "cpu" and torch.is_grad_enabled() and torch.get_num_threads() >= 2
            and not getattr(_in_worker, "active", False)
            and os.environ.get("SEQKIT_PARALLEL_DIRECTIONS", "1") != "0")


def _in_parallel(tasks: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run ``tasks[1]`` in the worker thread and ``tasks[0]`` here, one intra-op thread each.

    Grad mode, inference mode and autocast are thread-local, so the worker copies them.
    """
    global _worker
    if _worker is None or _worker[0] != os.getpid():
        _worker = (os.getpid(), concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="seqkit-direction"))
    threads = torch.get_num_threads()
    modes = (torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
             torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
    future = _worker[1].submit(_with_modes, tasks[1], modes)
    torch.set_num_threads(1)
    try:
        first = tasks[0]()
    finally:
        concurrent.futures.wait([future])
        torch.set_num_threads(threads)
    return [first, future.result()]


def _with_modes(task: Callable[[], Any], modes: tuple) -> Any:
    grad, inference, autocast, dtype = modes
    torch.set_num_threads(1)
    _in_worker.active = True  # a cell that runs an encoder inside must not wait on this thread
    try:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad), \
                torch.autocast("cpu", dtype=dtype, enabled=autocast):
            return task()
    finally:
        _in_worker.active = False
