"""The recurrent cell contract and the built-in LSTM and GRU cells.

A cell is one direction of one layer, one time step.  Shape legend: N batch, H hidden, I input.
"""

from __future__ import annotations

import math
from typing import ClassVar, Optional

import torch
from torch import Tensor, nn

__all__ = ["Cell", "GRUCell", "LSTMCell", "State"]

State = tuple[Tensor, ...]


class Cell(nn.Module):
    """Base class of recurrent cells: one direction of one layer, one time step.

    Args:
        input_size: features of ``x`` at each step (I).
        hidden_size: features of the output ``h`` and of each state tensor (H).

    Inputs of ``forward(x, state)``:
        x: (N, I) the input at one time step.
        state: a tuple of (N, H) tensors, as returned by ``initial_state`` or the previous step.

    Outputs:
        h: (N, H) the step's output, fed to the next layer.
        new_state: a tuple shaped like ``state``.

    Optional, for speed (the engine hoists the input projection of all time steps into one
    large matmul before the time loop): define ``project_input(x) -> xp`` that works on any
    leading shape, ``(..., I) -> (..., P)``, and ``forward_projected(xp, state)``; then
    ``forward(x, state)`` must equal ``forward_projected(project_input(x), state)``.
    The base class provides that ``forward`` for you when you define both.

    Optional, for full speed (the engine then runs the whole recurrence of a direction as one
    autograd node, computes the recurrent weight gradient of all steps in one matmul instead of
    one per step, and on CPU runs a layer's two directions side by side in two threads): name
    the parameters of the recurrent matmul in ``recurrent_weight`` (a (G, H) parameter) and
    ``recurrent_bias`` (a (G,) parameter, or None), and define
    ``gates(xp, hp, state) -> (h, new_state)``, where
    ``hp = linear(state[0], recurrent_weight, recurrent_bias)`` is (N, G) and ``xp`` is
    ``project_input(x)`` (or ``x`` itself for a cell without ``project_input``).  ``gates`` may
    use the cell's other parameters (peephole weights, layer-norm gains) but must treat every
    row on its own (no mixing across the batch) and must not depend on anything but its
    arguments and parameters.  The base class then provides ``forward_projected`` (and
    ``forward``) from ``gates``; a cell that defines them too must compute the same thing
    (``seqkit.testing.check_cell`` verifies all of this).

    Example::

        class MinimalGRU(seqkit.Cell):
            def __init__(self, input_size, hidden_size):
                super().__init__(input_size, hidden_size)
                self.lin = nn.Linear(input_size + hidden_size, 2 * hidden_size)

            def forward(self, x, state):
                (h,) = state
                f, c = self.lin(torch.cat([x, h], -1)).chunk(2, -1)
                f = torch.sigmoid(f)
                h = f * h + (1 - f) * torch.tanh(c)
                return h, (h,)
    """

    #: The name of a fused torch kernel that computes exactly this cell ("lstm", "gru") with
    #: torch's weight layout; the encoder then uses it.  Third-party cells leave it as None.
    fused: ClassVar[Optional[str]] = None
    #: Optional: the name of the (G, H) parameter that multiplies ``state[0]`` at every step.
    recurrent_weight: ClassVar[Optional[str]] = None
    #: Optional: the name of the (G,) bias parameter of that matmul (None: no bias).
    recurrent_bias: ClassVar[Optional[str]] = None

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)

    def initial_state(
        self, batch_size: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> State:
        """The state before the first step: by default one zero tensor of shape (N, H)."""
        return (torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype),)

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        if self.hoists_input():
            return self.forward_projected(self.project_input(x), state)
        if self.declares_recurrence():
            return self.gates(x, self.recurrent_projection(state), state)
        raise NotImplementedError(f"{type(self).__name__} must define forward(x, state)")

    def hoists_input(self) -> bool:
        """Whether this cell declares ``project_input``/``forward_projected``."""
        return type(self).project_input is not Cell.project_input

    def project_input(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_projected(self, xp: Tensor, state: State) -> tuple[Tensor, State]:
        if self.declares_recurrence():
            return self.gates(xp, self.recurrent_projection(state), state)
        raise NotImplementedError

    def declares_recurrence(self) -> bool:
        """Whether this cell declares ``recurrent_weight`` and ``gates`` (see the class doc)."""
        return self.recurrent_weight is not None and type(self).gates is not Cell.gates

    def recurrent_parameters(self) -> tuple[Tensor, Optional[Tensor]]:
        """The (G, H) weight and the (G,) bias (or None) named by ``recurrent_weight/_bias``."""
        if self.recurrent_weight is None:
            raise NotImplementedError(f"{type(self).__name__} declares no recurrent_weight")
        weight = getattr(self, self.recurrent_weight)
        bias = getattr(self, self.recurrent_bias) if self.recurrent_bias is not None else None
        return weight, bias

    def recurrent_projection(self, state: State) -> Tensor:
        """``hp``: (N, G), the recurrent matmul of ``state[0]``, as the engine computes it."""
        weight, bias = self.recurrent_parameters()
        return nn.functional.linear(state[0], weight, bias)

    def gates(self, xp: Tensor, hp: Tensor, state: State) -> tuple[Tensor, State]:
        """Optional: one step given the input and recurrent projections (see the class doc)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


class _GatedCell(Cell):
    """Shared weights of the LSTM and GRU cells, in torch's layout and with torch's init."""

    num_gates: ClassVar[int]
    recurrent_weight = "weight_hh"
    recurrent_bias = "bias_hh"

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        g = self.num_gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(g, input_size))
        self.weight_hh = nn.Parameter(torch.empty(g, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(g))
        self.bias_hh = nn.Parameter(torch.empty(g))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def fused_weights(self) -> list[Tensor]:
        return [self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh]

    def project_input(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight_ih, self.bias_ih)


class LSTMCell(_GatedCell):
    """Long short-term memory (Hochreiter & Schmidhuber 1997, with forget gate), torch's layout.

    State is ``(h, c)``.  Inside ``seqkit.Encoder`` it runs on the fused ``torch.lstm`` kernel
    (oneDNN on CPU, cuDNN on GPU); the step function below is the same computation.
    """

    fused = "lstm"
    num_gates = 4

    def initial_state(self, batch_size, *, device=None, dtype=None):
        z = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return (z, z.clone())

    def gates(self, xp, hp, state):
        h, c = state
        pre = xp + hp  # (N, 4H): i, f, g, o
        i, f, g, o = pre.chunk(4, dim=-1)
        c = torch.addcmul(torch.sigmoid(f) * c, torch.sigmoid(i), torch.tanh(g))
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)


class GRUCell(_GatedCell):
    """Gated recurrent unit (Cho et al. 2014), torch's layout and equations.

    State is ``(h,)``.  Inside ``seqkit.Encoder`` it runs on the fused ``torch.gru`` kernel.
    """

    fused = "gru"
    num_gates = 3

    def gates(self, xp, hp, state):
        (h,) = state
        xr, xz, xn = xp.chunk(3, dim=-1)
        hr, hz, hn = hp.chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(torch.addcmul(xn, r, hn))
        h = torch.addcmul(n, z, h - n)  # (1 - z) * n + z * h
        return h, (h,)
