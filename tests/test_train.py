"""Trainer: determinism, exact resume, early stopping, checkpoints and failure modes."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from seqkit.checkpoint import read_meta
from seqkit.errors import SeqkitError
from seqkit.recipe import TrainConfig
from seqkit.tasks import ModelOutput
from seqkit.train import Trainer

_gen = torch.Generator().manual_seed(0)
X = torch.randn(36, 4, generator=_gen)
Y = (X @ torch.randn(4, 3, generator=_gen)).argmax(dim=1)


@dataclass
class Batch:
    x: torch.Tensor
    y: torch.Tensor

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.x.to(device), self.y.to(device))

    @property
    def num_items(self) -> int:
        return int(self.x.shape[0])

    def __len__(self) -> int:
        return int(self.x.shape[0])


def train_batches(epoch: int) -> list[Batch]:
    order = torch.randperm(len(X), generator=torch.Generator().manual_seed(100 + epoch))
    return [Batch(X[idx], Y[idx]) for idx in order.split(6)]  # 6 batches per epoch


VALID = [Batch(X[:18], Y[:18]), Batch(X[18:], Y[18:])]


class Toy(nn.Module):
    """Dropout makes the result depend on the RNG stream, which resume must restore."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.3)
        self.lin = nn.Linear(4, 3)
        self.calls = 0
        self.hook = None  # called with the call count before each training loss

    def forward(self, batch: Batch, state=None) -> ModelOutput:
        self.calls += 1
        if self.hook is not None:
            self.hook(self.calls)
        return ModelOutput(F.cross_entropy(self.lin(self.drop(batch.x)), batch.y))

    def evaluate(self, batches) -> dict[str, float]:
        total = correct = 0
        loss = 0.0
        for batch in batches:
            logits = self.lin(batch.x)
            loss += float(F.cross_entropy(logits, batch.y, reduction="sum"))
            correct += int((logits.argmax(1) == batch.y).sum())
            total += len(batch)
        return {"acc": correct / total, "loss": loss / total}


def make(run_dir: Path, hook=None, monitor: str = "acc", **overrides) -> Trainer:
    options = dict(epochs=3, lr=0.05, seed=3, log_every=1, checkpoint_every=4)
    options.update(overrides)
    torch.manual_seed(0)  # the same initial weights in every run
    model = Toy()
    model.hook = hook
    return Trainer(model, TrainConfig(**options), run_dir, device=torch.device("cpu"),
                   train_batches=train_batches, valid_batches=VALID, monitor=monitor,
                   mode="max" if monitor == "acc" else "min", progress=False,
                   meta={"recipe": "toy"})


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def log_lines(run_dir: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for line in lines:  # timings differ between runs by nature
        line.pop("time", None)
        line.pop("items_per_s", None)
    return lines


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict, dict, Path]:
    run_dir = tmp_path_factory.mktemp("ref")
    trainer = make(run_dir)
    result = trainer.fit()
    return result, weights(trainer), run_dir


def test_same_seed_same_result(tmp_path: Path, reference) -> None:
    result, final, ref_dir = reference
    trainer = make(tmp_path)
    assert trainer.fit() == result
    assert same(weights(trainer), final)
    assert log_lines(tmp_path) == log_lines(ref_dir)
    assert result["stopped"] == "completed" and result["steps"] == 18 and result["epochs"] == 3
    assert trainer.stats["wall_s"] > 0 and trainer.stats["peak_rss_mb"] > 0


def test_run_folder_layout(reference) -> None:
    result, _, run_dir = reference
    ckpt = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "best.json", "best.safetensors", "last.json", "last.safetensors"]
    for name in ("best.safetensors", "last.safetensors"):
        data = (ckpt / name).read_bytes()
        header = int.from_bytes(data[:8], "little")
        assert data[8:9] == b"{" and json.loads(data[8:8 + header])  # safetensors, not pickle
    assert read_meta(ckpt / "last.safetensors")["recipe"] == "toy"
    lines = log_lines(run_dir)
    valid = [line for line in lines if line["event"] == "valid"]
    assert [(v["epoch"], v["step"]) for v in valid] == [(1, 6), (2, 12), (3, 18)]
    assert result["best"]["acc"] == max(v["acc"] for v in valid)
    assert len([line for line in lines if line["event"] == "train"]) == 18


