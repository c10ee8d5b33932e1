"""The ``lnlstm`` cell: a layer-normalised LSTM (Ba, Kiros & Hinton 2016).

Shape legend: N batch, I input, H hidden.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import seqkit

__all__ = ["LayerNormLSTMCell", "register_cells"]
__version__ = "0.1.0"


class LayerNormLSTMCell(seqkit.Cell):
    """LSTM with layer normalisation of both gate projections and of the cell state.

    State is ``(h, c)``, both (N, H).  Normalisation is per row, so sequences never mix.

    Args:
        input_size: I.
        hidden_size: H.
        eps: the layer norms' epsilon.

    Examples::

        >>> enc = seqkit.Encoder(80, 256, cell=LayerNormLSTMCell, bidirectional=True)
    """

    recurrent_weight = "weight_hh"

    def __init__(self, input_size: int, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__(input_size, hidden_size)
        g = 4 * hidden_size
        self.eps = eps
        self.weight_ih = nn.Parameter(torch.empty(g, input_size))
        self.weight_hh = nn.Parameter(torch.empty(g, hidden_size))
        self.ln_ih_weight = nn.Parameter(torch.ones(g))
        self.bias = nn.Parameter(torch.zeros(g))
        self.ln_hh_weight = nn.Parameter(torch.ones(g))
        self.ln_c_weight = nn.Parameter(torch.ones(hidden_size))
        self.ln_c_bias = nn.Parameter(torch.zeros(hidden_size))
        bound = 1.0 / math.sqrt(hidden_size)
        nn.init.uniform_(self.weight_ih, -bound, bound)
        nn.init.uniform_(self.weight_hh, -bound, bound)

    def initial_state(self, batch_size, *, device=None, dtype=None):
        z = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return (z, z.clone())

    def project_input(self, x: Tensor) -> Tensor:
        xp = F.linear(x, self.weight_ih)  # (..., 4H)
        return _norm(xp, self.ln_ih_weight, self.bias, self.eps)

    def gates(self, xp: Tensor, hp: Tensor, state):
        _, c = state
        pre = xp + _norm(hp, self.ln_hh_weight, None, self.eps)
        i, f, g, o = pre.chunk(4, dim=-1)
        c = torch.addcmul(torch.sigmoid(f) * c, torch.sigmoid(i), torch.tanh(g))
        h = torch.sigmoid(o) * torch.tanh(_norm(c, self.ln_c_weight, self.ln_c_bias, self.eps))
        return h, (h, c)


def _norm(v: Tensor, weight: Tensor, bias: Optional[Tensor], eps: float) -> Tensor:
    """Layer norm over the last dimension with fp32 (or wider) statistics.

    CPU autocast runs ``layer_norm`` in bf16, which amplifies the rounding of the recurrent
    matmul by the normalisation; the statistics stay in fp32 here, as CUDA autocast does.
    """
    if not torch.is_autocast_enabled(v.device.type):
        return F.layer_norm(v, v.shape[-1:], weight, bias, eps)
    with torch.autocast(v.device.type, enabled=False):
        return F.layer_norm(v.float(), v.shape[-1:], weight, bias, eps)


@seqkit.hookimpl
def register_cells(register):
    register("lnlstm", LayerNormLSTMCell)
