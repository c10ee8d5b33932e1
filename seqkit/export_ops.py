"""The recurrent layers of an exported seqkit model, as two torch custom operators.

``torch.export`` unrolls torch's fused LSTM/GRU kernels over time, which would bake the
sequence length into the graph. These operators keep one layer-direction's recurrence as one
node, so lengths stay real inputs: ONNX export turns each into ONNX's own ``LSTM``/``GRU``
operator (with ``sequence_lens``), and a ``.pt2`` program calls them at run time.

This file needs only torch. ``seqkit export --format pt2`` copies it next to the program as
``seqkit_ops.py``: ``import seqkit_ops`` before ``torch.export.load``.

Inputs of both: x (L, N, I) time-major, lengths (N,) int64 in [1, L], the initial state
(1, N, H) each, then torch's own weights of one layer-direction (``weight_ih``, ``weight_hh``,
``bias_ih``, ``bias_hh``). Outputs: y (L, N, H), zero past each row's length, and the state at
each row's last real step.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

__all__ = ["FREEZE", "call_kernel", "frozen_padding", "gru_layer", "lstm_layer"]

# A padding flag as an extra input feature, with this weight into the input and forget gates
# (LSTM: i -> 0, f -> 1) or the update gate (GRU: z -> 1), saturates those sigmoids exactly, so
# padded steps leave the state bit for bit unchanged.
FREEZE = 1e4


def frozen_padding(kernel: str, x: Tensor, lengths: Tensor, state: tuple[Tensor, ...], params: list[Tensor],
                   run: Optional[Callable[..., tuple[Tensor, tuple[Tensor, ...]]]] = None,
                   training: bool = False, bidirectional: bool = False) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One direction of one layer over a padded batch in one fused call, padded steps frozen.

    ``x`` (L, N, I) time-major, ``lengths`` (N,), ``state`` (1, N, H) each, ``params`` the
    kernel's ``[w_ih, w_hh, b_ih, b_hh]``. Outputs at real positions never depend on padding;
    the final state is each row's state after its own last step (its initial state if empty).
    Tensor operations only: ``lengths`` may be a traced or symbolic input. ``run(kernel, x,
    state, params, args)`` calls the kernel (default: ``torch.lstm``/``torch.gru`` as they are).

    ``bidirectional``: both directions of the layer in one call (``state`` (2, N, H) each,
    ``params`` both directions' four, outputs (L, N, 2H)). The kernel's reverse direction starts
    at the padded end: frozen steps keep a GRU's h as it is, but an LSTM's h becomes
    ``o * tanh(c)``, which is its initial h only when the initial state is zero, so an LSTM
    caller passes zero states (the encoder takes this path only then).
    """
    length, n = x.shape[0], x.shape[1]
    h = params[1].shape[1]
    pad = torch.arange(length, device=x.device).unsqueeze(1) >= lengths.to(x.device).unsqueeze(0)  # (L, N)
    x = x.masked_fill(pad.unsqueeze(-1), 0.0)  # whatever the padding holds (NaN, 1e5) stays out
    flagged = torch.cat([x, pad.unsqueeze(-1).to(x.dtype)], dim=-1)  # (L, N, I + 1)
    column = params[0].new_zeros(params[0].shape[0], 1)
    if kernel == "lstm":
        column[:h] = -FREEZE  # input gate closed
        column[h: 2 * h] = FREEZE  # forget gate open
    else:
        column[h: 2 * h] = FREEZE  # update gate keeps h
    firsts = (0, 4) if bidirectional else (0,)  # each direction's w_ih gets the flag's column
    weights = [torch.cat([p, column], dim=1) if i in firsts else p for i, p in enumerate(params)]
    out, new = (run or call_kernel)(kernel, flagged, state, weights, (True, 1, 0.0, training, bidirectional, False))
    out = out.masked_fill(pad.unsqueeze(-1), 0.0)
    if kernel == "lstm":  # the forward h at each row's own last step (its initial h if empty)
        last = (lengths.to(x.device) - 1).clamp(min=0)
        h_last = out[..., :h].gather(0, last.view(1, n, 1).expand(1, n, h))  # (1, N, H)
        live = (lengths.to(x.device) > 0).view(1, n, 1)
        h_last = torch.where(live, h_last, state[0][:1].to(h_last.dtype))
        new = (torch.cat([h_last, new[0][1:]]) if bidirectional else h_last, new[1])
    return out, new


def call_kernel(kernel: Optional[str], x: Tensor, state: tuple[Tensor, ...], params: list[Tensor],
                args: tuple) -> tuple[Tensor, tuple[Tensor, ...]]:
    """``torch.lstm`` or ``torch.gru`` on time-major ``x``: (output, final state)."""
    if kernel == "lstm":
        out, h, c = torch.lstm(x, state, params, *args)
        return out, (h, c)
    out, h = torch.gru(x, state[0], params, *args)
    return out, (h,)


@torch.library.custom_op("seqkit::lstm_layer", mutates_args=())
def lstm_layer(x: Tensor, lengths: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
               b_ih: Tensor, b_hh: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    out, (h, c) = frozen_padding("lstm", x, lengths, (h0, c0), [w_ih, w_hh, b_ih, b_hh])
    return out, h, c


@lstm_layer.register_fake
def _(x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh):
    return x.new_empty((x.shape[0], x.shape[1], w_hh.shape[1])), torch.empty_like(h0), torch.empty_like(c0)


@torch.library.custom_op("seqkit::gru_layer", mutates_args=())
def gru_layer(x: Tensor, lengths: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor,
              b_ih: Tensor, b_hh: Tensor) -> tuple[Tensor, Tensor]:
    out, (h,) = frozen_padding("gru", x, lengths, (h0,), [w_ih, w_hh, b_ih, b_hh])
    return out, h


@gru_layer.register_fake
def _(x, lengths, h0, w_ih, w_hh, b_ih, b_hh):
    return x.new_empty((x.shape[0], x.shape[1], w_hh.shape[1])), torch.empty_like(h0)