def test_resume_after_max_steps_is_exact(tmp_path: Path, reference) -> None:
    result, final, ref_dir = reference
    first = make(tmp_path, max_steps=8).fit()  # stops mid-epoch 2
    assert first["stopped"] == "max_steps" and first["steps"] == 8
    assert (tmp_path / "checkpoints" / "best.safetensors").exists()
    trainer = make(tmp_path)
    assert trainer.fit(resume=True) == result
    assert same(weights(trainer), final)
    assert log_lines(tmp_path) == log_lines(ref_dir)
    best = [load_file(d / "checkpoints" / "best.safetensors") for d in (tmp_path, ref_dir)]
    assert same(*best)


def test_cosine_schedule_with_warmup_resumes_exactly(tmp_path: Path) -> None:
    options = dict(lr_schedule="cosine", min_lr=0.005, warmup_steps=3)
    ref = make(tmp_path / "ref", **options)
    result = ref.fit()
    lrs = [line["lr"] for line in log_lines(tmp_path / "ref") if line["event"] == "train"]
    assert len(lrs) == 18
    cosine = [0.005 + 0.045 * 0.5 * (1 + math.cos(math.pi * k / 17)) for k in range(18)]
    assert lrs[3:] == pytest.approx(cosine[3:])  # from lr down to min_lr at the last step
    assert lrs[:3] == pytest.approx([cosine[k] * (k + 1) / 3 for k in range(3)])  # linear warmup
    assert lrs[-1] == pytest.approx(0.005)
    assert all(a > b for a, b in zip(lrs[3:], lrs[4:]))
    # stopped by max_steps mid-epoch and resumed: the same schedule, the same weights
    make(tmp_path / "cut", max_steps=8, **options).fit()
    resumed = make(tmp_path / "cut", **options)
    assert resumed.fit(resume=True) == result
    assert same(weights(resumed), weights(ref))


def test_mid_epoch_stop_keeps_epoch_end_best(tmp_path: Path) -> None:
    # An uninterrupted run never validates at step 8, so a resumed one must not inherit it.
    result = make(tmp_path, monitor="loss", max_steps=8).fit()
    assert result["valid"]["loss"] < result["best"]["loss"]
    assert read_meta(tmp_path / "checkpoints" / "best.safetensors")["trainer"]["state"]["step"] == 6


AVERAGING = dict(monitor="loss", epochs=4, average_last=3, lr=0.5)  # lr 0.5: noisy epochs, a good average


def snapshot(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"{name}.safetensors")


def mean_of(run_dir: Path, epochs: range) -> dict[str, torch.Tensor]:
    tensors = [snapshot(run_dir, f"epoch-{e}") for e in epochs]
    return {k: sum(t[k].double() for t in tensors) / len(tensors) for k in tensors[0] if k.startswith("model.")}


def test_average_of_last_epochs_replaces_best_when_it_validates_better(tmp_path: Path) -> None:
    trainer = make(tmp_path, **AVERAGING)
    result = trainer.fit()
    names = sorted(p.stem for p in (tmp_path / "checkpoints").glob("*.safetensors"))
    assert names == ["best", "best-epoch", "epoch-2", "epoch-3", "epoch-4", "last"]  # epoch-1 pruned
    lines = log_lines(tmp_path)
    valid = {line["epoch"]: line["loss"] for line in lines if line["event"] == "valid"}
    averages = [line for line in lines if line["event"] == "average"]
    assert [a["epochs"] for a in averages] == [[3, 4], [2, 4]]
    for line in averages:  # each logged figure is that of the true mean of the snapshots
        model = Toy()
        mean = mean_of(tmp_path, range(line["epochs"][0], 5))
        model.lin.weight.data, model.lin.bias.data = mean["model.lin.weight"].float(), mean["model.lin.bias"].float()
        with torch.no_grad():
            assert model.evaluate(VALID)["loss"] == pytest.approx(line["loss"], rel=1e-5)
    winner = min(averages, key=lambda a: a["loss"])
    assert winner["loss"] < min(valid.values())
    assert result["best"]["averaged"] == 5 - winner["epochs"][0]
    assert result["best"]["loss"] == winner["loss"]
    best, mean = snapshot(tmp_path, "best"), mean_of(tmp_path, range(winner["epochs"][0], 5))
    assert all(torch.allclose(best[k].double(), mean[k], atol=1e-6) for k in mean)
    single = min(valid, key=valid.get)  # the best single epoch is kept beside it
    assert same(snapshot(tmp_path, "best-epoch"), snapshot(tmp_path, f"epoch-{single}"))
    # the trainer's model still holds the last epoch's weights, as 'last' does
    last = snapshot(tmp_path, "last")
    assert same(weights(trainer), {k[6:]: v for k, v in last.items() if k.startswith("model.")})


