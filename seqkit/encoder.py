"""The shared stacked recurrent encoder: one or two directions, exact variable lengths.

Shape legend: N batch, L length, I input features, D directions (1 or 2), H hidden.
"""

from __future__ import annotations

import functools
import warnings
from typing import Literal, Optional, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import registry
from .cells import Cell, State
from .engine import autocast_dtype, generic_layer
from .errors import SeqkitError
from .export_ops import call_kernel, frozen_padding
from .regularize import locked_dropout as _locked_dropout

__all__ = ["Encoder"]

_FUSED_KERNELS = {"lstm": torch.lstm, "gru": torch.gru}
Directions = Literal["forward", "bidirectional", "split"]
_DIRECTIONS = ("forward", "bidirectional", "split")
Weights = dict[str, Tensor]  # cell key ("l0_reverse") -> the tensor it uses as recurrent weight
_PACK_BELOW = 0.6  # at inference, run packed when real steps are under this share of the padded batch


class Encoder(nn.Module):
    """A stack of ``num_layers`` recurrent layers, each one cell per direction.

    Padding never changes a real position's output: the forward direction stops at each
    sequence's own length and the reverse direction starts at each sequence's own last
    element.  The built-in ``lstm`` and ``gru`` cells run on torch's fused kernels (oneDNN on
    CPU, cuDNN on GPU); any other :class:`seqkit.Cell` runs through the generic engine. In eval
    mode a batch that is mostly padding runs packed, computing no padded step; otherwise (and
    always in training) every row runs to the longest with its padded steps frozen (same
    results, up to rounding).

    Directions:
        ``"forward"``: one direction (D = 1).
        ``"bidirectional"``: as ``nn.LSTM(bidirectional=True)``: each layer after the first
        reads both directions of the layer below (D * H features), so above layer 0 every
        position has seen the whole sequence.
        ``"split"``: two independent stacks, as ELMo: layer l's forward cell reads only layer
        l-1's forward output (H features) and the reverse cell only the reverse output; the
        forward half of the output never sees later steps, the reverse half never earlier ones.

    Args:
        input_size: I, features of each input step.
        hidden_size: H, features of each direction's output.
        num_layers: stacked layers.
        cell: a registered cell name (``"lstm"``, ``"gru"``, a plugin's) or a ``Cell`` subclass.
        bidirectional: ``True`` is ``directions="bidirectional"`` (kept for torch's spelling).
        dropout: dropout on each layer's output except the last.
        batch_first: inputs and outputs are (N, L, ...) instead of (L, N, ...).
        engine: ``"auto"`` (fused when the cell has a fused kernel), ``"fused"`` or ``"generic"``.
        directions: ``"forward"``, ``"bidirectional"`` or ``"split"`` (see above); None takes
            it from ``bidirectional``.  ``bidirectional=True`` with ``"forward"`` is an error.
        locked_dropout: ``dropout``, ``input_dropout`` and ``output_dropout`` draw one mask per
            sequence and feature, shared by all time steps (variational dropout).
        input_dropout: dropout on the encoder's input (N, L, I).
        output_dropout: dropout on the top layer's output (N, L, D * H).
        weight_drop: DropConnect on every cell's recurrent weight (``weight_hh``): each call
            in training draws one mask over the matrix (AWD-LSTM).  The cell must name its
            ``recurrent_weight``; the parameter itself is never modified.
        All dropouts act in training only.

    Inputs: ``x, lengths=None, state=None``
        x: (N, L, I) if ``batch_first`` else (L, N, I).
        lengths: (N,) integer lengths, each in [0, L]; None means all are L.
        state: initial state carried from an earlier call, a tuple of (num_layers, N, H)
            tensors (one per state tensor of the cell: ``(h, c)`` for LSTM, ``(h,)`` for GRU)
            on ``x``'s device; only for ``directions="forward"``.  None means the cell's zeros.

    Outputs: ``out, state``
        out: (N, L, D * H) (or (L, N, D * H)), forward half first; zeros at padded positions.
        state: final state of each layer and direction at each sequence's own end, a tuple of
            (num_layers * D, N, H) tensors ordered layer 0 forward, layer 0 reverse, layer 1 ...

    Attributes:
        inference_dtype: None (the default: eval mode computes in the weights' dtype) or a
            lower precision for the recurrences in eval mode, ``torch.bfloat16`` (what
            ``seqkit.load(run, precision="bf16")`` sets): inputs, states and weights are cast
            for the fused kernels (the weights once, not on every call) and the outputs come
            back in the input's dtype. Fast on CPUs with native bf16 (AVX512-BF16, AMX) and on
            GPUs. Training ignores it (``train.precision`` is the training setting).

    Examples::

        >>> enc = seqkit.Encoder(80, 256, num_layers=3, cell="lstm", bidirectional=True,
        ...                      dropout=0.1, batch_first=True)
        >>> out, state = enc(torch.randn(4, 50, 80), torch.tensor([50, 43, 20, 7]))
        >>> out.shape
        torch.Size([4, 50, 512])
        >>> lm = seqkit.Encoder(400, 1150, num_layers=3, dropout=0.25, locked_dropout=True,
        ...                     weight_drop=0.5, batch_first=True)
        >>> out, state = lm(torch.randn(4, 70, 400))
        >>> out, state = lm(torch.randn(4, 70, 400), state=state)  # the next 70 steps
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        cell: Union[str, type[Cell]] = "lstm",
        bidirectional: bool = False,
        dropout: float = 0.0,
        batch_first: bool = False,
        engine: Literal["auto", "fused", "generic"] = "auto",
        *,
        directions: Optional[Directions] = None,
        locked_dropout: bool = False,
        input_dropout: float = 0.0,
        output_dropout: float = 0.0,
        weight_drop: float = 0.0,
    ) -> None:
        super().__init__()
        cell_cls = registry.cells.get(cell) if isinstance(cell, str) else cell
        if not (isinstance(cell_cls, type) and issubclass(cell_cls, Cell)):
            raise SeqkitError(f"cell {cell!r} is not a seqkit.Cell subclass")
        if num_layers < 1 or hidden_size < 1 or input_size < 1:
            raise SeqkitError("input_size, hidden_size and num_layers must be positive")
        for name, p in (("dropout", dropout), ("input_dropout", input_dropout),
                        ("output_dropout", output_dropout), ("weight_drop", weight_drop)):
            if not 0.0 <= p < 1.0:
                raise SeqkitError(f"{name} must be in [0, 1), got {p}")
        if engine == "fused" and cell_cls.fused not in _FUSED_KERNELS:
            raise SeqkitError(f"cell {cell_cls.__name__} has no fused kernel; use engine='auto'")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.directions: str = _resolve_directions(directions, bidirectional)
        self.bidirectional = self.directions != "forward"
        self.num_directions = 2 if self.bidirectional else 1
        self.dropout = float(dropout)
        self.locked_dropout = bool(locked_dropout)
        self.input_dropout = float(input_dropout)
        self.output_dropout = float(output_dropout)
        self.weight_drop = float(weight_drop)
        self.batch_first = batch_first
        self.inference_dtype: Optional[torch.dtype] = None
        self.cell_name = cell if isinstance(cell, str) else cell_cls.__name__
        entry = registry.cells.entries().get(cell) if isinstance(cell, str) else None
        # the plugin that registered a third-party cell (its errors are reported naming it)
        self._cell_plugin = entry.plugin if entry and not entry.plugin.startswith("seqkit.") else None
        self.fused = engine != "generic" and cell_cls.fused in _FUSED_KERNELS
        self.cells = nn.ModuleDict()
        above = hidden_size * (self.num_directions if self.directions == "bidirectional" else 1)
        for layer in range(num_layers):
            for suffix in self._suffixes():
                self.cells[f"l{layer}{suffix}"] = cell_cls(input_size if layer == 0 else above, hidden_size)
        first = self.cells["l0"]
        self._num_states = len(first.initial_state(1))
        name = cell_cls.recurrent_weight
        if weight_drop and not (name and isinstance(getattr(first, name, None), nn.Parameter)):
            raise SeqkitError(f"weight_drop needs a cell with a recurrent_weight parameter; "
                              f"cell {cell_cls.__name__} declares none (see docs/cells.md)")

    @property
    def output_size(self) -> int:
        """D * H, the features of each output step."""
        return self.hidden_size * self.num_directions

    def _suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def extra_repr(self) -> str:
        extra = "".join(f", {name}={getattr(self, name)}" for name in
                        ("locked_dropout", "input_dropout", "output_dropout", "weight_drop")
                        if getattr(self, name))
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"cell={self.cell_name!r}, directions={self.directions!r}, dropout={self.dropout}{extra}, "
            f"batch_first={self.batch_first}, engine={'fused' if self.fused else 'generic'}"
        )

    def _generic(self, layer: int, cells, streams, lens, h0s, ws):
        """One layer on the generic engine. A plugin cell that fails, or returns outputs or states
        of the wrong width, is one error naming it instead of a shape error deep in torch."""
        plugin = self._cell_plugin
        if plugin is None:  # seqkit's own cells, or a class passed in directly
            return generic_layer(cells, streams, lens, h0s, ws)
        where = f"cell {self.cell_name!r} (plugin {plugin})"
        hint = "check it with seqkit.testing.check_cell (docs/cells.md)"
        try:
            results = generic_layer(cells, streams, lens, h0s, ws)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            text = " ".join(str(exc).split())[:200]
            raise SeqkitError(f"{where} failed in layer {layer}: {type(exc).__name__}: {text}; {hint}") from exc
        for out, final in results:
            widths = {out.shape[-1], *(t.shape[-1] for t in final)}
            if widths != {self.hidden_size}:
                raise SeqkitError(f"{where} returned outputs or states of width {sorted(widths)} in layer "
                                  f"{layer}, expected {self.hidden_size} (hidden_size); {hint}")
        return results

    def forward(
        self, x: Tensor, lengths: Optional[Tensor] = None, state: Optional[State] = None
    ) -> tuple[Tensor, State]:
        if x.dim() != 3 or x.size(-1) != self.input_size:
            raise SeqkitError(f"Encoder expects input (N, L, {self.input_size}), got {tuple(x.shape)}")
        if self.batch_first:
            x = x.transpose(0, 1)  # (L, N, I): the engines run time-major
        if state is not None:
            self._check_state(state, x)
        lower = self.inference_dtype
        if lower is not None and not self.training and lower != x.dtype and autocast_dtype(x) is None:
            with torch.autocast(x.device.type, dtype=lower):
                out, final = self._forward(x, lengths, state)
            return out.to(x.dtype), tuple(s.to(x.dtype) for s in final)
        return self._forward(x, lengths, state)

    def _forward(self, x: Tensor, lengths: Optional[Tensor], state: Optional[State]) -> tuple[Tensor, State]:
        weights = self._dropped_weights()
        x = self._drop(x, self.input_dropout)
        if lengths is None:  # the lean path (e.g. one generation step): no sorting, no host sync
            out, final = self._run(x, None, state, weights)
        else:
            out, final = self._run_lengths(x, lengths, state, weights)
        out = self._drop(out, self.output_dropout)
        if self.batch_first:
            out = out.transpose(0, 1)
        return out, final

    def _run_lengths(self, x: Tensor, lengths: Tensor, state: Optional[State],
                     weights: Weights) -> tuple[Tensor, State]:
        """Rows sorted by length for the paths that need it (packing, the generic engine), then
        put back in the caller's order; at inference the fused frozen path takes them as they
        come. Training keeps the sorted order: a 2-process run's losses matched one process's
        to 1e-5 that way, and drifted to 1.7e-5 with rows unsorted (oneDNN rounds by layout)."""
        length, n, _ = x.shape
        lens = self._check_lengths(lengths, n, length)
        order = sorted(range(n), key=lambda i: -lens[i])
        if order == list(range(n)):
            return self._run(x, lens, state, weights)
        ordered = [lens[i] for i in order]  # not all full: a batch of full rows is already in order
        if self.fused and not self.training and not self._packs(ordered, x, weights):
            return self._layers(x, lens, state, weights)  # the frozen fused path takes rows in any order
        perm = torch.tensor(order, device=x.device)
        x = x.index_select(1, perm)
        lens = ordered
        if state is not None:
            state = tuple(s.index_select(1, perm) for s in state)
        out, final = self._run(x, lens, state, weights)
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(n, device=perm.device)
        return out.index_select(1, inverse), tuple(s.index_select(1, inverse) for s in final)

    def _run(self, x: Tensor, lens: Optional[list[int]], state: Optional[State],
             weights: Weights) -> tuple[Tensor, State]:
        if lens is not None and (not lens or lens[-1] == x.size(0)):  # sorted: all full length
            lens = None
        locked_between = self.locked_dropout and self.dropout and self.training and self.num_layers > 1
        if lens is None and self.fused and not locked_between:
            return self._fused_stack(x, state, weights)
        if lens is not None and self._packs(lens, x, weights):
            return self._packed_stack(x, lens, state)
        return self._layers(x, lens, state, weights)

    def _packs(self, lens: list[int], x: Tensor, weights: Weights) -> bool:
        """Whether a batch of several lengths runs packed: inference only (eval mode: no dropout
        between layers, no dropped weights), fused cells, directions sharing one kernel call, no
        empty row (torch cannot pack one; the frozen path gives it its initial state), and real
        steps under 60% of the padded batch. torch's packed kernel does less work but does it
        less efficiently than the padded one (oneDNN on CPU): an MSRA-sized BiLSTM at 1 thread
        ran 0.63-0.77x the frozen path's time at 49-59% real steps, 1.04-1.25x at 85-96%
        (docs/results.md, 2026-12-05). Never in bf16 on CPU: oneDNN's padded bf16 kernel beat
        torch's packed loop even on mostly padded batches (MSRA at batch 32: 1,096 against 925
        sentences/s)."""
        length = x.size(0)
        return (self.fused and not self.training and not weights and self.directions != "split"
                and lens[-1] > 0 and sum(lens) < _PACK_BELOW * length * len(lens)
                and not (x.device.type == "cpu" and autocast_dtype(x) is not None)
                and not torch.jit.is_tracing())

    def _packed_stack(self, x: Tensor, lens: list[int], state: Optional[State]) -> tuple[Tensor, State]:
        """Rows sorted by length, none empty, at inference: torch's multi-layer kernel over the
        packed batch, which never computes a padded step. The frozen path (:meth:`_layers`) runs
        every row to the longest length; :meth:`_packs` sends here only batches where that would
        be mostly padding. Same outputs and final states, up to rounding."""
        first = self.cells["l0"]
        k, n = self.num_layers * self.num_directions, x.size(1)
        if state is None:
            zeros = first.initial_state(k * n, device=x.device, dtype=x.dtype)
            state = tuple(z.view(k, n, -1) for z in zeros)  # (layers*D, N, H)
        packed = pack_padded_sequence(x, torch.tensor(lens), enforce_sorted=True)
        params = [w for c in self.cells.values() for w in _fused_weights(c, None)]
        args = (True, self.num_layers, 0.0, False, self.bidirectional)
        data, final = _run_fused(first.fused, packed.data, state, params, args, packed.batch_sizes)
        out, _ = pad_packed_sequence(PackedSequence(data, packed.batch_sizes), total_length=x.size(0))
        return out, final

    @staticmethod
    def _check_lengths(lengths: Tensor, n: int, length: int) -> list[int]:
        lens = torch.as_tensor(lengths).tolist()
        if len(lens) != n:
            raise SeqkitError(f"lengths has {len(lens)} entries for a batch of {n}")
        if any(v < 0 or v > length for v in lens):
            raise SeqkitError(f"lengths must lie in [0, {length}], got {lens}")
        return [int(v) for v in lens]

    def _check_state(self, state: State, x: Tensor) -> None:
        """A wrong state would crash the fused kernel or give outputs of the wrong width."""
        if self.bidirectional:
            raise SeqkitError(
                f"carried state needs directions='forward'; this encoder's directions are "
                f"{self.directions!r}, whose reverse direction starts afresh at each sequence's end")
        k, n, h = self.num_layers * self.num_directions, x.size(1), self.hidden_size
        count = self._num_states
        if not isinstance(state, (tuple, list)) or len(state) != count:
            got = type(state).__name__ + (f" of {len(state)}" if isinstance(state, (tuple, list)) else "")
            raise SeqkitError(f"state: expected a tuple of {count} tensor(s) (as the cell's initial_state), "
                              f"got a {got}")
        for i, s in enumerate(state):
            if not isinstance(s, Tensor):
                got = type(s).__name__
            elif s.shape != (k, n, h):
                got = f"shape {tuple(s.shape)}"
            elif s.device != x.device:
                got = f"a tensor on {s.device}"
            elif not s.is_floating_point():
                got = f"dtype {s.dtype}"
            else:
                continue
            raise SeqkitError(f"state[{i}]: expected a floating point tensor of (num_layers * D, N, H) = "
                              f"({k}, {n}, {h}) on {x.device}, got {got}")

    def _dropped_weights(self) -> Weights:
        """This call's DropConnect copies of the recurrent weights (training only), one mask each."""
        if not (self.weight_drop and self.training):
            return {}
        return {key: F.dropout(getattr(c, c.recurrent_weight), self.weight_drop, training=True)
                for key, c in self.cells.items()}

    def _drop(self, x: Tensor, p: float) -> Tensor:
        """Dropout on time-major (L, N, F), locked over time if asked; training only."""
        if not p or not self.training:
            return x
        if self.locked_dropout:
            return _locked_dropout(x, p, training=True)
        return F.dropout(x, p, training=True)

    def _initial(self, key: str, index: int, state: Optional[State], x: Tensor) -> State:
        if state is None:
            return self.cells[key].initial_state(x.size(1), device=x.device, dtype=x.dtype)
        return tuple(s[index] for s in state)

    def _fused_stack(self, x: Tensor, state: Optional[State], weights: Weights) -> tuple[Tensor, State]:
        """All sequences full length: torch's own multi-layer kernel is exact."""
        first = self.cells["l0"]
        layers, n = self.num_layers, x.size(1)
        if state is None:
            k = layers * self.num_directions
            zeros = first.initial_state(k * n, device=x.device, dtype=x.dtype)
            state = tuple(z.view(k, n, -1) for z in zeros)  # (layers*D, N, H)
        if self.directions != "split":
            params = [w for key, c in self.cells.items() for w in _fused_weights(c, weights.get(key))]
            args = (True, layers, self.dropout, self.training, self.bidirectional, False)
            return _run_fused(first.fused, x, state, params, args)
        # split: two unidirectional stacks, the reverse one over flipped time (every row is full)
        args = (True, layers, self.dropout, self.training, False, False)
        stacks = []
        for d, suffix in enumerate(("", "_reverse")):
            keys = [f"l{layer}{suffix}" for layer in range(layers)]
            params = [w for key in keys for w in _fused_weights(self.cells[key], weights.get(key))]
            h0 = tuple(s[d::2].contiguous() for s in state)  # (layers, N, H)
            stacks.append(_run_fused(first.fused, x if d == 0 else x.flip(0), h0, params, args))
        (out_f, final_f), (out_r, final_r) = stacks
        out = torch.cat([out_f, out_r.flip(0)], dim=-1)  # (L, N, 2H)
        final = tuple(torch.stack([a, b], 1).flatten(0, 1) for a, b in zip(final_f, final_r))  # (layers*2, N, H)
        return out, final

    def _layers(self, x: Tensor, lens: Optional[list[int] | Tensor], state: Optional[State],
                weights: Weights, run_direction=None) -> tuple[Tensor, State]:
        """Layer by layer, each direction over its own lengths (rows sorted by length, or all full).

        ``lens`` may be a tensor (``seqkit export`` keeps lengths symbolic) when the cells are
        fused; ``run_direction`` (default :func:`_fused_direction`) runs one fused direction."""
        if (self.fused and run_direction is None and lens is not None and state is None and not weights
                and not self.training and self.directions == "bidirectional"):
            both = self._both_directions(x, lens)
            if both is not None:
                return both
        index = _reverse_index(lens, x.size(0), x.device) if self.bidirectional and lens is not None else None

        def flip(t: Tensor) -> Tensor:  # each sequence reversed within its own length, padding in place
            return t.flip(0) if index is None else _gather_time(t, index)

        streams = [x, flip(x)] if self.bidirectional else [x]  # each direction's input, in its own time
        finals: list[State] = []
        outs: list[Tensor] = []
        for layer in range(self.num_layers):
            keys = [f"l{layer}{suffix}" for suffix in self._suffixes()]
            cells = [self.cells[key] for key in keys]
            h0s = [self._initial(key, len(finals) + d, state, x) for d, key in enumerate(keys)]
            ws = [weights.get(key) for key in keys]
            if self.fused:
                run = run_direction or _fused_direction
                results = [run(c, i, lens, h, w) for c, i, h, w in zip(cells, streams, h0s, ws)]
            else:
                results = self._generic(layer, cells, streams, lens, h0s, ws)
            finals += [final for _, final in results]
            outs = [out for out, _ in results]  # (L, N, H) each, in its direction's own time
            if layer == self.num_layers - 1:
                break
            if self.directions == "bidirectional":  # each cell above reads both directions
                below = self._drop(torch.cat([outs[0], flip(outs[1])], dim=-1), self.dropout)  # (L, N, 2H)
                streams = [below, flip(below)]
            else:  # forward, or split: each direction stacks only on itself
                streams = [self._drop(out, self.dropout) for out in outs]
        if len(outs) == 2:
            outs[1] = flip(outs[1])
        out = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]  # (L, N, D*H)
        stacked = tuple(torch.stack(parts) for parts in zip(*finals))  # (layers*D, N, H) each
        return out, stacked

    def _both_directions(self, x: Tensor, lens: list[int] | Tensor) -> Optional[tuple[Tensor, State]]:
        """At inference from zero states: each bidirectional layer in one fused call over the
        padded batch as it is (:func:`frozen_padding` with ``bidirectional``), where
        :meth:`_layers` runs each direction on its own, the reverse one over every row reversed
        within its length (two gathers a layer, and two more for its output and the layer above).
        Same outputs and final states. MSRA in bf16, 32 sentences a call, 1 thread: 1,357-1,451
        against 1,241-1,263 sentences/s (``bench/deploy.py batching``, docs/results.md).
        None (run the layers one direction at a time) for an LSTM cell whose initial state is
        not zero: its reverse direction would not start from it."""
        states = []
        for layer in range(self.num_layers):
            keys = [f"l{layer}", f"l{layer}_reverse"]
            h0 = tuple(torch.stack(parts) for parts in zip(*(
                self._initial(key, 0, None, x) for key in keys)))  # (2, N, H) each
            states.append(([self.cells[key] for key in keys], h0))
        if states[0][0][0].fused == "lstm" and bool(torch.stack([s.any() for _, h0 in states for s in h0]).any()):
            return None  # one check (one host sync) for every layer's states
        lengths = torch.as_tensor(lens, device=x.device)
        finals = []
        for cells, h0 in states:
            params = [w for c in cells for w in _fused_weights(c, None)]
            x, final = frozen_padding(cells[0].fused, x, lengths, h0, params, _run_fused, bidirectional=True)
            finals.append(final)
        stacked = tuple(torch.cat(parts) for parts in zip(*finals))  # (layers*2, N, H) each
        return x, stacked


