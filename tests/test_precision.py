"""bf16 autocast: encoder outputs and a short training loss curve stay close to fp32.

Tolerances (bf16 keeps 8 significant bits, ~0.4% per rounding; errors add up over steps and
layers): encoder outputs within 0.02 absolute at worst and 0.003 on average (in (-1, 1));
training losses within 1% of the fp32 run at every logged step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import seqkit
from seqkit.bench import ThirdPartyLSTMCell
from seqkit.recipe import TrainConfig
from seqkit.train import Trainer

CASES = [("lstm", "auto"), ("gru", "auto"), ("lstm", "generic"), ("gru", "generic"), (ThirdPartyLSTMCell, "auto")]


@pytest.mark.parametrize("cell,engine", CASES)
@pytest.mark.parametrize("variable", [False, True])
def test_encoder_bf16_close_to_fp32(cell, engine, variable):
    torch.manual_seed(0)
    enc = seqkit.Encoder(16, 32, num_layers=2, cell=cell, bidirectional=True, batch_first=True, engine=engine)
    x = torch.randn(4, 30, 16)
    lengths = torch.tensor([30, 22, 15, 9]) if variable else None
    ref, ref_state = enc(x, lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, state = enc(x, lengths)
    if enc.fused:  # the fused kernel itself runs in bf16 (cast explicitly, see _run_fused)
        assert out.dtype == torch.bfloat16
    diff = (out.float() - ref).abs()
    assert diff.max() > 0, "autocast changed nothing: bf16 is not in use"
    assert diff.max() < 0.02 and diff.mean() < 0.003, (diff.max(), diff.mean())
    for a, b in zip(state, ref_state):
        assert (a.float() - b).abs().max() < 0.05
    # gradients flow in bf16 too, pointing the same way as fp32's
    (ref * ref.detach()).sum().backward()
    g_ref = [p.grad.clone() for p in enc.parameters()]
    enc.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = enc(x, lengths)
    (out.float() * ref.detach()).sum().backward()
    for g, p in zip(g_ref, enc.parameters()):
        assert p.grad.dtype == torch.float32
        assert F.cosine_similarity(p.grad.flatten(), g.flatten(), dim=0) > 0.98


@dataclass
class Batch:
    x: torch.Tensor
    lengths: torch.Tensor
    y: torch.Tensor

    def to(self, device):
        return Batch(self.x.to(device), self.lengths, self.y.to(device))

    @property
    def num_items(self) -> int:
        return int(self.lengths.sum())

    def __len__(self) -> int:
        return len(self.y)


class SequenceClassifier(nn.Module):
    def __init__(self, cell: str) -> None:
        super().__init__()
        self.encoder = seqkit.Encoder(6, 16, num_layers=2, cell=cell, bidirectional=True, batch_first=True)
        self.out = nn.Linear(32, 3)
        self.autocast_seen: list[bool] = []

    def forward(self, batch: Batch, state=None) -> torch.Tensor:  # a bare loss tensor is accepted too
        self.autocast_seen.append(torch.is_autocast_enabled("cpu"))
        h, _ = self.encoder(batch.x, batch.lengths)
        pooled = h.float().sum(1) / batch.lengths.unsqueeze(1)  # (N, D*H)
        return F.cross_entropy(self.out(pooled), batch.y)

    def evaluate(self, batches):
        return {"loss": float(sum(self(b) for b in batches))}


def _data() -> list[Batch]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(48, 12, 6, generator=gen)
    y = (x[:, :4].sum((1, 2)) > 0).long() + (x[:, :, 0].mean(1) > 0.2).long()
    lengths = torch.randint(6, 13, (48,), generator=gen)
    return [Batch(x[i: i + 8], lengths[i: i + 8], y[i: i + 8]) for i in range(0, 48, 8)]


@pytest.fixture
def one_thread():
    """Tiny ops: intra-op threads only add fork/join waits (seconds on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_training_loss_curve_bf16_close_to_fp32(tmp_path, cell, one_thread):
    batches = _data()
    curves = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = SequenceClassifier(cell)
        config = TrainConfig(epochs=3, lr=0.01, seed=0, log_every=1, checkpoint_every=0, precision=precision)
        run_dir = tmp_path / precision
        Trainer(model, config, run_dir, device=torch.device("cpu"), train_batches=lambda epoch: batches,
                valid_batches=None, monitor="loss", mode="min", progress=False).fit()
        assert set(model.autocast_seen) == {precision == "bf16"}
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        curves[precision] = [r["loss"] for r in lines if r["event"] == "train"]
    fp32, bf16 = curves["fp32"], curves["bf16"]
    assert len(fp32) == len(bf16) == 18
    assert fp32[-1] < 0.8 * fp32[0] and bf16[-1] < 0.8 * bf16[0]  # both learn
    assert fp32 != bf16  # bf16 really ran
    for step, (a, b) in enumerate(zip(fp32, bf16)):
        assert abs(a - b) <= 0.01 * abs(a), (step, a, b)
