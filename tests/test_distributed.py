"""Data-parallel training under torchrun: real processes (gloo on this CPU), compared with one process.

Every run here is a real ``seqkit recipe run --nproc 2`` (torchrun's own launcher and
DistributedDataParallel), with dropout off so that one process and two draw nothing at random
and may be compared step by step.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from seqkit.distributed import Context, shard_rows, slice_batch
from seqkit.errors import SeqkitError
from seqkit.models.lm import LMBatch
from seqkit.models.speech import SpeechBatch
from seqkit.models.tagging import TagBatch

ROOT = Path(__file__).resolve().parents[1]
CONLL = ROOT / "recipes" / "ner" / "conll.yaml"
# no dropout anywhere: one process and two then compute the same thing, step by step
NER_SETS = ["features.dropout=0", "train.log_every=1", "device=cpu", "train.epochs=1", "train.threads=1"]
STEPS = 20  # losses compared over the first steps; the toy data is fitted to a loss near 0.01
# (where fp32 rounding alone differs by 1e-5 relative) within about 40 steps


# -- splitting a batch -------------------------------------------------------------------------


@given(st.integers(0, 200), st.integers(1, 9))
@settings(max_examples=200, deadline=None)
def test_shards_cover_the_batch_in_order(rows, world):
    spans = [shard_rows(rows, rank, world) for rank in range(world)]
    assert [i for a, b in spans for i in range(a, b)] == list(range(rows))
    sizes = [b - a for a, b in spans]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_every_built_in_batch_splits_by_rows():
    tags = TagBatch(torch.arange(15).view(5, 3), None, torch.tensor([3, 3, 2, 2, 1]), torch.zeros(5, 3).long(),
                    [4, 0, 1, 3, 2])
    part = slice_batch(tags, 1, 3)
    assert part.tokens.tolist() == [[3, 4, 5], [6, 7, 8]] and part.lengths.tolist() == [3, 2]
    assert part.index == [0, 1] and part.bigrams is None and len(part) == 2
    speech = SpeechBatch(torch.zeros(3, 7, 2), torch.tensor([7, 5, 4]), torch.ones(3, 2).long(),
                         torch.tensor([2, 1, 1]), ["a", "b", "c"], [0, 1, 2])
    part = slice_batch(speech, 2, 3)
    assert part.texts == ["c"] and part.lengths.tolist() == [4] and part.feats.shape == (1, 7, 2)
    lm = LMBatch(torch.arange(8).view(4, 2), torch.arange(8).view(4, 2) + 1)
    assert slice_batch(lm, 2, 4).targets.tolist() == [[5, 6], [7, 8]]


def test_a_batch_that_cannot_be_split_is_one_clear_error():
    class Opaque:
        def __len__(self):
            return 2

    with pytest.raises(SeqkitError, match="Opaque: a batch that data-parallel training cannot split"):
        slice_batch(Opaque(), 0, 1)

    @dataclass
    class Own:
        rows: list

        def __len__(self):
            return len(self.rows)

        def select(self, start, stop):
            return Own(self.rows[start:stop][::-1])

    assert slice_batch(Own([1, 2, 3]), 0, 2).rows == [2, 1]  # the batch's own select() wins


def test_only_a_lost_process_is_reported_as_one():
    ctx = Context(rank=1, world=2, local_rank=1, device=torch.device("cpu"), backend="gloo")
    with pytest.raises(SeqkitError, match=r"rank 1: lost contact with another process of this run \(Read error"):
        with ctx.talking():
            raise RuntimeError("[../gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:6544: Connection reset "
                               "by peer. This is typically caused by a remote worker hanging")
    with pytest.raises(RuntimeError, match="size mismatch"):  # a bug stays a bug, not a "lost process"
        with ctx.talking():
            raise RuntimeError("size mismatch, got 3 and 4")


# -- real runs ----------------------------------------------------------------------------------


def _env(tag: str = "") -> dict:
    return {**os.environ, "SEQKIT_LOAD_PLUGINS": "0", "OMP_NUM_THREADS": "1", "SEQKIT_TEST_RUN": tag}


def _run(recipe: Path, out: Path, *args: str, nproc: int = 1, sets=NER_SETS, timeout=300):
    cmd = [sys.executable, "-m", "seqkit", "recipe", "run", str(recipe), "--out", str(out), "--no-progress",
           "--nproc", str(nproc), *[a for s in sets for a in ("--set", s)], *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout, cwd=ROOT)


def _losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if r["event"] == "train"]


def _close(a: list[float], b: list[float], rel: float) -> float:
    assert len(a) == len(b)
    worst = max(abs(x - y) / abs(x) for x, y in zip(a, b))
    assert worst <= rel, worst
    return worst


@pytest.fixture(scope="module")
def ner_runs(tmp_path_factory):
    """The shortened NER recipe trained by one process and by two."""
    folder = tmp_path_factory.mktemp("ddp-ner")
    one, two = _run(CONLL, folder / "one"), _run(CONLL, folder / "two", nproc=2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    return folder / "one", folder / "two", two


def test_two_processes_train_the_ner_recipe_as_one_does(ner_runs):
    one, two, proc = ner_runs
    _close(_losses(one)[:STEPS], _losses(two)[:STEPS], 1e-5)
    a, b = (json.loads((run / "metrics.json").read_text()) for run in (one, two))
    assert b["processes"] == 2 and a["processes"] == 1 and a["steps"] == b["steps"] == 25
    assert round(a["f1"], 2) == round(b["f1"], 2)  # the precision metrics.json is read at
    # only rank 0 wrote: one metrics line per step and validation, one result printed
    lines = [len((run / "metrics.jsonl").read_text().splitlines()) for run in (one, two)]
    assert lines[0] == lines[1]
    assert proc.stdout.count('"f1"') == 1 and proc.stderr.count("data: 400 train") == 1
    assert "Traceback" not in proc.stderr


def test_a_batch_with_fewer_rows_than_processes_trains(tmp_path):
    """batch_size 3 over 400 sentences in pools of 150: the last pool leaves a batch of 1 row, so one
    process trains on a weightless row that step; the run matches one process's all the same."""
    sets = [*NER_SETS, "train.batch_size=3"]
    one, two = _run(CONLL, tmp_path / "one", sets=sets), _run(CONLL, tmp_path / "two", nproc=2, sets=sets)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == len(b) == 134  # 133 batches of 3 rows and one of 1
    _close(a[:STEPS], b[:STEPS], 1e-5)


