"""A tiny third-party-style plugin: a minimal gated unit cell, written from the docs alone."""

import torch
from torch import nn

import seqkit


class MinGRUCell(seqkit.Cell):
    """Minimal gated unit (Zhou et al. 2016): one forget gate."""

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.lin = nn.Linear(input_size + hidden_size, 2 * hidden_size)

    def forward(self, x, state):
        (h,) = state
        f, c = self.lin(torch.cat([x, h], dim=-1)).chunk(2, dim=-1)
        f = torch.sigmoid(f)
        h = f * h + (1 - f) * torch.tanh(c)
        return h, (h,)


@seqkit.hookimpl
def register_cells(register):
    register("mingru", MinGRUCell)
