"""The shared encoder: exact variable lengths, fused == generic, torch parity."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import seqkit
import seqkit.errors
from seqkit.cells import LSTMCell


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
)
def test_padding_invariance(lengths, pad, generic):
    torch.manual_seed(1)
    enc = seqkit.Encoder(3, 4, num_layers=2, bidirectional=True, batch_first=True,
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
