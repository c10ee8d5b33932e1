"""The shared encoder: exact variable lengths, fused == generic, torch parity."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import seqkit
import seqkit.errors
from seqkit.cells import LSTMCell
from seqkit.regularize import embedding_dropout, locked_dropout
from tests.plugins.mingru import MinGRUCell


def _pair(cell: str, **kw):
    torch.manual_seed(0)
    fused = seqkit.Encoder(5, 7, cell=cell, batch_first=True, **kw).double()
    generic = seqkit.Encoder(5, 7, cell=cell, batch_first=True, engine="generic", **kw).double()
    generic.load_state_dict(fused.state_dict())
    assert fused.fused and not generic.fused
    return fused, generic


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("layers,bidir", [(1, False), (2, True), (3, True)])
def test_fused_and_generic_agree(cell, layers, bidir):
    fused, generic = _pair(cell, num_layers=layers, bidirectional=bidir)
    x = torch.randn(4, 9, 5, dtype=torch.float64)
    lengths = torch.tensor([9, 3, 7, 0])
    out_f, st_f = fused(x, lengths)
    out_g, st_g = generic(x, lengths)
    assert out_f.shape == (4, 9, 7 * (2 if bidir else 1))
    torch.testing.assert_close(out_f, out_g)
    for a, b in zip(st_f, st_g):
        assert a.shape == (layers * (2 if bidir else 1), 4, 7)
        torch.testing.assert_close(a, b)
    # the gradients agree too
    out_f.sum().backward()
    out_g.sum().backward()
    for (name, p), q in zip(fused.named_parameters(), generic.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=0, max_value=8), min_size=1, max_size=6),
    pad=st.integers(min_value=0, max_value=2),
    cell=st.sampled_from(["lstm", "gru"]),
    layers=st.integers(min_value=1, max_value=2),
    directions=st.sampled_from(["forward", "bidirectional", "split"]),
    carried=st.booleans(),
)
@example(lengths=[8, 1, 2, 3], pad=1, cell="lstm", layers=2, directions="bidirectional", carried=False)
@example(lengths=[5, 1, 1], pad=0, cell="gru", layers=2, directions="forward", carried=True)
@example(lengths=[5, 1, 1], pad=0, cell="lstm", layers=1, directions="forward", carried=True)
def test_inference_runs_packed_and_agrees_with_the_frozen_path(lengths, pad, cell, layers, directions, carried):
    """In eval mode a batch that is mostly padding runs packed (no padded step computed); its
    outputs and final states equal the frozen-padding path's, which training keeps using."""
    torch.manual_seed(3)
    enc = seqkit.Encoder(3, 4, num_layers=layers, cell=cell, directions=directions, batch_first=True).double()
    total = max(lengths) + pad or 1  # (a batch of no steps at all is not this test's business)
    x = torch.randn(len(lengths), total, 3, dtype=torch.float64)
    lens = torch.tensor(lengths)
    state = None
    if carried and directions == "forward":
        state = tuple(torch.randn(layers, len(lengths), 4, dtype=torch.float64) for _ in range(1 + (cell == "lstm")))
    packed_calls = []
    real = enc._packed_stack
    enc._packed_stack = lambda *a: packed_calls.append(1) or real(*a)

    out, final = enc(x, lens, state)  # training mode: never packed
    assert not packed_calls
    enc.eval()
    with torch.no_grad():
        out_p, final_p = enc(x, lens, state)
    mostly_padding = sum(lengths) < 0.6 * total * len(lengths)
    assert len(packed_calls) == (mostly_padding and min(lengths) > 0 and directions != "split")
    torch.testing.assert_close(out_p, out.detach())
    for a, b in zip(final_p, final):
        torch.testing.assert_close(a, b.detach())


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_inference_runs_both_directions_in_one_call(cell, layers, dtype):
    """In eval mode an unpacked bidirectional batch runs each layer's two directions in one
    fused call over the padding as it is (the reverse direction starts on the padded end, which
    leaves a zero state at zero); training runs each direction over rows reversed within their
    own lengths. Same outputs, padding zero whatever it held, same final states."""
    torch.manual_seed(2)
    enc = seqkit.Encoder(5, 6, num_layers=layers, cell=cell, bidirectional=True, batch_first=True)
    if dtype == torch.float64:
        enc = enc.double()
    else:
        enc.inference_dtype = dtype
    x = torch.randn(4, 8, 5, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    lens = torch.tensor([8, 3, 0, 6])  # an empty row: never packed
    x[1, 3:] = float("nan")
    with torch.no_grad():
        out, final = enc(x, lens)  # training mode (no dropout here): one direction at a time
        calls = []
        one_call = enc._both_directions
        enc._both_directions = lambda *a: calls.append(1) or one_call(*a)
        enc.eval()
        if dtype != torch.float64:  # the reference in bf16 too
            with torch.autocast("cpu", dtype=dtype):
                enc.train()
                out, final = enc(x, lens)
                enc.eval()
        out_e, final_e = enc(x, lens)
    assert calls == [1]
    assert not out_e[1, 3:].any() and not out_e[2].any()
    exact = {} if dtype == torch.float64 else {"rtol": 0.02, "atol": 0.02}
    torch.testing.assert_close(out_e, out.to(out_e.dtype), **exact)
    for a, b in zip(final_e, final):
        assert a.shape == (2 * layers, 4, 6)
        torch.testing.assert_close(a, b.to(a.dtype), **exact)


class _StartsWarm(LSTMCell):
    """A fused LSTM cell whose initial state is not zero."""

    def initial_state(self, batch_size, *, device=None, dtype=None):
        h = torch.full((batch_size, self.hidden_size), 0.5, device=device, dtype=dtype)
        return (h, -h)


def test_one_call_is_not_taken_from_a_state_that_is_not_zero():
    """The one-call path's reverse direction crosses the padding first, which keeps an LSTM at a
    zero state but not at any other; such a cell runs one direction at a time, as in training."""
    torch.manual_seed(4)
    enc = seqkit.Encoder(3, 4, num_layers=2, cell=_StartsWarm, bidirectional=True, batch_first=True).double()
    assert enc.fused
    x, lens = torch.randn(3, 6, 3, dtype=torch.float64), torch.tensor([6, 2, 0])
    with torch.no_grad():
        out, final = enc(x, lens)
        enc.eval()
        out_e, final_e = enc(x, lens)
    torch.testing.assert_close(out_e, out)
    for a, b in zip(final_e, final):
        torch.testing.assert_close(a, b)
    assert enc._both_directions(x.transpose(0, 1), [6, 2, 0]) is None


@pytest.mark.parametrize("kernel", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("biases", [False, True])
def test_even_width_computes_the_same(kernel, bidirectional, biases):
    """The zero column that gives oneDNN's bf16 kernel an even input width (odd ones run ~5x
    slower) pads the input and every first-layer input weight, and nothing else."""
    from seqkit.encoder import _even_width
    from seqkit.export_ops import call_kernel

    torch.manual_seed(0)
    gates, i, h, layers = (4 if kernel == "lstm" else 3), 5, 4, 2
    d = 2 if bidirectional else 1
    params = []
    for layer in range(layers):
        for _ in range(d):
            params += [torch.randn(gates * h, i if layer == 0 else d * h, dtype=torch.float64),
                       torch.randn(gates * h, h, dtype=torch.float64)]
            params += [torch.randn(gates * h, dtype=torch.float64) for _ in range(2 * biases)]
    args = (biases, layers, 0.0, False, bidirectional, False)
    x = torch.randn(6, 3, i, dtype=torch.float64)
    state = tuple(torch.randn(layers * d, 3, h, dtype=torch.float64) for _ in range(1 + (kernel == "lstm")))
    x2, params2 = _even_width(x, params, args)
    assert x2.shape[-1] == i + 1 and not x2[..., -1].any()
    assert [tuple(p.shape) for p in params2] != [tuple(p.shape) for p in params]
    out, final = call_kernel(kernel, x, state, params, args)
    out2, final2 = call_kernel(kernel, x2, state, params2, args)
    torch.testing.assert_close(out2, out)
    for a, b in zip(final2, final):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("directions", ["forward", "bidirectional", "split"])
def test_bf16_inference_follows_fp32(cell, directions):
    """``inference_dtype=torch.bfloat16``: eval-mode recurrences in bf16 (an odd input width
    too), outputs back in fp32 and close to fp32's, padding still zero, never packed on CPU;
    training ignores it; a changed weight is seen (the kept bf16 copy is refreshed)."""
    torch.manual_seed(1)
    enc = seqkit.Encoder(7, 16, num_layers=2, cell=cell, directions=directions, batch_first=True).eval()
    x = torch.randn(5, 9, 7)
    lens = torch.tensor([9, 2, 3, 1, 2])  # mostly padding: fp32 eval would pack (not split)
    with torch.no_grad():
        ref, ref_state = enc(x, lens)
        enc.inference_dtype = torch.bfloat16
        packed, enc._packed_stack = enc._packed_stack, lambda *a: pytest.fail("bf16 on CPU must not run packed")
        out, state = enc(x, lens)
        assert out.dtype == torch.float32 and all(s.dtype == torch.float32 for s in state)
        torch.testing.assert_close(out, ref, atol=0.05, rtol=0.05)
        for a, b in zip(state, ref_state):
            torch.testing.assert_close(a, b, atol=0.05, rtol=0.05)
        assert (out - ref).abs().max() > 0  # it did run in bf16
        assert not out[1, 2:].any()
        weight = enc.cells["l0"].weight_hh
        weight.mul_(0.0)
        changed, _ = enc(x, lens)
        enc.inference_dtype, enc._packed_stack = None, packed
        torch.testing.assert_close(changed, enc(x, lens)[0], atol=0.05, rtol=0.05)
        assert (changed - out).abs().max() > 0.01
    enc.train()
    enc.inference_dtype = torch.bfloat16
    trained, _ = enc(x, lens)
    enc.inference_dtype = None
    torch.testing.assert_close(trained, enc(x, lens)[0], rtol=0, atol=0)


def test_matches_nn_lstm_on_full_length():
    torch.manual_seed(0)
    ref = nn.LSTM(5, 7, num_layers=2, bidirectional=True, batch_first=True)
    enc = seqkit.Encoder(5, 7, num_layers=2, bidirectional=True, batch_first=True)
    for name, cell in enc.cells.items():
        layer, suffix = name[1:].split("_", 1) if "_" in name else (name[1:], "")
        tail = f"_l{layer}" + ("_reverse" if suffix else "")
        for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, w).data.copy_(getattr(ref, w + tail))
    x = torch.randn(3, 6, 5)
    out_r, (h_r, c_r) = ref(x)
    out_e, (h_e, c_e) = enc(x)
    torch.testing.assert_close(out_e, out_r)
    torch.testing.assert_close(h_e, h_r)
    torch.testing.assert_close(c_e, c_r)
    # and on variable lengths it matches nn.LSTM over packed sequences (the exact reference)
    lengths = torch.tensor([6, 2, 4])
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out_p, (h_p, c_p) = ref(packed)
    out_p, _ = nn.utils.rnn.pad_packed_sequence(out_p, batch_first=True, total_length=6)
    out_v, (h_v, c_v) = enc(x, lengths)
    torch.testing.assert_close(out_v, out_p)
    torch.testing.assert_close(h_v, h_p)
    torch.testing.assert_close(c_v, c_p)


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=1, max_value=8), min_size=1, max_size=5),
    pad=st.integers(min_value=0, max_value=3),
    generic=st.booleans(),
    directions=st.sampled_from(["bidirectional", "split"]),
)
def test_padding_invariance(lengths, pad, generic, directions):
    torch.manual_seed(1)
    enc = seqkit.Encoder(3, 4, num_layers=2, directions=directions, batch_first=True,
                         engine="generic" if generic else "auto").double().eval()
    total = max(lengths) + pad
    x = torch.randn(len(lengths), total, 3, dtype=torch.float64)
    out, state = enc(x, torch.tensor(lengths))
    for i, n in enumerate(lengths):
        alone, alone_state = enc(x[i : i + 1, :n], torch.tensor([n]))
        torch.testing.assert_close(out[i : i + 1, :n], alone)
        assert torch.all(out[i, n:] == 0)
        for s, a in zip(state, alone_state):
            torch.testing.assert_close(s[:, i : i + 1], a)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("engine", ["auto", "generic"])
