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
from .engine import autocast_dtype, generic_layer
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
        if self.batch_first:
            x = x.transpose(0, 1)  # (L, N, I): the engines run time-major
        length, n, _ = x.shape
        lens = self._check_lengths(lengths, n, length)
        order = sorted(range(n), key=lambda i: -lens[i])
        sorted_already = order == list(range(n))
        if not sorted_already:
            perm = torch.tensor(order, device=x.device)
            x = x.index_select(1, perm)
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
            out = out.index_select(1, inverse)
            final = tuple(s.index_select(1, inverse) for s in final)
        if self.batch_first:
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
            return self.cells[key].initial_state(x.size(1), device=x.device, dtype=x.dtype)
        return tuple(s[index] for s in state)

    def _fused_stack(self, x: Tensor, state: Optional[State]) -> tuple[Tensor, State]:
        """All sequences full length: torch's own multi-layer kernel is exact."""
        first = next(iter(self.cells.values()))
        params = [w for c in self.cells.values() for w in c.fused_weights()]
        if state is None:
            zero = first.initial_state(x.size(1), device=x.device, dtype=x.dtype)
            state = tuple(
                torch.stack([z] * (self.num_layers * self.num_directions)) for z in zero
            )
        args = (True, self.num_layers, self.dropout, self.training, self.bidirectional, False)
        return _run_fused(first.fused, x, state, params, args)

    def _layers(self, x: Tensor, lens: list[int], state: Optional[State]) -> tuple[Tensor, State]:
        """Layer by layer, each direction over its own lengths (rows sorted by length)."""
        reverse_index = _reverse_index(lens, x.size(0), x.device) if self.bidirectional else None
        finals: list[State] = []
        index = 0
        for layer in range(self.num_layers):
            keys = [f"l{layer}{suffix}" for suffix in self._suffixes()]
            cells = [self.cells[key] for key in keys]
            h0s = [self._initial(key, index + d, state, x) for d, key in enumerate(keys)]
            inps = [x, _gather_time(x, reverse_index)] if reverse_index is not None else [x]
            if self.fused:
                results = [_fused_direction(c, i, lens, h) for c, i, h in zip(cells, inps, h0s)]
            else:
                results = generic_layer(cells, inps, lens, h0s)
            outs = [out for out, _ in results]
            if reverse_index is not None:
                outs[1] = _gather_time(outs[1], reverse_index)
            finals += [final for _, final in results]
            index += len(keys)
            x = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]  # (L, N, D*H)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        stacked = tuple(torch.stack(parts) for parts in zip(*finals))  # (layers*D, N, H) each
        return x, stacked


def _reverse_index(lens: list[int], length: int, device: torch.device) -> Tensor:
    """(L, N) time index that reverses each column within its own length, padding in place."""
    t = torch.arange(length, device=device).unsqueeze(1)  # (L, 1)
    n = torch.tensor(lens, device=device).unsqueeze(0)  # (1, N)
    return torch.where(t < n, n - 1 - t, t)


def _gather_time(x: Tensor, index: Tensor) -> Tensor:
    return x.gather(0, index.unsqueeze(-1).expand(-1, -1, x.size(-1)))


def _run_fused(kernel: Optional[str], x: Tensor, state: State, params: list[Tensor],
               args: tuple) -> tuple[Tensor, State]:
    """``torch.lstm``/``torch.gru`` on time-major ``x``, in the autocast dtype if autocast is on.

    CPU autocast would hand the fp32 weights to oneDNN and cast inside, which fails on CPUs
    without bf16 support; casting the input, state and weights here runs the kernel in bf16
    wherever torch has one (oneDNN with native bf16, cuDNN, or torch's own loop).
    """
    dtype = autocast_dtype(x)
    with warnings.catch_warnings(), torch.autocast(x.device.type, enabled=False):
        # cuDNN copies non-contiguous weights; correct, and cheap next to the recurrence.
        warnings.simplefilter("ignore", UserWarning)
        if dtype is not None:
            x = x.to(dtype)
            state = tuple(s.to(dtype) for s in state)
            params = [p.to(dtype) for p in params]
        if kernel == "lstm":
            out, h, c = torch.lstm(x, state, params, *args)
            return out, (h, c)
        out, h = torch.gru(x, state[0], params, *args)
        return out, (h,)


# A padding flag as an extra input feature, with this weight into the input and forget gates
# (LSTM: i -> 0, f -> 1) or the update gate (GRU: z -> 1), saturates those sigmoids exactly, so
# padded steps leave the cell state bit for bit unchanged and pass no gradient to the weights.
_FREEZE = 1e4


def _fused_direction(cell: Cell, x: Tensor, lens: list[int], state: State) -> tuple[Tensor, State]:
    """One direction over the whole padded batch in one fused call, padded steps frozen.

    The outputs at real positions never depend on later (padded) steps; the final state is
    the frozen state (GRU: h; LSTM: c) or, for an LSTM's h, the output at the last real step.
    """
    length, n, _ = x.shape
    h = cell.hidden_size
    lengths = torch.tensor(lens, device=x.device)
    pad = torch.arange(length, device=x.device).unsqueeze(1) >= lengths  # (L, N)
    x = x.masked_fill(pad.unsqueeze(-1), 0.0)  # whatever the padding holds (NaN, 1e5) stays out
    flagged = torch.cat([x, pad.unsqueeze(-1).to(x.dtype)], dim=-1)  # (L, N, I + 1)
    w_ih, *rest = cell.fused_weights()
    column = w_ih.new_zeros(w_ih.size(0), 1)
    if cell.fused == "lstm":
        column[:h] = -_FREEZE  # input gate closed
        column[h: 2 * h] = _FREEZE  # forget gate open
    else:
        column[h: 2 * h] = _FREEZE  # update gate keeps h
    weights = [torch.cat([w_ih, column], dim=1), *rest]
    args = (True, 1, 0.0, cell.training, False, False)
    h0 = tuple(s.unsqueeze(0) for s in state)
    out, new = _run_fused(cell.fused, flagged, h0, weights, args)
    out = out.masked_fill(pad.unsqueeze(-1), 0.0)
    final = tuple(s[0] for s in new)
    if cell.fused == "lstm":  # h at each sequence's own last step (its initial h if empty)
        last = (lengths - 1).clamp(min=0)
        h_last = out.gather(0, last.view(1, n, 1).expand(1, n, h))[0]
        final = (torch.where((lengths > 0).unsqueeze(1), h_last, state[0].to(h_last.dtype)), final[1])
    return out, final
