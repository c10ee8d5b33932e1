"""A whole new task from outside seqkit: the seqkit-digits distribution (tests/plugin_dist/) is
installed for real with pip into a folder of its own, found through its entry point, and used
through the command line (real subprocesses) and ``seqkit.load`` without touching seqkit."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DIST = ROOT / "tests" / "plugin_dist" / "seqkit-digits"
DOCS = ROOT / "docs" / "plugins.md"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """seqkit-digits installed by pip (a wheel built from its setup.cfg, with entry points)."""
    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("src") / DIST.name  # pip builds in the source folder: not in the checkout
    shutil.copytree(DIST, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(target), str(source)], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"pip could not install the test plugin: {proc.stderr[-2000:]}")
    assert list(target.glob("seqkit_digits-0.2.0.dist-info/entry_points.txt"))
    return target


def seqkit(site: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SEQKIT_LOAD_PLUGINS": "1", "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-m", "seqkit", *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=cwd or ROOT)


def test_the_plugin_is_listed_with_its_task(site):
    proc = seqkit(site, "plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    listed = {p["name"]: p for p in json.loads(proc.stdout)}
    digits = listed["digits"]
    assert digits["version"] == "0.2.0" and digits["distribution"] == "seqkit-digits"
    assert digits["tasks"] == ["largest-digit"] and digits["heads"] == ["pooled"]
    assert digits["datasets"] == ["digits"] and "register_commands" in digits["hooks"]


def test_its_options_are_validated_by_its_own_schema(site, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: largest-digit\ndata: {dataset: digits, max_len: 3}\n", encoding="utf-8")
    proc = seqkit(site, "recipe", "validate", str(bad))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"error: {bad}: data.max_len: unknown key; expected one of dataset, max_length, "
                                   "min_length, seed, test, train, valid (options of data 'digits')")
    proc = seqkit(site, "recipe", "show", str(DIST / "digits.yaml"), "--set", "head.pool=mean")
    assert proc.returncode == 0, proc.stderr
    assert "pool: mean" in proc.stdout and "shuffle: true" in proc.stdout and "features" not in proc.stdout


def test_train_evaluate_command_and_load(site, tmp_path):
    run = tmp_path / "run"
    proc = seqkit(site, "recipe", "run", str(DIST / "digits.yaml"), "--out", str(run), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["accuracy"] > 60, metrics  # 10 classes: chance is about 10-30 (large digits are common)
    proc = seqkit(site, "evaluate", str(run))
    assert proc.returncode == 0, proc.stderr
    assert re.match(r"accuracy\s+\d", proc.stdout) and "strings" in proc.stdout
    proc = seqkit(site, "digits-predict", str(run), "1239", "5")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("1239\t")
    code = f"import seqkit; m = seqkit.load({str(run)!r}); print(m.predict(['99999', '1119']))"
    env = {**os.environ, "SEQKIT_LOAD_PLUGINS": "1", "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[9, 9]"
    # seqkit export through the public API (export_spec), checked against the model; its graph runs
    proc = seqkit(site, "export", str(run), "--out", str(tmp_path / "onnx"))
    assert proc.returncode == 0, proc.stderr
    assert "checked against the model on 5 random batches" in proc.stderr
    code = (f"import sys; sys.path.insert(0, {str(tmp_path / 'onnx')!r}); import runtime, numpy as np; "
            f"g = runtime.load({str(tmp_path / 'onnx')!r}); "
            "print(g.run({'ids': np.array([[10, 10, 2]]), 'lengths': np.array([3])})[0].argmax(-1).tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[9]"  # ids are digits + 1: "991"


def test_without_the_plugin_its_run_is_one_clear_error(site, tmp_path):
    env = {**os.environ, "SEQKIT_LOAD_PLUGINS": "1"}
    proc = subprocess.run([sys.executable, "-m", "seqkit", "recipe", "validate", str(DIST / "digits.yaml")],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "task.name: unknown task 'largest-digit'" in proc.stderr


def test_the_guide_shows_the_code_this_test_runs():
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Write a task")[1].split("\n## ")[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "docs/plugins.md has no code in its 'Write a task' guide"
    assert blocks[0] == (DIST / "seqkit_digits.py").read_text(encoding="utf-8")
    assert (DIST / "setup.cfg").read_text(encoding="utf-8") in section
