"""The peephole cell keeps seqkit's cell contract, computes Gers & Schmidhuber's equations,
and is found through its entry point once installed."""

from __future__ import annotations

import importlib.metadata

import pytest
import seqkit_peephole
import torch
from seqkit_peephole import PeepholeLSTMCell
from torch import nn

import seqkit
import seqkit.testing


@pytest.mark.parametrize("check", seqkit.testing.CHECKS)
def test_conformance(check):
    report = seqkit.testing.assert_cell_conforms(PeepholeLSTMCell, only=[check])
    assert report[check].status in ("pass", "info")


def test_zero_peepholes_is_torch_lstm_and_peepholes_matter():
    torch.manual_seed(0)
    ref = nn.LSTM(3, 4, batch_first=True)
    enc = seqkit.Encoder(3, 4, cell=PeepholeLSTMCell, batch_first=True)
    cell = enc.cells["l0"]
    with torch.no_grad():
        cell.weight_ih.copy_(ref.weight_ih_l0)
        cell.weight_hh.copy_(ref.weight_hh_l0)
        cell.bias.copy_(ref.bias_ih_l0 + ref.bias_hh_l0)
        cell.weight_peephole.zero_()
    x = torch.randn(2, 5, 3)
    out, (h, c) = enc(x)
    out_r, (h_r, c_r) = ref(x)
    torch.testing.assert_close(out, out_r)
    torch.testing.assert_close(c, c_r)
    with torch.no_grad():
        cell.weight_peephole.fill_(0.5)
    assert (enc(x)[0] - out_r).abs().max() > 1e-3


def test_output_gate_sees_the_new_cell_state():
    cell = PeepholeLSTMCell(1, 1)
    with torch.no_grad():
        for p in cell.parameters():
            p.zero_()
        cell.weight_peephole[2] = 1.0  # output gate only
        cell.bias[2] = 1.0  # g pre-activation: c = 0.5 * tanh(1)
    h, (_, c) = cell(torch.zeros(1, 1), cell.initial_state(1))
    expected_c = 0.5 * torch.tanh(torch.tensor(1.0))
    torch.testing.assert_close(c, expected_c.view(1, 1))
    torch.testing.assert_close(h, (torch.sigmoid(expected_c) * torch.tanh(expected_c)).view(1, 1))


def test_registers_through_the_hook():
    with seqkit.testing.registered_plugin(seqkit_peephole):
        enc = seqkit.Encoder(3, 4, cell="peephole")
        assert isinstance(enc.cells["l0"], PeepholeLSTMCell) and not enc.fused


def test_found_through_its_entry_point():
    try:
        infos = seqkit.testing.installed_plugin_info("seqkit-peephole")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("seqkit-peephole is not installed: pip install --no-deps -e plugins/seqkit-peephole")
    eps = [ep for ep in importlib.metadata.entry_points(group="seqkit") if ep.name == "peephole"]
    assert [ep.value for ep in eps] == ["seqkit_peephole"]
    assert [(i["name"], i["version"], i["cells"]) for i in infos] == [("peephole", "0.1.0", ["peephole"])]
