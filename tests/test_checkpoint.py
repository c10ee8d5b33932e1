"""Checkpoints: exact round trips, atomic replacement, clean errors, no pickle."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import seqkit.checkpoint as checkpoint
from seqkit.checkpoint import load_checkpoint, read_meta, save_checkpoint
from seqkit.errors import SeqkitError


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    gen = torch.Generator().manual_seed(123)
    for _ in range(steps):
        x = torch.randn(6, 4, generator=gen)
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _same_params(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_is_exact(tmp_path: Path) -> None:
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    _train(model, optimizer, 3)
    path = tmp_path / "c.safetensors"
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    save_checkpoint(path, model, optimizer, {"epoch": 2, "note": "hi"})
    expected_rng = (torch.rand(3), random.random(), np.random.rand())

    clone = _model(seed=99)
    clone_opt = torch.optim.Adam(clone.parameters(), lr=0.5)
    meta = load_checkpoint(path, clone, clone_opt, restore_rng=True)
    assert meta == {"epoch": 2, "note": "hi"}
    assert (torch.equal(torch.rand(3), expected_rng[0]) and random.random() == expected_rng[1]
            and np.random.rand() == expected_rng[2])
    assert _same_params(model, clone)
    assert clone_opt.param_groups[0]["lr"] == 0.01
    assert isinstance(clone_opt.param_groups[0]["betas"], tuple)
    # Continuing both must stay bit-identical, which needs the Adam moments and step count.
    _train(model, optimizer, 2)
    _train(clone, clone_opt, 2)
    assert _same_params(model, clone)


def test_sgd_momentum_and_tied_weights(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight  # shared storage must still save
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = model(torch.tensor([1, 2])).sum()
    loss.backward()
    optimizer.step()
    save_checkpoint(tmp_path / "c.safetensors", model, optimizer, {})
    other = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    other[1].weight = other[0].weight
    other_opt = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    load_checkpoint(tmp_path / "c.safetensors", other, other_opt)
    assert _same_params(model, other)
    buf = optimizer.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(other_opt.state_dict()["state"][0]["momentum_buffer"], buf)


def test_meta_and_readable_json(tmp_path: Path) -> None:
    path = tmp_path / "best.safetensors"
    save_checkpoint(path, _model(), None, {"step": 5, "metrics": {"f1": 0.5}})
    assert read_meta(path) == {"step": 5, "metrics": {"f1": 0.5}}
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["meta"]["metrics"] == {"f1": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "best.safetensors"]
    with pytest.raises(SeqkitError, match="no optimizer state"):
        load_checkpoint(path, _model(), torch.optim.Adam(_model().parameters()))


def _crash_save(monkeypatch: pytest.MonkeyPatch, path: Path, how: str) -> None:
    if how == "writer":
        def partial_write(tensors, filename, metadata=None):
            Path(filename).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"trunc")
            raise OSError("disk full")
        monkeypatch.setattr(checkpoint, "save_file", partial_write)
    else:
        def failing_replace(src, dst):
            raise OSError("power cut")
        monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(SeqkitError, match=r"could not write the checkpoint .* the previous one is kept"):
        save_checkpoint(path, _model(seed=5), None, {"version": 2})
    monkeypatch.undo()


@pytest.mark.parametrize("how", ["writer", "replace"])
def test_crash_mid_write_keeps_previous(tmp_path: Path, monkeypatch, how: str) -> None:
    path = tmp_path / "last.safetensors"
    original = _model(seed=1)
    save_checkpoint(path, original, None, {"version": 1})
    _crash_save(monkeypatch, path, how)
    restored = _model(seed=3)
    assert load_checkpoint(path, restored) == {"version": 1}
    assert _same_params(original, restored)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.json", "last.safetensors"]  # no temporary left


def test_truncated_file_is_a_clean_error(tmp_path: Path) -> None:
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, _model(), None, {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    unreadable = r"last\.safetensors: checkpoint is unreadable .*another --out"
    with pytest.raises(SeqkitError, match=unreadable):
        load_checkpoint(path, _model())
    path.write_bytes(b"")
    with pytest.raises(SeqkitError, match="unreadable"):
        read_meta(path)
    with pytest.raises(SeqkitError, match="not found"):
        read_meta(tmp_path / "missing.safetensors")


def test_mismatched_model_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, nn.Linear(3, 2), None, {})
    with pytest.raises(SeqkitError, match=r"c\.safetensors: .*missing .*unexpected"):
        load_checkpoint(path, nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(SeqkitError, match=r"c\.safetensors: .*does not fit"):
        load_checkpoint(path, nn.Linear(4, 2))


def test_no_pickle_in_module() -> None:
    source = Path(checkpoint.__file__).read_text()
    assert "torch.load" not in source and "pickle" not in source
