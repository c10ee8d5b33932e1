"""The ``peephole`` cell: an LSTM whose gates see the cell state (Gers & Schmidhuber 2000).

Shape legend: N batch, I input, H hidden.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import seqkit

__all__ = ["PeepholeLSTMCell", "register_cells"]
__version__ = "0.1.0"


class PeepholeLSTMCell(seqkit.Cell):
    """LSTM with diagonal peephole connections from the cell state to the gates.

    The input and forget gates see the previous cell state, the output gate the new one.
    State is ``(h, c)``, both (N, H).  Gate order i, f, g, o as in ``torch.nn.LSTM``.

    Args:
        input_size: I.
        hidden_size: H.

    Examples::

        >>> enc = seqkit.Encoder(80, 256, cell=PeepholeLSTMCell, bidirectional=True)
    """

    recurrent_weight = "weight_hh"

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size))
        self.weight_peephole = nn.Parameter(torch.empty(3, hidden_size))  # i, f, o
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def initial_state(self, batch_size, *, device=None, dtype=None):
        z = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return (z, z.clone())

    def project_input(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias)  # (..., 4H)

    def gates(self, xp: Tensor, hp: Tensor, state):
        _, c = state
        i, f, g, o = (xp + hp).chunk(4, dim=-1)
        p_i, p_f, p_o = self.weight_peephole.unbind(0)
        i = torch.sigmoid(torch.addcmul(i, p_i, c))
        f = torch.sigmoid(torch.addcmul(f, p_f, c))
        c = torch.addcmul(f * c, i, torch.tanh(g))
        o = torch.sigmoid(torch.addcmul(o, p_o, c))
        h = o * torch.tanh(c)
        return h, (h, c)


@seqkit.hookimpl
def register_cells(register):
    register("peephole", PeepholeLSTMCell)
