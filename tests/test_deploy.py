"""Using a trained model inside an app: many threads on one model, the versions a run records."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import seqkit
import seqkit.testing
from seqkit.data.conll import read_conll
from tests.tiny import train_lm

ROOT = Path(__file__).resolve().parents[1]
CONLL = ROOT / "recipes" / "ner" / "conll.yaml"
QUIET = dict(progress=False, log=lambda m: None)
TEXTS = [" ".join(words) for words, _ in read_conll(CONLL.parent / "example" / "test.conll").sentences][:24]


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    run = tmp_path_factory.mktemp("deploy") / "tagger"
    seqkit.run_recipe(seqkit.Recipe.load(CONLL, ["train.max_steps=10", "train.threads=1"]), run, **QUIET)
    return run


def _hammer(call, items, threads: int = 4, rounds: int = 4):
    """Every item ``rounds`` times from ``threads`` threads at once, in a shuffled order."""
    jobs = [(i, item) for _ in range(rounds) for i, item in enumerate(items)]
    random.Random(0).shuffle(jobs)
    start = threading.Barrier(threads)

    def work(chunk):
        start.wait()
        return [(i, call(item)) for i, item in chunk]

    with ThreadPoolExecutor(threads) as pool:
        return [r for part in pool.map(work, [jobs[k::threads] for k in range(threads)]) for r in part]


def _no_thread_changes(monkeypatch) -> list:
    """Record every call of torch.set_num_threads from now on (a forward must make none)."""
    calls: list = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n)))
    return calls


def test_threads_sharing_a_tagger_get_single_thread_results(tagger, monkeypatch):
    model = seqkit.load(tagger)
    alone = [model.tag(t) for t in TEXTS]
    calls = _no_thread_changes(monkeypatch)
    for i, got in _hammer(model.tag, TEXTS):
        assert got == alone[i]
    assert calls == []


def test_a_generic_engine_bidirectional_model_never_changes_torchs_thread_count(tmp_path, monkeypatch):
    """The generic engine runs a layer's two directions in two threads in training, setting
    torch's intra-op thread count meanwhile; at inference it must not (a server's other threads
    would see it)."""
    import seqkit_lnlstm

    with seqkit.testing.registered_plugin(seqkit_lnlstm, name="lnlstm-plugin"):
        seqkit.run_recipe(seqkit.Recipe.load(CONLL, ["train.max_steps=3", "encoder.cell=lnlstm"]), tmp_path / "r",
                          **QUIET)
        model = seqkit.load(tmp_path / "r", threads=2)
        assert model.encoder.bidirectional and not model.encoder.fused
        alone = [model.tag(t) for t in TEXTS[:8]]
        calls = _no_thread_changes(monkeypatch)
        for i, got in _hammer(model.tag, TEXTS[:8], rounds=2):
            assert got == alone[i]
        assert calls == []


def test_threads_sharing_a_language_model_get_single_thread_results(tmp_path, monkeypatch):
    model = seqkit.load(train_lm(tmp_path))
    prompts = ["the cat", "a dog", "on the", "the"]
    generate = lambda p: (model.generate(p, max_tokens=8, seed=len(p)), model.score(p)["logprob"])  # noqa: E731
    alone = [generate(p) for p in prompts]
    before = torch.random.get_rng_state()
    calls = _no_thread_changes(monkeypatch)
    for i, got in _hammer(generate, prompts):
        assert got == alone[i]
    assert calls == [] and torch.equal(torch.random.get_rng_state(), before)  # seeded sampling: its own RNG


def test_a_run_records_its_versions_and_load_warns_when_they_differ(tagger, tmp_path):
    saved = json.loads((tagger / "versions.json").read_text())
    assert saved["seqkit"] == seqkit.__version__ and saved["torch"] == torch.__version__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seqkit.load(tagger)  # same versions: no warning
    copy = tmp_path / "old"
    import shutil

    shutil.copytree(tagger, copy)
    assert saved["uses"] == []  # the CoNLL recipe names built-in components only
    (copy / "versions.json").write_text(json.dumps({**saved, "seqkit": "0.0.1", "plugins": {"seqkit-imaginary": "9.9"},
                                                    "uses": ["seqkit-imaginary"]}))
    with pytest.warns(UserWarning, match=r"was trained with seqkit 0\.0\.1 \(now .*\), seqkit-imaginary 9\.9 "
                                         r"\(now not installed\); results may differ"):
        seqkit.load(copy)


def test_a_plugin_installed_but_not_loaded_is_not_called_missing(monkeypatch):
    """A run's plugin that is installed while entry-point loading is off (SEQKIT_LOAD_PLUGINS=0,
    as in bench/serve.py) is reported as such, not as "not installed"."""
    import importlib.metadata

    from seqkit import plugins

    try:
        installed = importlib.metadata.version("seqkit-peephole")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("seqkit-peephole is not installed (bash install.sh installs it)")
    monkeypatch.setenv("SEQKIT_LOAD_PLUGINS", "0")
    saved = {"seqkit": seqkit.__version__, "plugins": {"seqkit-peephole": installed}}
    assert plugins.version_mismatch(saved) == [
        f"seqkit-peephole {installed} (now {installed} installed but not loaded: SEQKIT_LOAD_PLUGINS=0)"]


def test_load_refuses_bad_arguments(tagger):
    with pytest.raises(seqkit.SeqkitError, match="checkpoint: expected 'best' or 'last', got 'bogus'"):
        seqkit.load(tagger, checkpoint="bogus")
    with pytest.raises(seqkit.SeqkitError, match="threads must be >= 1, got 0"):
        seqkit.load(tagger, threads=0)
    one = seqkit.load(tagger).tag(TEXTS[0])
    assert isinstance(one, dict) and one == seqkit.load(tagger).tag([TEXTS[0]])[0]
    with pytest.raises(seqkit.SeqkitError, match="precision: expected one of fp32, bf16, got 'fp16'"):
        seqkit.load(tagger, precision="fp16")


def test_bf16_precision_runs_the_encoder_in_bf16(tagger):
    """``precision="bf16"``: every encoder's eval recurrences in bf16 (a CPU without native bf16
    is warned about, and still computes it); the tags agree with fp32's on nearly every text."""
    fp32 = seqkit.load(tagger)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bf16 = seqkit.load(tagger, precision="bf16")
    assert fp32.encoder.inference_dtype is None and bf16.encoder.inference_dtype == torch.bfloat16
    x = torch.randn(2, 5, fp32.encoder.input_size)
    with torch.no_grad():
        out = bf16.encoder(x)[0]
        assert out.dtype == torch.float32 and (out - fp32.encoder(x)[0]).abs().max() > 0
    a, b = fp32.tag(TEXTS), bf16.tag(TEXTS)
    assert sum(x["tags"] == y["tags"] for x, y in zip(a, b)) >= len(TEXTS) - 2


