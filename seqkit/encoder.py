"""The shared stacked (bi)directional recurrent encoder.

Shape legend: N batch, L length, I input features, D directions (1 or 2), H hidden.
"""

from __future__ import annotations

import warnings
from typing import Literal, Optional, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import registry
from .cells import Cell, State
from .errors import SeqkitError

__all__ = ["Encoder"]

_FUSED_KERNELS = {"lstm": torch.lstm, "gru": torch.gru}


class Encoder(nn.Module):
    """A stack of ``num_layers`` recurrent layers, each one cell per direction.

    Padding never changes a real position's output: the forward direction stops at each
    sequence's own length and the backward direction starts at each sequence's own last
    element.  The built-in ``lstm`` and ``gru`` cells run on torch's fused kernels (oneDNN on
    CPU, cuDNN on GPU); any other :class:`seqkit.Cell` runs through the generic engine.

    Args:
        input_size: I, features of each input step.
        hidden_size: H, features of each direction's output.
        num_layers: stacked layers.
        cell: a registered cell name (``"lstm"``, ``"gru"``, a plugin's) or a ``Cell`` subclass.
        bidirectional: add a backward direction to every layer (D = 2).
        dropout: dropout on each layer's output except the last, in training only.
        batch_first: inputs and outputs are (N, L, ...) instead of (L, N, ...).
        engine: ``"auto"`` (fused when the cell has a fused kernel), ``"fused"`` or ``"generic"``.

    Inputs: ``x, lengths=None, state=None``
        x: (N, L, I) if ``batch_first`` else (L, N, I).
        lengths: (N,) integer lengths, each in [0, L]; None means all are L.
        state: initial state, a tuple of (num_layers * D, N, H) tensors (one per state tensor
            of the cell: ``(h, c)`` for LSTM, ``(h,)`` for GRU); None means the cell's zeros.

    Outputs: ``out, state``
        out: (N, L, D * H) (or (L, N, D * H)); zeros at padded positions.
        state: final state of each layer and direction at each sequence's own end, a tuple of
            (num_layers * D, N, H) tensors ordered layer 0 forward, layer 0 reverse, layer 1 ...

    Examples::

        >>> enc = seqkit.Encoder(80, 256, num_layers=3, cell="lstm", bidirectional=True,
        ...                      dropout=0.1, batch_first=True)
        >>> out, state = enc(torch.randn(4, 50, 80), torch.tensor([50, 43, 20, 7]))
        >>> out.shape
        torch.Size([4, 50, 512])
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
    ) -> None:
        super().__init__()
        cell_cls = registry.cells.get(cell) if isinstance(cell, str) else cell
        if not (isinstance(cell_cls, type) and issubclass(cell_cls, Cell)):
            raise SeqkitError(f"cell {cell!r} is not a seqkit.Cell subclass")
        if num_layers < 1 or hidden_size < 1 or input_size < 1:
            raise SeqkitError("input_size, hidden_size and num_layers must be positive")
        if not 0.0 <= dropout < 1.0:
            raise SeqkitError(f"dropout must be in [0, 1), got {dropout}")
        if engine == "fused" and cell_cls.fused not in _FUSED_KERNELS:
            raise SeqkitError(f"cell {cell_cls.__name__} has no fused kernel; use engine='auto'")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        self.dropout = float(dropout)
        self.batch_first = batch_first
        self.cell_name = cell if isinstance(cell, str) else cell_cls.__name__
        self.fused = engine != "generic" and cell_cls.fused in _FUSED_KERNELS
        self.cells = nn.ModuleDict()
        for layer in range(num_layers):
            size = input_size if layer == 0 else hidden_size * self.num_directions
            for suffix in self._suffixes():
                self.cells[f"l{layer}{suffix}"] = cell_cls(size, hidden_size)

    @property
    def output_size(self) -> int:
        """D * H, the features of each output step."""
        return self.hidden_size * self.num_directions

    def _suffixes(self) -> tuple[str, ...]:
        return ("", "_reverse") if self.bidirectional else ("",)

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"cell={self.cell_name!r}, bidirectional={self.bidirectional}, dropout={self.dropout}, "
            f"batch_first={self.batch_first}, engine={'fused' if self.fused else 'generic'}"
        )

    def forward(
        self, x: Tensor, lengths: Optional[Tensor] = None, state: Optional[State] = None
    ) -> tuple[Tensor, State]:
        if x.dim() != 3 or x.size(-1) != self.input_size:
            raise SeqkitError(f"Encoder expects input (N, L, {self.input_size}), got {tuple(x.shape)}")
        if not self.batch_first:
            x = x.transpose(0, 1)
        n, length, _ = x.shape
        lens = self._check_lengths(lengths, n, length)
        order = sorted(range(n), key=lambda i: -lens[i])
        sorted_already = order == list(range(n))
        if not sorted_already:
            perm = torch.tensor(order, device=x.device)
            x = x.index_select(0, perm)
            lens = [lens[i] for i in order]
            if state is not None:
                state = tuple(s.index_select(1, perm) for s in state)
        if self.fused and all(v == length for v in lens):
            out, final = self._fused_stack(x, state)
        else:
            out, final = self._layers(x, lens, state)
        if not sorted_already:
            inverse = torch.empty_like(perm)
            inverse[perm] = torch.arange(n, device=perm.device)
            out = out.index_select(0, inverse)
            final = tuple(s.index_select(1, inverse) for s in final)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, final

    @staticmethod
    def _check_lengths(lengths: Optional[Tensor], n: int, length: int) -> list[int]:
        if lengths is None:
            return [length] * n
        lens = torch.as_tensor(lengths).tolist()
        if len(lens) != n:
            raise SeqkitError(f"lengths has {len(lens)} entries for a batch of {n}")
        if any(v < 0 or v > length for v in lens):
            raise SeqkitError(f"lengths must lie in [0, {length}], got {lens}")
        return [int(v) for v in lens]

    def _initial(self, key: str, index: int, state: Optional[State], x: Tensor) -> State:
        if state is None:
            return self.cells[key].initial_state(x.size(0), device=x.device, dtype=x.dtype)
        return tuple(s[index] for s in state)

    def _fused_stack(self, x: Tensor, state: Optional[State]) -> tuple[Tensor, State]:
        """All sequences full length: torch's own multi-layer kernel is exact."""
        kernel = next(iter(self.cells.values())).fused
        params = [w for c in self.cells.values() for w in c.fused_weights()]
        if state is None:
            first = next(iter(self.cells.values()))
            zero = first.initial_state(x.size(0), device=x.device, dtype=x.dtype)
            state = tuple(
                torch.stack([z] * (self.num_layers * self.num_directions)) for z in zero
            )
        with warnings.catch_warnings():
            # cuDNN copies non-contiguous weights; correct, and cheap next to the recurrence.
            warnings.simplefilter("ignore", UserWarning)
            args = (params, True, self.num_layers, self.dropout, self.training,
                    self.bidirectional, True)
            if kernel == "lstm":
                out, h, c = torch.lstm(x, state, *args)
                return out, (h, c)
            out, h = torch.gru(x, state[0], *args)
        return out, (h,)

    def _layers(self, x: Tensor, lens: list[int], state: Optional[State]) -> tuple[Tensor, State]:
        """Layer by layer, each direction over its own lengths (rows sorted by length)."""
        reverse_index = _reverse_index(lens, x.size(1), x.device) if self.bidirectional else None
        finals: list[State] = []
        index = 0
        for layer in range(self.num_layers):
            outs = []
            for suffix in self._suffixes():
                key = f"l{layer}{suffix}"
                cell = self.cells[key]
                h0 = self._initial(key, index, state, x)
                inp = _gather_time(x, reverse_index) if suffix else x
                run = _fused_direction if self.fused else _generic_direction
                out, final = run(cell, inp, lens, h0)
                outs.append(_gather_time(out, reverse_index) if suffix else out)
                finals.append(final)
                index += 1
            x = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]  # (N, L, D*H)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        stacked = tuple(torch.stack(parts) for parts in zip(*finals))  # (layers*D, N, H) each
        return x, stacked