@pytest.mark.parametrize("fill", [float("nan"), 1e5])
def test_whatever_the_padding_holds_changes_nothing(cell, engine, fill):
    torch.manual_seed(2)
    enc = seqkit.Encoder(3, 4, num_layers=2, cell=cell, bidirectional=True, batch_first=True,
                         engine=engine).double().eval()
    lengths = torch.tensor([6, 4, 2])
    x = torch.randn(3, 6, 3, dtype=torch.float64)
    pad = torch.arange(6)[None, :] >= lengths[:, None]  # (N, L)
    out, state = enc(x.masked_fill(pad[..., None], 0.0), lengths)
    out_f, state_f = enc(x.masked_fill(pad[..., None], fill), lengths)
    torch.testing.assert_close(out_f, out)
    for s, s_f in zip(state if cell == "lstm" else (state,), state_f if cell == "lstm" else (state_f,)):
        torch.testing.assert_close(s_f, s)


def test_time_major_and_initial_state():
    enc = seqkit.Encoder(3, 4, num_layers=1, cell="gru")
    x = torch.randn(6, 2, 3)  # (L, N, I)
    out, (h,) = enc(x)
    assert out.shape == (6, 2, 4) and h.shape == (1, 2, 4)
    # carrying state across two halves equals one long call
    out1, s1 = enc(x[:3])
    out2, s2 = enc(x[3:], state=s1)
    torch.testing.assert_close(torch.cat([out1, out2]), out)
    torch.testing.assert_close(s2[0], h)


