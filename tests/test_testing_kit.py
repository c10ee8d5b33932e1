"""The cell conformance kit passes the built-in cells and catches each kind of broken cell."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

import seqkit
import seqkit.testing
from seqkit.cells import GRUCell, LSTMCell
from seqkit.plugins import plugin_info


@pytest.mark.parametrize("cell_cls", [LSTMCell, GRUCell])
def test_builtin_cells_conform(cell_cls):
    report = seqkit.testing.check_cell(cell_cls)
    assert report.ok, str(report)
    assert [c.name for c in report.checks] == list(seqkit.testing.CHECKS)
    required = [c for c in report.checks if c.name != "export"]
    assert all(c.status == "pass" for c in required), str(report)


class TinyRNN(seqkit.Cell):
    """A correct Elman cell with only ``forward``: the slow path, still conforming."""

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.lin = nn.Linear(input_size + hidden_size, hidden_size)

    def forward(self, x, state):
        h = torch.tanh(self.lin(torch.cat([x, state[0]], -1)))
        return h, (h,)


def test_forward_only_cell_conforms_and_skips_hint_checks():
    report = seqkit.testing.assert_cell_conforms(TinyRNN)
    assert report["hoisting"].status == "skip" and report["engine"].status == "skip"
    assert report["padding"].status == "pass" and report["gradcheck"].status == "pass"


class BatchMixing(TinyRNN):
    """Broken: each row sees the batch mean, so the output depends on the batch's company."""

    def forward(self, x, state):
        h = torch.tanh(self.lin(torch.cat([x, state[0]], -1)) + state[0].mean(0, keepdim=True))
        return h, (h,)


class WrongStateShape(TinyRNN):
    """Broken: a state tensor that is not (N, H)."""

    def initial_state(self, batch_size, *, device=None, dtype=None):
        return (torch.zeros(batch_size, self.hidden_size + 1, device=device, dtype=dtype),)


class LyingHints(LSTMCell):
    """Broken: ``gates`` (what the fast engine runs) differs from ``forward``."""

    fused = None

    def forward_projected(self, xp, state):  # the true step, written out on its own
        return LSTMCell.gates(self, xp, torch.nn.functional.linear(state[0], self.weight_hh, self.bias_hh), state)

    def gates(self, xp, hp, state):
        h, (h2, c) = super().gates(xp, hp, state)
        return h * 0.5, (h2 * 0.5, c)


class _WrongGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v):
        return torch.tanh(v)

    @staticmethod
    def backward(ctx, g):
        return g  # should be g * (1 - tanh(v)^2)


class WrongGradient(TinyRNN):
    """Broken: a hand-written backward that is wrong."""

    def forward(self, x, state):
        h = _WrongGrad.apply(self.lin(torch.cat([x, state[0]], -1)))
        return h, (h,)


class Stateful(TinyRNN):
    """Broken: keeps a step counter on the module, so state carried across calls is not all."""

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.calls = 0

    def forward(self, x, state):
        self.calls += 1
        h, new = super().forward(x, state)
        return h + 1e-3 * self.calls, (new[0] + 1e-3 * self.calls,)


@pytest.mark.parametrize(
    "cell_cls,check,words",
    [
        (BatchMixing, "padding", "in the batch vs alone"),
        (WrongStateShape, "shapes", "initial_state[0] is (4, 8)"),
        (LyingHints, "hoisting", "gates(xp, linear(state[0], W, b), state) vs forward"),
        (WrongGradient, "gradcheck", "gradients differ"),
        (Stateful, "determinism", "different outputs"),
        (Stateful, "state", "two calls vs one"),
    ],
)
def test_broken_cells_fail_with_a_readable_reason(cell_cls, check, words):
    report = seqkit.testing.check_cell(cell_cls)
    assert not report.ok
    assert report[check].status == "fail", str(report)
    assert words in report[check].detail, str(report)
    with pytest.raises(AssertionError) as info:
        seqkit.testing.assert_cell_conforms(cell_cls)
    message = str(info.value)
    assert cell_cls.__name__ in message and f"FAIL  {check}" in message


def test_lying_hints_also_fail_the_engine_check():
    class LyingRecurrence(LSTMCell):
        fused = None

        def forward_projected(self, xp, state):  # the step loop uses this, the engine gates
            h, (h2, c) = super().forward_projected(xp, state)
            return h * 0.5, (h2 * 0.5, c)

    report = seqkit.testing.check_cell(LyingRecurrence, only=["engine"])
    assert report["engine"].status == "fail" and "fast engine vs step loop" in report["engine"].detail


def test_only_runs_the_named_checks_and_rejects_unknown_names():
    report = seqkit.testing.check_cell(LSTMCell, only=["shapes"])
    assert [c.name for c in report.checks] == ["construct", "shapes"]
    with pytest.raises(ValueError, match="unknown check"):
        seqkit.testing.check_cell(LSTMCell, only=["speed"])


def test_a_non_cell_fails_construction_cleanly():
    report = seqkit.testing.check_cell(nn.Linear)
    assert [c.status for c in report.checks] == ["fail"]
    assert "not a seqkit.Cell subclass" in report["construct"].detail


def test_registered_plugin_is_temporary():
    plugin = types.ModuleType("tiny_rnn_plugin")

    @seqkit.hookimpl
    def register_cells(register):
        register("tiny-rnn", TinyRNN)

    plugin.register_cells = register_cells
    with seqkit.testing.registered_plugin(plugin, name="tiny_rnn_plugin"):
        enc = seqkit.Encoder(3, 4, cell="tiny-rnn")
        assert isinstance(enc.cells["l0"], TinyRNN)
        assert any(i.cells == ["tiny-rnn"] for i in plugin_info())
    with pytest.raises(seqkit.errors.SeqkitError, match="unknown cell 'tiny-rnn'"):
        seqkit.Encoder(3, 4, cell="tiny-rnn")