def test_average_that_validates_worse_leaves_best_alone(tmp_path: Path) -> None:
    result = make(tmp_path, **{**AVERAGING, "lr": 0.05}).fit()  # steady progress: the last epoch wins
    lines = log_lines(tmp_path)
    assert len([line for line in lines if line["event"] == "average"]) == 2
    assert "averaged" not in result["best"]
    assert not (tmp_path / "checkpoints" / "best-epoch.safetensors").exists()
    assert same(snapshot(tmp_path, "best"), snapshot(tmp_path, "epoch-4"))


def test_resume_after_an_average_replaced_best_is_exact(tmp_path: Path) -> None:
    longer = {**AVERAGING, "epochs": 5}
    result = make(tmp_path / "ref", **longer).fit()
    first = make(tmp_path / "run", **AVERAGING).fit()
    assert "averaged" in first["best"]  # so the resumed run must first put the single best back
    trainer = make(tmp_path / "run", **longer)
    assert trainer.fit(resume=True) == result
    assert log_lines(tmp_path / "run") == log_lines(tmp_path / "ref")
    for name in ("best", "best-epoch", "epoch-3", "epoch-4", "epoch-5"):
        assert same(snapshot(tmp_path / "run", name), snapshot(tmp_path / "ref", name))


def test_negative_average_last_is_a_clean_error(tmp_path: Path) -> None:
    with pytest.raises(SeqkitError, match="train.average_last must be 0 or more"):
        make(tmp_path, average_last=-1)


@pytest.mark.parametrize("crash_at", [6, 7, 11])
def test_resume_after_crash_is_exact(tmp_path: Path, reference, crash_at: int) -> None:
    result, final, ref_dir = reference
    def crash(calls: int) -> None:
        if calls == crash_at:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):
        make(tmp_path, hook=crash, checkpoint_every=3).fit()
    trainer = make(tmp_path, checkpoint_every=3)
    assert trainer.fit(resume=True) == result
    assert same(weights(trainer), final)
    assert log_lines(tmp_path) == log_lines(ref_dir)


def test_ctrl_c_saves_last_and_resumes(tmp_path: Path, reference, capsys) -> None:
    result, final, _ = reference
    hook = lambda calls: os.kill(os.getpid(), signal.SIGINT) if calls == 5 else None  # noqa: E731
    before = signal.getsignal(signal.SIGINT)
    first = make(tmp_path, hook=hook).fit()
    assert signal.getsignal(signal.SIGINT) is before
    assert first["stopped"] == "interrupted" and first["steps"] == 5
    assert "--resume" in capsys.readouterr().err
    assert read_meta(tmp_path / "checkpoints" / "last.safetensors")["trainer"]["state"]["step"] == 5
    trainer = make(tmp_path)
    assert trainer.fit(resume=True) == result
    assert same(weights(trainer), final)


def test_second_ctrl_c_aborts(tmp_path: Path) -> None:
    def press_twice(calls: int) -> None:
        if calls == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        make(tmp_path, hook=press_twice).fit()


def test_resume_without_checkpoint_starts_fresh(tmp_path: Path, reference, capsys) -> None:
    result, _, _ = reference
    assert make(tmp_path).fit(resume=True) == result
    assert "starting a fresh run" in capsys.readouterr().err


def test_early_stopping(tmp_path: Path) -> None:
    # With lr=0 the validation loss never improves after the first epoch.
    trainer = Trainer(Toy(), TrainConfig(epochs=10, lr=0.0, optimizer="sgd", patience=2),
                      tmp_path, device=torch.device("cpu"), train_batches=train_batches,
                      valid_batches=VALID, monitor="loss", mode="min", progress=False)
    result = trainer.fit()
    assert result["stopped"] == "early_stopping" and result["epochs"] == 3
    assert read_meta(tmp_path / "checkpoints" / "best.safetensors")["trainer"]["state"]["step"] == 6


def _ten_seconds_a_step(monkeypatch) -> Callable[[int], None]:
    """The trainer's clock, made to advance 10 s per training step and stand still otherwise
    (a real clock would make the stopping point depend on the machine's load)."""
    import seqkit.train

    clock = [0.0]
    monkeypatch.setattr(seqkit.train, "time", SimpleNamespace(perf_counter=lambda: clock[0],
                                                              monotonic=time.monotonic))

    def tick(calls: int) -> None:
        clock[0] += 10.0
    return tick