def test_dropout_only_in_training():
    enc = seqkit.Encoder(3, 4, num_layers=2, dropout=0.5, batch_first=True)
    x = torch.randn(2, 5, 3)
    enc.eval()
    torch.testing.assert_close(enc(x)[0], enc(x)[0])
    enc.train()
    assert not torch.equal(enc(x)[0], enc(x)[0])


def test_custom_cell_class_runs_generic():
    class Plain(LSTMCell):
        fused = None

    enc = seqkit.Encoder(3, 4, cell=Plain, bidirectional=True, batch_first=True)
    assert not enc.fused
    out, (h, c) = enc(torch.randn(2, 5, 3), torch.tensor([5, 2]))
    assert out.shape == (2, 5, 8) and c.shape == (2, 2, 4)


def test_bad_inputs_are_clear():
    enc = seqkit.Encoder(3, 4, batch_first=True)
    with pytest.raises(seqkit.errors.SeqkitError, match="expects input"):
        enc(torch.randn(2, 5, 9))
    with pytest.raises(seqkit.errors.SeqkitError, match="lengths must lie"):
        enc(torch.randn(2, 5, 3), torch.tensor([6, 1]))
    with pytest.raises(seqkit.errors.SeqkitError, match="unknown cell 'nope'"):
        seqkit.Encoder(3, 4, cell="nope")