def test_the_deployment_benchmarks_run_end_to_end(tagger, tmp_path):
    """bench/deploy.py batching and bench/serve.py, as subprocesses, at tiny sizes: every field
    they report is there (speed is never asserted; the README's figures come from full runs)."""
    env = {**os.environ, "SEQKIT_LOAD_PLUGINS": "0"}
    out = tmp_path / "batching.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "deploy.py"), "batching", str(tagger), "--limit", "12",
                    "--batch", "4", "--device", "cpu", "--json", str(out)], check=True, env=env, cwd=ROOT,
                   capture_output=True, timeout=300)
    batching = json.loads(out.read_text())
    assert batching["device"] == "cpu" and batching["sentences"] == 12 and batching["batch"] == 4
    assert batching["one_per_call_per_s"] > 0 and batching["batched_per_s"] > 0 and batching["encoder_ms_batched"] > 0
    out = tmp_path / "padding.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "deploy.py"), "padding", str(tagger), "--limit", "12",
                    "--batch", "4", "--json", str(out)], check=True, env=env, cwd=ROOT, capture_output=True,
                   timeout=300)
    padding = json.loads(out.read_text())
    assert padding["padded_per_real"] >= 1 and padding["ms_per_call"]
    assert all(set(row) == {"1", "4", "16"} and min(row.values()) > 0 for row in padding["ms_per_call"].values())
    out = tmp_path / "serve.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "serve.py"), str(tagger), "--requests", "8",
                    "--clients", "1,4", "--device", "cpu", "--json", str(out), "--png", str(tmp_path / "serve.png")],
                   check=True, env=env, cwd=ROOT, capture_output=True, timeout=300)
    serve = json.loads(out.read_text())
    assert serve["device"] == "cpu" and set(serve["modes"]) == {"micro-batching", "max-batch 1"}
    for rows in serve["modes"].values():
        assert [r["clients"] for r in rows] == [1, 4]
        assert all(r["requests"] == 8 and r["errors"] == 0 and r["rps"] > 0 for r in rows)
    assert serve["ratio"] > 0
    assert (tmp_path / "serve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = subprocess.run([sys.executable, str(ROOT / "bench" / "serve.py"), "--plot", str(out), "--png",
                            str(tmp_path / "again.png")], env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and (tmp_path / "again.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
