"""Direction modes: "split" keeps each direction causal at every depth, "bidirectional" does not."""

from __future__ import annotations

import pytest
import torch

import seqkit
import seqkit.errors
from tests.plugins.mingru import MinGRUCell

F64 = torch.float64
H = 4
CASES = [("lstm", "fused"), ("gru", "auto"), ("lstm", "generic"), ("gru", "generic"), (MinGRUCell, "auto")]
LENGTHS = [None, [9, 4, 7, 1]]


def _encoder(cell, engine, layers, directions, **kw):
    torch.manual_seed(0)
    enc = seqkit.Encoder(3, H, num_layers=layers, cell=cell, directions=directions, batch_first=True,
                         engine=engine, **kw)
    return enc.double().eval()


def _perturbed(enc, x, lengths, t, future):
    """Outputs with every step after t (future) or before t (past) replaced by noise."""
    gen = torch.Generator().manual_seed(t)
    y = x.clone()
    part = y[:, t + 1:] if future else y[:, :t]
    part.copy_(torch.randn(part.shape, generator=gen, dtype=F64) * 3)
    with torch.no_grad():
        return enc(y, lengths)[0]


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cell,engine", CASES)
def test_split_forward_half_never_sees_the_future(cell, engine, layers, lengths):
    enc = _encoder(cell, engine, layers, "split")
    x = torch.randn(4, 9, 3, dtype=F64)
    lens = torch.tensor(lengths) if lengths else None
    with torch.no_grad():
        out = enc(x, lens)[0]  # (N, L, 2H)
    reverse_changed = False
    for t in range(8):
        moved = _perturbed(enc, x, lens, t, future=True)
        torch.testing.assert_close(moved[:, : t + 1, :H], out[:, : t + 1, :H], rtol=0, atol=1e-6)
        reverse_changed |= not torch.allclose(moved[:, : t + 1, H:], out[:, : t + 1, H:])
    assert reverse_changed, "the perturbation reached nothing: the test could not fail"


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cell,engine", CASES)
def test_split_reverse_half_never_sees_the_past(cell, engine, layers, lengths):
    enc = _encoder(cell, engine, layers, "split")
    x = torch.randn(4, 9, 3, dtype=F64)
    lens = torch.tensor(lengths) if lengths else None
    with torch.no_grad():
        out = enc(x, lens)[0]
    forward_changed = False
    for t in range(1, 9):
        moved = _perturbed(enc, x, lens, t, future=False)
        torch.testing.assert_close(moved[:, t:, H:], out[:, t:, H:], rtol=0, atol=1e-6)
        forward_changed |= not torch.allclose(moved[:, t:, :H], out[:, t:, :H])
    assert forward_changed, "the perturbation reached nothing: the test could not fail"


@pytest.mark.parametrize("engine", ["auto", "generic"])
def test_bidirectional_leaks_the_future_above_layer_0(engine):
    """The contrast: in "bidirectional" mode layer 1's forward cell reads layer 0's reverse output."""
    x = torch.randn(3, 7, 3, dtype=F64)
    one = _encoder("lstm", engine, 1, "bidirectional")
    with torch.no_grad():
        out = one(x)[0]
    torch.testing.assert_close(_perturbed(one, x, None, 2, True)[:, :3, :H], out[:, :3, :H], rtol=0, atol=1e-6)
    two = _encoder("lstm", engine, 2, "bidirectional")
    with torch.no_grad():
        out = two(x)[0]
    assert not torch.allclose(_perturbed(two, x, None, 2, True)[:, :3, :H], out[:, :3, :H])