def _reverse_index(lens: list[int], length: int, device: torch.device) -> Tensor:
    """(N, L) time index that reverses each row within its own length, padding in place."""
    t = torch.arange(length, device=device).unsqueeze(0)  # (1, L)
    n = torch.tensor(lens, device=device).unsqueeze(1)  # (N, 1)
    return torch.where(t < n, n - 1 - t, t)


def _gather_time(x: Tensor, index: Tensor) -> Tensor:
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.size(-1)))


def _segments(lens: list[int]) -> list[tuple[int, int, int]]:
    """(start, stop, rows) spans of time over which the first ``rows`` sequences are active.

    ``lens`` is sorted in descending order; one span per distinct length, so a batch
    bucketed by length needs few of them.
    """
    spans, start = [], 0
    for stop in sorted(set(lens)):
        if stop > start:
            rows = sum(1 for v in lens if v >= stop)
            spans.append((start, stop, rows))
            start = stop
    return spans


def _assemble(pieces: list[Tensor], n: int, length: int) -> Tensor:
    """Pad (rows, span, H) pieces to N rows and join them along time into (N, L, H)."""
    out = torch.cat([F.pad(p, (0, 0, 0, 0, 0, n - p.size(0))) for p in pieces], dim=1)
    if out.size(1) < length:  # trailing padding that no sequence reaches
        out = F.pad(out, (0, 0, 0, length - out.size(1)))
    return out