def _resolve_directions(directions: Optional[str], bidirectional: bool) -> str:
    if directions is None:
        return "bidirectional" if bidirectional else "forward"
    if directions not in _DIRECTIONS:
        raise SeqkitError(f"directions must be one of {', '.join(map(repr, _DIRECTIONS))}, got {directions!r}")
    if bidirectional and directions == "forward":
        raise SeqkitError("bidirectional=True contradicts directions='forward'; pass only directions")
    return directions


def _fused_weights(cell: Cell, weight: Optional[Tensor]) -> list[Tensor]:
    """The cell's weights in the fused kernel's order, ``weight`` in place of the recurrent one."""
    params = cell.fused_weights()  # type: ignore[operator]
    if weight is None:
        return params
    own = getattr(cell, cell.recurrent_weight)  # type: ignore[arg-type]
    return [weight if p is own else p for p in params]


def _reverse_index(lens: list[int] | Tensor, length: int, device: torch.device) -> Tensor:
    """(L, N) time index that reverses each column within its own length, padding in place."""
    t = torch.arange(length, device=device).unsqueeze(1)  # (L, 1)
    n = torch.as_tensor(lens, device=device).unsqueeze(0)  # (1, N)
    return torch.where(t < n, n - 1 - t, t)


def _gather_time(x: Tensor, index: Tensor) -> Tensor:
    return x.gather(0, index.unsqueeze(-1).expand(-1, -1, x.size(-1)))