@pytest.mark.parametrize("cell,gates", [("lstm", 4), ("gru", 3)])
def test_split_cells_read_their_own_direction(cell, gates):
    layers, inp = 3, 3
    split = seqkit.Encoder(inp, H, num_layers=layers, cell=cell, directions="split")
    bidir = seqkit.Encoder(inp, H, num_layers=layers, cell=cell, bidirectional=True)
    assert list(split.state_dict()) == list(bidir.state_dict())  # checkpoints name the same cells
    assert [c.input_size for c in split.cells.values()] == [inp, inp] + [H] * 2 * (layers - 1)
    assert [c.input_size for c in bidir.cells.values()] == [inp, inp] + [2 * H] * 2 * (layers - 1)

    def count(first_input, above_input):
        per_cell = lambda i: gates * H * (i + H) + 2 * gates * H  # noqa: E731
        return 2 * per_cell(first_input) + 2 * (layers - 1) * per_cell(above_input)

    assert sum(p.numel() for p in split.parameters()) == count(inp, H)
    assert sum(p.numel() for p in bidir.parameters()) == count(inp, 2 * H)
    assert split.output_size == bidir.output_size == 2 * H
    assert split.bidirectional and split.num_directions == 2


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("lengths", LENGTHS)
def test_split_is_two_independent_stacks(cell, lengths):
    """Forward half and forward states = a forward encoder of the l{i} cells; reverse likewise, on
    each sequence reversed within its length; the state is ordered l0 fwd, l0 rev, l1 fwd, ..."""
    layers = 3
    enc = _encoder(cell, "auto", layers, "split")
    fwd, rev = (_encoder(cell, "auto", layers, "forward") for _ in range(2))
    for i in range(layers):
        fwd.cells[f"l{i}"].load_state_dict(enc.cells[f"l{i}"].state_dict())
        rev.cells[f"l{i}"].load_state_dict(enc.cells[f"l{i}_reverse"].state_dict())
    x = torch.randn(4, 9, 3, dtype=F64)
    lens = lengths or [9] * 4
    flipped = x.clone()
    for row, n in enumerate(lens):
        flipped[row, :n] = x[row, :n].flip(0)
    out, state = enc(x, torch.tensor(lengths) if lengths else None)
    out_f, state_f = fwd(x, torch.tensor(lens))
    out_r, state_r = rev(flipped, torch.tensor(lens))
    for row, n in enumerate(lens):
        out_r[row, :n] = out_r[row, :n].flip(0).clone()
    torch.testing.assert_close(out, torch.cat([out_f, out_r], dim=-1))
    for s, f, r in zip(state, state_f, state_r):
        assert s.shape == (2 * layers, 4, H)
        torch.testing.assert_close(s[0::2], f)
        torch.testing.assert_close(s[1::2], r)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_split_fused_stacks_equal_layer_by_layer_and_generic(cell, dropout):
    torch.manual_seed(0)
    fused = seqkit.Encoder(3, H, num_layers=3, cell=cell, directions="split", dropout=dropout,
                           batch_first=True).double().eval()  # dropout set, but not in use
    generic = seqkit.Encoder(3, H, num_layers=3, cell=cell, directions="split", dropout=dropout,
                             batch_first=True, engine="generic").double().eval()
    generic.load_state_dict(fused.state_dict())
    x = torch.randn(4, 9, 3, dtype=F64)
    out, state = fused(x)  # all full length: two multi-layer fused calls (reverse on flipped time)
    layered, layered_state = fused._layers(x.transpose(0, 1), None, None, {})  # one layer at a time
    torch.testing.assert_close(out, layered.transpose(0, 1))
    out_g, state_g = generic(x)
    torch.testing.assert_close(out, out_g)
    for a, b, c in zip(state, layered_state, state_g):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)
    lengths = torch.tensor([9, 2, 5, 0])
    out_v, _ = fused(x, lengths)
    out_vg, _ = generic(x, lengths)
    torch.testing.assert_close(out_v, out_vg)
    out_v.sum().backward()
    out_vg.sum().backward()
    for (name, p), q in zip(fused.named_parameters(), generic.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_directions_argument():
    assert seqkit.Encoder(3, 4).directions == "forward"
    assert seqkit.Encoder(3, 4, bidirectional=True).directions == "bidirectional"
    split = seqkit.Encoder(3, 4, bidirectional=True, directions="split")
    assert split.directions == "split" and split.bidirectional
    assert "directions='split'" in repr(split)
    fwd = seqkit.Encoder(3, 4, directions="forward")
    assert not fwd.bidirectional and fwd.num_directions == 1 and "directions='forward'" in repr(fwd)
    with pytest.raises(seqkit.errors.SeqkitError, match="contradicts directions='forward'"):
        seqkit.Encoder(3, 4, bidirectional=True, directions="forward")
    with pytest.raises(seqkit.errors.SeqkitError, match="directions must be one of"):
        seqkit.Encoder(3, 4, directions="both")