def _merge_state(new: State, old: State, rows: int) -> State:
    if rows == old[0].size(0):
        return tuple(new)
    return tuple(torch.cat([a, b[rows:]]) for a, b in zip(new, old))


def _fused_direction(cell: Cell, x: Tensor, lens: list[int], state: State) -> tuple[Tensor, State]:
    """One direction over padded rows with the fused kernel, span by span of equal activity."""
    pieces = []
    for start, stop, rows in _segments(lens):
        seg = x[:rows, start:stop]
        h0 = tuple(s[:rows].unsqueeze(0) for s in state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            if cell.fused == "lstm":
                out, h, c = torch.lstm(seg, h0, cell.fused_weights(), True, 1, 0.0, cell.training, False, True)
                new = (h[0], c[0])
            else:
                out, h = torch.gru(seg, h0[0], cell.fused_weights(), True, 1, 0.0, cell.training, False, True)
                new = (h[0],)
        state = _merge_state(new, state, rows)
        pieces.append(out)
    return _assemble_or_empty(pieces, x, cell), state


def _generic_direction(cell: Cell, x: Tensor, lens: list[int], state: State) -> tuple[Tensor, State]:
    """One direction with a Python time loop over any Cell, hoisting its input projection."""
    hoist = cell.hoists_input()
    xs = cell.project_input(x) if hoist else x  # (N, L, P)
    step = cell.forward_projected if hoist else cell.forward
    pieces = []
    for start, stop, rows in _segments(lens):
        carried = tuple(s[:rows] for s in state)
        outs = []
        for xt in xs[:rows, start:stop].unbind(1):
            h, carried = step(xt, carried)
            outs.append(h)
        state = _merge_state(carried, state, rows)
        pieces.append(torch.stack(outs, dim=1))  # (rows, span, H)
    return _assemble_or_empty(pieces, x, cell), state


def _assemble_or_empty(pieces: list[Tensor], x: Tensor, cell: Cell) -> Tensor:
    if not pieces:
        return x.new_zeros(x.size(0), x.size(1), cell.hidden_size)
    return _assemble(pieces, x.size(0), x.size(1))