def test_time_budget_starts_no_epoch_it_cannot_finish(tmp_path: Path, monkeypatch, reference) -> None:
    # Epochs take 60 s: after two (120 s), a third would end at 180 s, past the 150 s budget.
    result = make(tmp_path, hook=_ten_seconds_a_step(monkeypatch), epochs=10, max_minutes=2.5).fit()
    assert result["stopped"] == "time_limit" and result["epochs"] == 2 and result["steps"] == 12
    state = read_meta(tmp_path / "checkpoints" / "last.safetensors")["trainer"]["state"]
    assert state["epoch_seconds"] == 60.0 and state["elapsed"] == 120.0
    # It stopped at an epoch end, so training on without the budget is the uninterrupted run.
    ref_result, final, ref_dir = reference
    trainer = make(tmp_path, epochs=3)
    assert trainer.fit(resume=True) == ref_result
    assert same(weights(trainer), final)
    assert log_lines(tmp_path) == log_lines(ref_dir)


def test_time_budget_stops_an_epoch_that_overruns_it(tmp_path: Path, monkeypatch) -> None:
    # The first epoch has no earlier one to judge by: it starts, and stops when 45 s are spent.
    result = make(tmp_path, hook=_ten_seconds_a_step(monkeypatch), max_minutes=0.75).fit()
    assert result["stopped"] == "time_limit" and result["steps"] == 5 and result["epochs"] == 0
    assert result["valid"] and (tmp_path / "checkpoints" / "best.safetensors").exists()
    # Resumed with the budget spent, it trains no further.
    again = make(tmp_path, hook=_ten_seconds_a_step(monkeypatch), max_minutes=0.75).fit(resume=True)
    assert again["stopped"] == "time_limit" and again["steps"] == 5


def test_negative_time_budget_is_a_clean_error(tmp_path: Path) -> None:
    from seqkit.recipe import Recipe, RecipeError

    with pytest.raises(RecipeError, match="train.max_minutes: must be >= 0"):
        Recipe.load(Path(__file__).parent.parent / "recipes" / "ner" / "conll.yaml", ["train.max_minutes=-1"])


def test_nan_loss_is_a_clean_error(tmp_path: Path) -> None:
    trainer = make(tmp_path)

    def poison(calls: int) -> None:
        if calls == 3:
            with torch.no_grad():
                trainer.model.lin.weight.fill_(float("nan"))

    trainer.model.hook = poison
    with pytest.raises(SeqkitError, match="NaN/inf at step 3; lower train.lr"):
        trainer.fit()
    assert not (tmp_path / "checkpoints" / "last.safetensors").exists()


def test_unknown_monitor_is_a_clean_error(tmp_path: Path) -> None:
    trainer = make(tmp_path)
    trainer.monitor = "f1"
    with pytest.raises(SeqkitError, match="'f1' is not among the validation metrics"):
        trainer.fit()


def test_evaluate_loads_best_checkpoint(tmp_path: Path) -> None:
    trainer = make(tmp_path, epochs=2)
    result = trainer.fit()
    with torch.no_grad():
        for param in trainer.model.parameters():
            param.zero_()
    assert trainer.evaluate(VALID, checkpoint="best") == result["best"]
    assert trainer.evaluate(VALID, checkpoint="last") == result["valid"]
    assert dataclasses.asdict(trainer.config)["epochs"] == 2


