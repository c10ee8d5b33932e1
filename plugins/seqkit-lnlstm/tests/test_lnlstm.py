"""The layer-normalised LSTM keeps seqkit's cell contract, computes Ba et al.'s equations,
and is found through its entry point once installed."""

from __future__ import annotations

import importlib.metadata

import pytest
import seqkit_lnlstm
import torch
from seqkit_lnlstm import LayerNormLSTMCell

import seqkit
import seqkit.testing


@pytest.mark.parametrize("check", seqkit.testing.CHECKS)
def test_conformance(check):
    report = seqkit.testing.assert_cell_conforms(LayerNormLSTMCell, only=[check])
    assert report[check].status in ("pass", "info")


def _norm(v, gain, bias=None, eps=1e-5):
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    out = (v - mean) / torch.sqrt(var + eps) * gain
    return out if bias is None else out + bias


def test_matches_the_paper_equations():
    torch.manual_seed(0)
    cell = LayerNormLSTMCell(3, 4).double()
    with torch.no_grad():  # non-trivial gains and biases
        for p in (cell.ln_ih_weight, cell.bias, cell.ln_hh_weight, cell.ln_c_weight, cell.ln_c_bias):
            p.uniform_(-1.5, 1.5)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    enc = seqkit.Encoder(3, 4, cell=LayerNormLSTMCell).double()
    enc.cells["l0"].load_state_dict(cell.state_dict())
    out, (h_n, c_n) = enc(x)
    h = c = torch.zeros(2, 4, dtype=torch.float64)
    for t in range(5):
        pre = (_norm(x[t] @ cell.weight_ih.T, cell.ln_ih_weight, cell.bias)
               + _norm(h @ cell.weight_hh.T, cell.ln_hh_weight))
        i, f, g, o = pre.chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(_norm(c, cell.ln_c_weight, cell.ln_c_bias))
        torch.testing.assert_close(out[t], h.detach())
    torch.testing.assert_close(c_n[0], c.detach())


def test_registers_through_the_hook():
    with seqkit.testing.registered_plugin(seqkit_lnlstm):
        enc = seqkit.Encoder(3, 4, cell="lnlstm")
        assert isinstance(enc.cells["l0"], LayerNormLSTMCell) and not enc.fused


def test_found_through_its_entry_point():
    try:
        infos = seqkit.testing.installed_plugin_info("seqkit-lnlstm")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("seqkit-lnlstm is not installed: pip install --no-deps -e plugins/seqkit-lnlstm")
    eps = [ep for ep in importlib.metadata.entry_points(group="seqkit") if ep.name == "lnlstm"]
    assert [ep.value for ep in eps] == ["seqkit_lnlstm"]
    assert [(i["name"], i["version"], i["cells"]) for i in infos] == [("lnlstm", "0.1.0", ["lnlstm"])]
