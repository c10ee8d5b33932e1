"""The generic engine's fast recurrence equals a naive per-sequence loop, gradients included."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import seqkit
from seqkit.cells import GRUCell, LSTMCell
from seqkit.engine import _active_rows, _autograd_loop, _recurrence

F64 = torch.float64


class OutputIsNotState(seqkit.Cell):
    """h differs from state[0], the recurrent weight has no bias, and gates uses a parameter."""

    recurrent_weight = "w_h"

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.w_x = nn.Parameter(torch.randn(2 * hidden_size, input_size) * 0.5)
        self.w_h = nn.Parameter(torch.randn(2 * hidden_size, hidden_size) * 0.5)
        self.scale = nn.Parameter(torch.randn(hidden_size))

    def initial_state(self, batch_size, *, device=None, dtype=None):
        z = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return (z, z.clone() + 0.1)

    def project_input(self, x):
        return x @ self.w_x.t()

    def gates(self, xp, hp, state):
        a, b = (xp + hp).chunk(2, -1)
        s = torch.tanh(a) * torch.sigmoid(b) + 0.5 * state[1]
        return s * self.scale, (torch.tanh(s), s)


class GatesOnly(seqkit.Cell):
    """Declares gates without project_input: xp is the raw input."""

    recurrent_weight = "w"
    recurrent_bias = "b"

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.w = nn.Parameter(torch.randn(input_size, hidden_size) * 0.5)
        self.b = nn.Parameter(torch.randn(input_size))
        self.out = nn.Parameter(torch.randn(hidden_size, input_size) * 0.5)

    def gates(self, xp, hp, state):
        h = torch.tanh((xp * torch.sigmoid(hp)) @ self.out.t())
        return h, (h,)


CELLS = [LSTMCell, GRUCell, OutputIsNotState, GatesOnly]


def _naive(cell, x, lens, state):
    """Each sequence alone, step by step through ``cell.forward``: the definition."""
    length, n, _ = x.shape
    outs = x.new_zeros(length, n, cell.hidden_size)
    finals = []
    for i in range(n):
        s = tuple(t[i: i + 1] for t in state)
        for step in range(lens[i]):
            h, s = cell(x[step, i: i + 1], s)
            outs[step, i] = h[0]
        finals.append(s)
    return outs, tuple(torch.cat(parts) for parts in zip(*finals))


def _grads(run, cell, x, lens, state, seed=5):
    gen = torch.Generator().manual_seed(seed)
    x = x.clone().requires_grad_()
    state = tuple(s.clone().requires_grad_() for s in state)
    cell.zero_grad(set_to_none=True)
    out, final = run(cell, x, lens, state)
    loss = (out * torch.randn(out.shape, generator=gen, dtype=F64)).sum()
    loss = loss + sum((f * torch.randn(f.shape, generator=gen, dtype=F64)).sum() for f in final)
    loss.backward()
    grads = [x.grad, *(s.grad for s in state)]
    grads += [p.grad if p.grad is not None else torch.zeros_like(p) for p in cell.parameters()]
    return out.detach(), tuple(f.detach() for f in final), grads


@pytest.mark.parametrize("cell_cls", CELLS)
@pytest.mark.parametrize("lens", [[7, 7, 7], [7, 5, 5, 2, 0], [4, 1]])
def test_recurrence_equals_naive_loop(cell_cls, lens):
    torch.manual_seed(0)
    cell = cell_cls(3, 4).double()
    assert cell.declares_recurrence()
    length = 7
    x = torch.randn(length, len(lens), 3, dtype=F64)
    state = tuple(torch.randn(s.shape, dtype=F64) for s in cell.initial_state(len(lens), dtype=F64))
    fast = _grads(_recurrence, cell, x, lens, state)
    naive = _grads(_naive, cell, x, lens, state)
    loop = _grads(_autograd_loop, cell, x, lens, state)
    for ref in (naive, loop):
        torch.testing.assert_close(fast[0], ref[0])
        for a, b in zip(fast[1], ref[1]):
            torch.testing.assert_close(a, b)
        for a, b in zip(fast[2], ref[2]):
            torch.testing.assert_close(a, b)


def test_padding_outputs_are_zero_and_gradient_free():
    torch.manual_seed(0)
    cell = LSTMCell(3, 4).double()
    x = torch.randn(6, 3, 3, dtype=F64, requires_grad=True)
    out, _ = _recurrence(cell, x, [6, 4, 0], cell.initial_state(3, dtype=F64))
    assert torch.all(out[4:, 1] == 0) and torch.all(out[:, 2] == 0)
    out.sum().backward()
    assert torch.all(x.grad[4:, 1] == 0) and torch.all(x.grad[:, 2] == 0)


def test_backward_twice_with_retain_graph():
    torch.manual_seed(0)
    cell = GRUCell(3, 4).double()
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
    out, _ = _recurrence(cell, x, [5, 3], cell.initial_state(2, dtype=F64))
    (first,) = torch.autograd.grad(out.sum(), x, retain_graph=True)
    (second,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(first, second)


def test_inference_matches_training_forward():
    torch.manual_seed(0)
    enc = seqkit.Encoder(3, 4, num_layers=2, cell=OutputIsNotState, bidirectional=True, batch_first=True)
    x = torch.randn(3, 6, 3)
    lengths = torch.tensor([2, 6, 4])
    out_train, state_train = enc(x, lengths)
    assert out_train.requires_grad
    with torch.inference_mode():
        out_inf, state_inf = enc(x, lengths)
    torch.testing.assert_close(out_inf, out_train.detach())
    for a, b in zip(state_inf, state_train):
        torch.testing.assert_close(a, b.detach())


def test_frozen_parameters_and_input_without_grad():
    torch.manual_seed(0)
    cell = OutputIsNotState(3, 4).double()
    cell.scale.requires_grad_(False)
    x = torch.randn(5, 2, 3, dtype=F64)
    out, _ = _recurrence(cell, x, [5, 2], cell.initial_state(2, dtype=F64))
    out.sum().backward()
    assert cell.scale.grad is None and cell.w_h.grad is not None and cell.w_x.grad is not None


def test_active_rows():
    assert _active_rows([5, 3, 3, 0]) == [3, 3, 3, 1, 1]
    assert _active_rows([0, 0]) == []
    assert _active_rows([]) == []


@pytest.mark.parametrize("cell_cls", [LSTMCell, OutputIsNotState])
def test_two_thread_directions_equal_one_by_one(monkeypatch, cell_cls):
    torch.manual_seed(0)
    enc = seqkit.Encoder(3, 4, num_layers=2, cell=cell_cls, bidirectional=True, batch_first=True,
                         engine="generic").double()
    x = torch.randn(3, 6, 3, dtype=F64)
    lengths = torch.tensor([2, 6, 4])
    results = {}
    for threaded in (False, True):
        monkeypatch.setattr("seqkit.engine._use_threads", lambda x, _t=threaded: _t)
        enc.zero_grad(set_to_none=True)
        xr = x.clone().requires_grad_()
        out, state = enc(xr, lengths)
        (out.sum() + sum(s.sum() for s in state)).backward()
        with torch.no_grad():
            inference = enc(x, lengths)[0]
        results[threaded] = (out, state, xr.grad, [p.grad for p in enc.parameters()], inference)
    one, two = results[False], results[True]
    torch.testing.assert_close(two[0], one[0])
    for a, b in zip(two[1], one[1]):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(two[2], one[2])
    for a, b in zip(two[3], one[3]):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(two[4], one[4])


@pytest.mark.parametrize("run", [_recurrence, _autograd_loop])
@pytest.mark.parametrize("cell_cls", [LSTMCell, OutputIsNotState])
def test_recurrent_weight_override(run, cell_cls):
    """A tensor in place of the recurrent weight (weight drop) acts as that weight; its gradient
    is the parameter's would be; the parameter is neither read nor written."""
    torch.manual_seed(0)
    cell = cell_cls(3, 4).double()
    name = cell.recurrent_weight
    param = getattr(cell, name)
    before = param.detach().clone()
    source = torch.randn(param.shape, dtype=F64, requires_grad=True)
    override = source * 2  # a non-leaf, like F.dropout(weight)
    x = torch.randn(6, 3, 3, dtype=F64)
    lens = [6, 4, 1]
    state = cell.initial_state(3, dtype=F64)
    out, final = run(cell, x, lens, state, override)
    (out.sum() + sum(f.sum() for f in final)).backward()
    assert getattr(cell, name) is param and torch.equal(param, before)
    assert param.grad is None or torch.all(param.grad == 0)
    # the reference: a copy of the cell that holds the override as its parameter
    ref = cell_cls(3, 4).double()
    ref.load_state_dict(cell.state_dict())
    getattr(ref, name).data.copy_(override.detach())
    ref_out, ref_final = run(ref, x, lens, state)
    (ref_out.sum() + sum(f.sum() for f in ref_final)).backward()
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(source.grad, 2 * getattr(ref, name).grad)


@pytest.mark.parametrize("run", [_recurrence, _autograd_loop])
def test_full_lengths_as_none(run):
    """``lens=None`` (every row full, no per-row Python work) equals the explicit list."""
    torch.manual_seed(0)
    cell = GRUCell(3, 4).double()
    x = torch.randn(5, 3, 3, dtype=F64)
    state = tuple(torch.randn(s.shape, dtype=F64) for s in cell.initial_state(3, dtype=F64))
    out, final = run(cell, x, None, state)
    ref, ref_final = run(cell, x, [5, 5, 5], state)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(final[0], ref_final[0])