_FAULTS = """
import resource, sys, torch
from seqkit.train import reuse_freed_memory
print(reuse_freed_memory() if sys.argv[1] == "1" else False)
torch.empty(16 << 20).fill_(1.0)  # 64 MiB once, so both runs start with it faulted in or not
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.empty(16 << 20).fill_(1.0)  # 64 MiB allocated, touched and freed again
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is a Linux matter")
def test_reused_memory_is_not_faulted_in_again() -> None:
    # Without the setting each 64 MiB block is mmapped, faulted in page by page and unmapped
    # again (~16k faults per block); with it the freed block is reused.
    runs = {}
    for flag in ("0", "1"):
        proc = subprocess.run([sys.executable, "-c", _FAULTS, flag], capture_output=True, text=True, check=True,
                              env={**os.environ, "SEQKIT_MALLOPT": "1"})
        applied, faults = proc.stdout.split()
        runs[flag] = (applied, int(faults))
    assert runs["0"][0] == "False" and runs["1"][0] == "True"
    # kept: a few blocks faulted in, then reused; by default every block is faulted in afresh.
    # The ratio, not a count: with transparent huge pages a block takes far fewer faults, and how
    # many blocks are faulted in before reuse varies by machine: 2 of 20 on the dev VM (32,768
    # faults against 327,700), 6 of 20 on one CI machine (98,304 against 327,700). Without the
    # setting the ratio is about 1.
    assert runs["1"][1] * 2 < runs["0"][1], runs


def ema_of(run_dir: Path) -> dict[str, torch.Tensor]:
    return {k[len("extra.ema."):]: v for k, v in snapshot(run_dir, "last").items() if k.startswith("extra.ema.")}


def test_moving_average_follows_every_step(tmp_path: Path) -> None:
    seen: list[dict[str, torch.Tensor]] = []  # the weights before each training step
    trainer = make(tmp_path, hook=lambda calls: seen.append(weights(trainer)), monitor="loss", ema_decay=0.8)
    result = trainer.fit()
    seen.append(weights(trainer))
    assert len(seen) == 19  # 18 steps
    expected = {k: v.double() for k, v in seen[0].items()}  # starts at the initial weights
    for after in seen[1:]:
        expected = {k: 0.8 * expected[k] + 0.2 * after[k].double() for k in expected}
    saved = ema_of(tmp_path)
    assert saved.keys() == expected.keys()
    assert all(torch.allclose(saved[k].double(), expected[k], atol=1e-6) for k in expected)
    [line] = [line for line in log_lines(tmp_path) if line["event"] == "ema"]
    model = Toy()
    model.load_state_dict(saved)
    assert line["decay"] == 0.8 and line["step"] == 18
    with torch.no_grad():
        assert model.evaluate(VALID)["loss"] == pytest.approx(line["loss"], rel=1e-6)
    assert result["best"]["loss"] <= line["loss"]


def test_moving_average_replaces_best_when_it_validates_better(tmp_path: Path) -> None:
    result = make(tmp_path, monitor="loss", epochs=4, lr=0.5, ema_decay=0.9).fit()  # noisy steps
    lines = log_lines(tmp_path)
    [line] = [line for line in lines if line["event"] == "ema"]
    valid = {line["epoch"]: line["loss"] for line in lines if line["event"] == "valid"}
    assert line["loss"] < min(valid.values())
    assert result["best"]["ema"] == 0.9 and result["best"]["loss"] == line["loss"]
    best = {k[len("model."):]: v for k, v in snapshot(tmp_path, "best").items() if k.startswith("model.")}
    assert same(best, ema_of(tmp_path))
    assert read_meta(tmp_path / "checkpoints" / "best-epoch.safetensors")["trainer"]["state"]["epoch"] + 1 == \
        min(valid, key=valid.get)  # the best single epoch is kept beside it


def test_moving_average_survives_a_crash_and_resume(tmp_path: Path) -> None:
    options = dict(monitor="loss", epochs=4, lr=0.5, ema_decay=0.9, average_last=2, checkpoint_every=3)
    result = make(tmp_path / "ref", **options).fit()

    def crash(calls: int) -> None:
        if calls == 17:  # mid-epoch: resumes from the step-15 'last'
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):
        make(tmp_path / "run", hook=crash, **options).fit()
    assert make(tmp_path / "run", **options).fit(resume=True) == result
    assert log_lines(tmp_path / "run") == log_lines(tmp_path / "ref")
    assert same(ema_of(tmp_path / "run"), ema_of(tmp_path / "ref"))
    assert same(snapshot(tmp_path / "run", "best"), snapshot(tmp_path / "ref", "best"))
    events = [line["event"] for line in log_lines(tmp_path / "ref")]
    assert events[-2:] == ["average", "ema"]


def test_resume_without_a_saved_moving_average_starts_it_there(tmp_path: Path, capsys) -> None:
    make(tmp_path, monitor="loss", max_steps=8).fit()  # no moving average in 'last'
    seen: list[dict[str, torch.Tensor]] = []  # the weights before each resumed step
    trainer = make(tmp_path, hook=lambda calls: seen.append(weights(trainer)), monitor="loss", ema_decay=0.5)
    trainer.fit(resume=True)
    seen.append(weights(trainer))
    err = capsys.readouterr().err
    assert "no usable moving average of the weights" in err and "changed ema_decay" in err
    assert len(seen) == 11  # steps 9..18
    expected = {k: v.double() for k, v in seen[0].items()}  # starts at the weights of step 8
    for after in seen[1:]:
        expected = {k: 0.5 * expected[k] + 0.5 * after[k].double() for k in expected}
    saved = ema_of(tmp_path)
    assert all(torch.allclose(saved[k].double(), expected[k], atol=1e-6) for k in expected)


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_ema_decay_out_of_range_is_a_clean_error(tmp_path: Path, decay: float) -> None:
    with pytest.raises(SeqkitError, match="train.ema_decay must be at least 0 and below 1"):
        make(tmp_path, ema_decay=decay)