def _run_fused(kernel: Optional[str], x: Tensor, state: State, params: list[Tensor],
               args: tuple, batch_sizes: Optional[Tensor] = None) -> tuple[Tensor, State]:
    """``torch.lstm``/``torch.gru`` on time-major ``x`` (or, given ``batch_sizes``, on a packed
    batch's data), in the autocast dtype if autocast is on.

    CPU autocast would hand the fp32 weights to oneDNN and cast inside, which fails on CPUs
    without bf16 support; casting the input, state and weights here runs the kernel in bf16
    wherever torch has one (oneDNN with native bf16, cuDNN, or torch's own loop).

    On CPU, oneDNN's bf16 LSTM runs about 5x slower when the input width is odd (an MSRA-sized
    layer, 1 thread: 17.2 against 3.3 ms for 60 steps of 32 rows; docs/results.md), so an odd
    width gets one zero column, and the input weights a zero column to match: same result.
    """
    call = call_kernel if batch_sizes is None else functools.partial(_call_packed, batch_sizes=batch_sizes)
    dtype = autocast_dtype(x)
    if dtype is None and not x.is_cuda:  # the common CPU case: no context managers per call
        return call(kernel, x, state, params, args)
    with warnings.catch_warnings(), torch.autocast(x.device.type, enabled=False):
        # cuDNN copies non-contiguous weights; correct, and cheap next to the recurrence.
        warnings.simplefilter("ignore", UserWarning)
        if dtype is not None:
            x = x.to(dtype)
            state = tuple(s.to(dtype) for s in state)
            params = _low_precision(params, dtype)
            if kernel == "lstm" and x.size(-1) % 2 and x.device.type == "cpu" and batch_sizes is None:
                x, params = _even_width(x, params, args)  # (torch runs a GRU in its own loop, never oneDNN)
        return call(kernel, x, state, params, args)