def test_a_time_budget_stops_every_process_at_the_same_step(tmp_path):
    """Each process has its own clock; they must agree on when train.max_minutes is spent (rank 0's
    clock decides), or one would wait forever in the next step's exchange for the other."""
    sets = [*NER_SETS, "train.epochs=40", "train.max_minutes=0.02"]  # 1.2 s: far less than 40 epochs
    done = _run(CONLL, tmp_path / "run", nproc=2, sets=sets, timeout=240)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["stopped"] == "time_limit" and metrics["processes"] == 2
    assert 0 < metrics["steps"] < 40 * 25 and "Traceback" not in done.stderr


WORDS = "the a cat dog bird sat ran flew on under over mat log tree".split()


@pytest.fixture(scope="module")
def lm_recipe(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp-lm")
    rng = random.Random(0)
    for name, count in (("train", 400), ("valid", 40), ("test", 40)):
        lines = (" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(count))
        (folder / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    recipe = folder / "lm.yaml"
    recipe.write_text(f"""
description: tiny LM, no dropout
task: {{name: language-model, bptt: 10, random_bptt: false, eval_streams: 2}}
data: {{dataset: text, train: {folder}/train.txt, valid: {folder}/valid.txt, test: {folder}/test.txt}}
features: {{kind: lm-tokens, units: words, embedding_dim: 16, dropout: 0, embedding_dropout: 0}}
encoder: {{directions: forward, num_layers: 2, hidden_size: 24}}
head: {{name: lm, dropout: 0}}
train: {{epochs: 1, batch_size: 5, lr: 0.01, log_every: 1, seed: 3, threads: 1}}
device: cpu
""", encoding="utf-8")
    return recipe


def test_two_processes_train_a_language_model_with_carried_state_as_one_does(lm_recipe, tmp_path):
    # 5 streams: rank 0 carries the state of 3, rank 1 of 2
    one, two = _run(lm_recipe, tmp_path / "one", sets=[]), _run(lm_recipe, tmp_path / "two", nproc=2, sets=[])
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) > 30
    _close(a, b, 1e-5)
    ma, mb = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("one", "two"))
    assert round(ma["ppl"], 2) == round(mb["ppl"], 2)


def _workers(tag: str) -> dict[int, int]:
    """rank -> pid of the training processes started with SEQKIT_TEST_RUN=tag."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = dict(item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item)
        except OSError:
            continue
        if env.get("SEQKIT_TEST_RUN") == tag and "RANK" in env:
            found[int(env["RANK"])] = int(entry.name)
    return found


def _start(recipe: Path, out: Path, tag: str, *, nproc=2, sets=NER_SETS, args=()) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "seqkit", "recipe", "run", str(recipe), "--out", str(out), "--no-progress",
           "--nproc", str(nproc), *[a for s in sets for a in ("--set", s)], *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tag),
                            cwd=ROOT, start_new_session=True)


def _wait_steps(run: Path, steps: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run / "metrics.jsonl").exists() and len(_losses(run)) >= steps:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.communicate()[1]}")
        time.sleep(0.05)
    raise AssertionError("training did not reach the step in time")


LONG = [*NER_SETS[:-2], "train.epochs=4", "encoder.hidden_size=192", "train.threads=1"]  # 100 steps, slower ones


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp-long") / "run"
    done = _run(CONLL, out, nproc=2, sets=LONG)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize("resume_with", [2, 1])
def test_sigterm_on_one_rank_stops_every_rank_at_one_step_and_resume_continues(uninterrupted, tmp_path, resume_with):
    out, tag = tmp_path / "run", uuid.uuid4().hex
    proc = _start(CONLL, out, tag, sets=LONG)
    _wait_steps(out, 30, proc)
    workers = _workers(tag)
    assert sorted(workers) == [0, 1]
    os.kill(workers[1], signal.SIGTERM)  # what a scheduler sends, to one process only
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and stderr.count("Interrupted at step") == 1 and "--resume" in stderr
    stopped = len(_losses(out))
    assert 30 <= stopped < 100
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.json", "best.safetensors",
                                                                      "last.json", "last.safetensors"]
    done = _run(CONLL, out, "--resume", nproc=resume_with, sets=LONG)
    assert done.returncode == 0, done.stderr
    full, resumed = _losses(uninterrupted), _losses(out)
    if resume_with == 2:  # the same processes: exact
        assert resumed == full
    else:  # one process continues two: the same sums in another order, so rounding differs; on this
        # toy data the loss falls to 0.005, where that is a few per cent of it, so compare absolutely
        assert resumed[:len(resumed) // 4] == full[:len(resumed) // 4]  # before the stop: the same run
        assert max(abs(x - y) for x, y in zip(full, resumed)) < 1e-3
    a, b = (json.loads((run / "metrics.json").read_text()) for run in (uninterrupted, out))
    assert round(a["f1"], 2) == round(b["f1"], 2)


def test_ctrl_c_reaches_every_process_once_and_one_checkpoint_is_saved(tmp_path):
    out, tag = tmp_path / "run", uuid.uuid4().hex
    proc = _start(CONLL, out, tag, sets=LONG)
    _wait_steps(out, 20, proc)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the launcher and both workers
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.count("Interrupted at step") == 1
    assert (out / "checkpoints" / "last.safetensors").exists()
    done = _run(CONLL, out, "--resume", nproc=2, sets=LONG)
    assert done.returncode == 0, done.stderr


def test_a_rank_that_dies_stops_the_others_with_a_message(tmp_path):
    out, tag = tmp_path / "run", uuid.uuid4().hex
    proc = _start(CONLL, out, tag, sets=LONG)
    _wait_steps(out, 20, proc)
    os.kill(_workers(tag)[1], signal.SIGKILL)
    started = time.monotonic()
    _, stderr = proc.communicate(timeout=120)
    assert time.monotonic() - started < 60  # no hang
    assert proc.returncode == 1, stderr
    assert "error: a training process died (" in stderr and "rank 1 by SIGKILL" in stderr, stderr
    assert not _workers(tag)


def test_a_bad_recipe_is_one_line_before_any_process_starts(tmp_path):
    done = _run(CONLL, tmp_path / "run", nproc=2, sets=["train.lr=-1"])
    assert done.returncode == 2 and done.stderr.count("error:") == 1 and "train.lr" in done.stderr, done.stderr


# -- GPUs (skipped without one) -----------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_device_auto_trains_on_the_gpu_with_cudnn(tmp_path):
    done = _run(CONLL, tmp_path / "run", sets=["device=auto", "train.epochs=1"])
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["device"].startswith("cuda")
    assert torch.backends.cudnn.is_available()


@cuda
@pytest.mark.skipif(not torch.cuda.is_available() or not torch.cuda.is_bf16_supported(), reason="needs bf16 on the GPU")
def test_bf16_on_the_gpu(tmp_path):
    done = _run(CONLL, tmp_path / "run", sets=["device=cuda", "train.precision=bf16", "train.epochs=2"])
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_gpus_with_nccl(tmp_path):
    one = _run(CONLL, tmp_path / "one", sets=[*NER_SETS[:-2], "device=cuda"])
    two = _run(CONLL, tmp_path / "two", nproc=2, sets=[*NER_SETS[:-2], "device=cuda"])
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    _close(_losses(tmp_path / "one")[:STEPS], _losses(tmp_path / "two")[:STEPS], 1e-4)