# Carried state: one call over L steps equals two calls with the state carried across, and a
# wrong state is one clear error (the fused kernel would crash, the generic engine misbehave).

STATE_CASES = [("lstm", "auto"), ("gru", "auto"), ("lstm", "generic"), ("gru", "generic"), (MinGRUCell, "auto")]


@pytest.mark.parametrize("cell,engine", STATE_CASES)
@pytest.mark.parametrize("with_lengths", [False, True])
def test_carried_state_equals_one_call(cell, engine, with_lengths):
    torch.manual_seed(0)
    enc = seqkit.Encoder(3, 4, num_layers=2, cell=cell, batch_first=True, engine=engine).double()
    x = torch.randn(3, 16, 3, dtype=torch.float64)
    full = (lambda n: torch.full((3,), n)) if with_lengths else (lambda n: None)
    out, state = enc(x, full(16))
    out1, state1 = enc(x[:, :10], full(10))
    out2, state2 = enc(x[:, 10:], full(6), state1)
    torch.testing.assert_close(torch.cat([out1, out2], dim=1), out)
    for a, b in zip(state2, state):
        assert a.shape == (2, 3, 4)
        torch.testing.assert_close(a, b)
    # the second call on variable lengths (rows sorted inside): each row as if run alone
    out3, state3 = enc(x[:, 10:], torch.tensor([2, 6, 4]), state1)
    for i, n in enumerate([2, 6, 4]):
        alone, alone_state = enc(x[i: i + 1, : 10 + n])
        torch.testing.assert_close(out3[i: i + 1, :n], alone[:, 10:])
        for a, b in zip(state3, alone_state):
            torch.testing.assert_close(a[:, i: i + 1], b)
    # the carried state is part of the graph: gradients reach the first half's input
    xr = x.clone().requires_grad_()
    _, s1 = enc(xr[:, :10])
    enc(xr[:, 10:], None, s1)[0].sum().backward()
    assert xr.grad[:, :10].abs().sum() > 0