def _even_width(x: Tensor, params: list[Tensor], args: tuple) -> tuple[Tensor, list[Tensor]]:
    """``x`` with one zero feature more, and the first layer's input weights (one per
    direction) with a zero column more: the kernel computes the same thing."""
    per_cell = 4 if args[0] else 2  # [w_ih, w_hh] (+ [b_ih, b_hh] when args[0], has_biases)
    first = {0, per_cell} if args[4] else {0}  # args[4]: bidirectional
    return F.pad(x, (0, 1)), [F.pad(p, (0, 1)) if i in first else p for i, p in enumerate(params)]


def _low_precision(params: list[Tensor], dtype: torch.dtype) -> list[Tensor]:
    """``params`` in ``dtype``. Without autograd, a parameter's copy is made once and kept on
    it until the parameter changes (its version, storage or dtype), not on every call: cast on
    every call, the weights cost about 0.3 ms of a 3 ms bf16 MSRA sentence tagged alone."""
    if torch.is_grad_enabled():
        return [p.to(dtype) for p in params]
    return [_kept_copy(p, dtype) if isinstance(p, nn.Parameter) else p.to(dtype) for p in params]


def _kept_copy(p: nn.Parameter, dtype: torch.dtype) -> Tensor:
    key = (dtype, p._version, p.data_ptr(), p.device, tuple(p.shape))
    kept = p.__dict__.get("_seqkit_low_precision")
    if kept is None or kept[0] != key:
        kept = (key, p.detach().to(dtype))
        p.__dict__["_seqkit_low_precision"] = kept
    return kept[1]


def _call_packed(kernel: Optional[str], data: Tensor, state: State, params: list[Tensor], args: tuple, *,
                 batch_sizes: Tensor) -> tuple[Tensor, State]:
    """``torch.lstm``/``torch.gru`` on a packed batch's ``data`` (sum of lengths, I)."""
    if kernel == "lstm":
        out, h, c = torch.lstm(data, batch_sizes, state, params, *args)
        return out, (h, c)
    out, h = torch.gru(data, batch_sizes, state[0], params, *args)
    return out, (h,)


def _fused_direction(cell: Cell, x: Tensor, lens: Optional[list[int] | Tensor], state: State,
                     weight: Optional[Tensor] = None) -> tuple[Tensor, State]:
    """One direction over the whole padded batch in one fused call, padded steps frozen.

    The outputs at real positions never depend on later (padded) steps; the final state is
    the frozen state (GRU: h; LSTM: c) or, for an LSTM's h, the output at the last real step.
    ``lens`` None: every row is full length, the plain kernel.  ``weight``: used in place of
    the cell's recurrent weight.
    """
    args = (True, 1, 0.0, cell.training, False, False)
    h0 = tuple(s.unsqueeze(0) for s in state)  # (1, N, H)
    if lens is None:
        out, new = _run_fused(cell.fused, x, h0, _fused_weights(cell, weight), args)
        return out, tuple(s[0] for s in new)
    lengths = torch.as_tensor(lens, device=x.device)
    out, new = frozen_padding(cell.fused, x, lengths, h0, _fused_weights(cell, weight), _run_fused, cell.training)
    return out, tuple(s[0] for s in new)