@pytest.mark.parametrize("cell,engine", [("lstm", "auto"), ("gru", "auto"), ("lstm", "generic")])
def test_wrong_state_is_one_clear_error(cell, engine):
    enc = seqkit.Encoder(3, 4, num_layers=2, cell=cell, batch_first=True, engine=engine)
    x = torch.randn(5, 6, 3)
    count = 2 if cell == "lstm" else 1
    good = tuple(torch.zeros(2, 5, 4) for _ in range(count))
    enc(x, None, good)
    wrong = {
        "wrong count": (tuple(torch.zeros(2, 5, 4) for _ in range(3 - count)), rf"expected a tuple of {count}"),
        "a bare tensor": (torch.zeros(2, 5, 4), rf"expected a tuple of {count} .*got a Tensor"),
        "wrong layers": (tuple(torch.zeros(1, 5, 4) for _ in range(count)), r"\(2, 5, 4\) .*got shape \(1, 5, 4\)"),
        "wrong batch": (tuple(torch.zeros(2, 4, 4) for _ in range(count)), r"\(2, 5, 4\) .*got shape \(2, 4, 4\)"),
        "wrong hidden": (tuple(torch.zeros(2, 5, 8) for _ in range(count)), r"\(2, 5, 4\) .*got shape \(2, 5, 8\)"),
        "integers": (tuple(torch.zeros(2, 5, 4, dtype=torch.long) for _ in range(count)), "got dtype torch.int64"),
    }
    for what, (state, message) in wrong.items():
        with pytest.raises(seqkit.errors.SeqkitError, match=message):
            enc(x, None, state)
            pytest.fail(what)
    with pytest.raises(seqkit.errors.SeqkitError, match="got shape"):  # with lengths (sorting) too
        enc(x, torch.tensor([6, 2, 3, 1, 6]), tuple(torch.zeros(2, 4, 4) for _ in range(count)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for a second device")
def test_state_on_another_device_is_an_error():
    enc = seqkit.Encoder(3, 4, num_layers=2, batch_first=True)
    state = tuple(torch.zeros(2, 5, 4, device="cuda") for _ in range(2))
    with pytest.raises(seqkit.errors.SeqkitError, match=r"on cpu, got a tensor on cuda:0"):
        enc(torch.randn(5, 6, 3), None, state)


@pytest.mark.parametrize("directions", ["bidirectional", "split"])
@pytest.mark.parametrize("engine", ["auto", "generic"])
def test_state_into_two_directions_is_an_error(directions, engine):
    enc = seqkit.Encoder(3, 4, num_layers=2, directions=directions, batch_first=True, engine=engine)
    state = tuple(torch.zeros(4, 5, 4) for _ in range(2))  # (num_layers * D, N, H): the shape is right
    with pytest.raises(seqkit.errors.SeqkitError, match="carried state needs directions='forward'"):
        enc(torch.randn(5, 6, 3), None, state)


# Regularisation (AWD-LSTM): locked dropout, input/output dropout, weight drop.

REGULARISED = dict(dropout=0.4, locked_dropout=True, input_dropout=0.3, output_dropout=0.2, weight_drop=0.5)


@pytest.mark.parametrize("engine", ["auto", "generic"])
@pytest.mark.parametrize("directions", ["forward", "split"])
def test_regularisation_changes_nothing_in_eval(engine, directions):
    torch.manual_seed(0)
    plain = seqkit.Encoder(3, 4, num_layers=3, directions=directions, batch_first=True, engine=engine)
    reg = seqkit.Encoder(3, 4, num_layers=3, directions=directions, batch_first=True, engine=engine,
                         **REGULARISED)
    reg.load_state_dict(plain.state_dict())
    plain.eval(), reg.eval()
    x = torch.randn(3, 7, 3)
    for lengths in (None, torch.tensor([7, 3, 5])):
        torch.testing.assert_close(reg(x, lengths)[0], plain(x, lengths)[0], rtol=0, atol=0)
    reg.train()
    assert not torch.equal(reg(x)[0], plain(x)[0])


def _dropped_copy(enc, p, seed):
    """An eval-mode copy of ``enc`` whose weight_hh are the DropConnect draws of ``seed``."""
    torch.manual_seed(seed)
    masks = {key: F.dropout(c.weight_hh, p, training=True) for key, c in enc.cells.items()}
    copy = seqkit.Encoder(3, 4, num_layers=enc.num_layers, directions=enc.directions, batch_first=True)
    copy.load_state_dict(enc.state_dict())
    for key, w in masks.items():
        copy.cells[key].weight_hh.data.copy_(w.detach())
    return copy.to(w.dtype).eval(), masks


@pytest.mark.parametrize("engine", ["auto", "generic"])
@pytest.mark.parametrize("lengths", [None, [7, 3, 5]])
def test_weight_drop(engine, lengths):
    torch.manual_seed(0)
    enc = seqkit.Encoder(3, 4, num_layers=2, directions="split", batch_first=True, engine=engine,
                         weight_drop=0.5).double().train()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    x = torch.randn(3, 7, 3, dtype=torch.float64)
    lens = torch.tensor(lengths) if lengths else None
    torch.manual_seed(7)
    out, _ = enc(x, lens)
    # exactly an LSTM whose recurrent weights are that call's dropped copies
    copy, dropped = _dropped_copy(enc, 0.5, seed=7)
    torch.testing.assert_close(out, copy(x, lens)[0])
    assert not torch.allclose(out, enc.eval()(x, lens)[0])
    enc.train()
    for key, value in enc.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed in place"
    torch.manual_seed(7)
    assert torch.equal(enc(x, lens)[0], out)  # same seed, same masks
    # the gradient reaches the parameter, through the mask
    out.sum().backward()
    for key, c in enc.cells.items():
        grad, kept = c.weight_hh.grad, dropped[key] != 0
        assert torch.all(grad[~kept] == 0) and grad[kept].abs().sum() > 0, key


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("lengths", [None, [7, 3, 5, 0]])
def test_weight_drop_fused_and_generic_agree_under_one_seed(cell, lengths):
    fused, generic = _pair(cell, num_layers=2, bidirectional=True, weight_drop=0.3)
    x = torch.randn(4, 7, 5, dtype=torch.float64)
    lens = torch.tensor(lengths) if lengths else None
    torch.manual_seed(3)
    out_f, st_f = fused(x, lens)
    torch.manual_seed(3)
    out_g, st_g = generic(x, lens)
    torch.testing.assert_close(out_f, out_g)
    for a, b in zip(st_f, st_g):
        torch.testing.assert_close(a, b)
    out_f.sum().backward()
    out_g.sum().backward()
    for (name, p), q in zip(fused.named_parameters(), generic.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_weight_drop_needs_a_recurrent_weight():
    with pytest.raises(seqkit.errors.SeqkitError, match="MinGRUCell declares none"):
        seqkit.Encoder(3, 4, cell=MinGRUCell, weight_drop=0.5)
    with pytest.raises(seqkit.errors.SeqkitError, match=r"weight_drop must be in \[0, 1\)"):
        seqkit.Encoder(3, 4, weight_drop=1.0)


@pytest.mark.parametrize("engine", ["auto", "generic"])
def test_locked_dropout_between_layers_is_one_mask_per_sequence(engine):
    """A 2-layer encoder in training = layer 0, times one (1, N, H) mask, then layer 1."""
    torch.manual_seed(0)
    enc = seqkit.Encoder(3, 4, num_layers=2, dropout=0.5, locked_dropout=True, engine=engine).double()
    layer = [seqkit.Encoder(3 if i == 0 else 4, 4).double().eval() for i in range(2)]
    for i in range(2):
        layer[i].cells["l0"].load_state_dict(enc.cells[f"l{i}"].state_dict())
    x = torch.randn(7, 3, 3, dtype=torch.float64)  # (L, N, I)
    torch.manual_seed(5)
    out, _ = enc(x)
    torch.manual_seed(5)
    mask = torch.empty(1, 3, 4, dtype=torch.float64).bernoulli_(0.5).div_(0.5)
    below, _ = layer[0](x)
    torch.testing.assert_close(out, layer[1](below * mask)[0])


@pytest.mark.parametrize("locked", [True, False])
def test_output_dropout_mask_is_locked_over_time(locked):
    torch.manual_seed(0)
    enc = seqkit.Encoder(3, 16, output_dropout=0.5, locked_dropout=locked, batch_first=True)
    x = torch.randn(4, 9, 3)
    ref = enc.eval()(x)[0]
    out = enc.train()(x)[0]
    kept = out != 0  # (N, L, H)
    torch.testing.assert_close(out[kept], ref[kept] * 2)
    assert 0 < kept.float().mean() < 1
    constant = bool(torch.all(kept == kept[:, :1]))
    assert constant == locked


def test_input_dropout_is_locked_too():
    torch.manual_seed(0)
    enc = seqkit.Encoder(8, 4, input_dropout=0.5, locked_dropout=True, batch_first=True).double()
    x = torch.randn(3, 6, 8, dtype=torch.float64)
    torch.manual_seed(2)
    out, _ = enc(x)
    torch.manual_seed(2)
    mask = torch.empty(1, 3, 8, dtype=torch.float64).bernoulli_(0.5).div_(0.5)  # (1, N, I) time-major
    torch.testing.assert_close(out, enc.eval()(x * mask.transpose(0, 1))[0])


@pytest.mark.parametrize("batch_first", [False, True])
def test_locked_dropout_function(batch_first):
    x = torch.ones(6, 5, 40)
    torch.manual_seed(0)
    out = locked_dropout(x, 0.5, training=True, batch_first=batch_first)
    time_dim = 1 if batch_first else 0
    first = out.narrow(time_dim, 0, 1)
    assert torch.equal(out, first.expand_as(out))  # one mask for every step
    assert set(out.unique().tolist()) == {0.0, 2.0}
    assert locked_dropout(x, 0.5, training=False) is x
    with pytest.raises(seqkit.errors.SeqkitError, match="must be in"):
        locked_dropout(x, 1.0, training=True)


def test_embedding_dropout_drops_whole_words():
    torch.manual_seed(0)
    emb = nn.Embedding(50, 8, padding_idx=0)
    weight = emb.weight.detach().clone()
    ids = torch.arange(50).repeat(3, 1)  # (N, L): every word three times
    out = embedding_dropout(emb, ids, 0.5, training=True)  # (N, L, E)
    assert out.shape == (3, 50, 8)
    assert torch.equal(emb.weight, weight)  # the parameter is untouched
    dropped = (out[0] == 0).all(-1)  # (V,)
    assert 0 < dropped.sum() < 50
    for row in out:  # a word type is dropped everywhere or nowhere
        torch.testing.assert_close(row, torch.where(dropped[:, None], 0.0, weight * 2))
    out.sum().backward()
    assert torch.all(emb.weight.grad[dropped] == 0) and torch.all(emb.weight.grad[~dropped][1:] != 0)
    torch.testing.assert_close(embedding_dropout(emb, ids, 0.5, training=False), emb(ids))
    torch.testing.assert_close(embedding_dropout(emb, ids, 0.0, training=True, scale=3.0), emb(ids) * 3)
