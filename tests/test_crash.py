"""Crash consistency: SIGKILL a real training process at random points (mid-step, mid-checkpoint
write, mid-validation, before the first checkpoint), resume each time, and compare the finished
run with an uninterrupted one bit for bit. ``bench/soak.py`` runs the same loop for longer."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONLL = ROOT / "recipes" / "ner" / "conll.yaml"
SETTINGS = ["device=cpu", "train.threads=1", "features.embedding_dim=8", "encoder.hidden_size=8",
            "train.epochs=6", "train.checkpoint_every=3", "train.log_every=2"]
VOLATILE = {"time", "items_per_s", "wall_time_s", "peak_rss_mb", "threads"}


def command(out: Path, *extra: str) -> list[str]:
    sets = [a for kv in SETTINGS for a in ("--set", kv)]
    return [sys.executable, "-m", "seqkit", "recipe", "run", str(CONLL), "--out", str(out), "--no-progress",
            *sets, *extra]


def outcome(out: Path) -> tuple[list[dict], dict]:
    """The run's history and final metrics, without wall-clock figures."""
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    final = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    strip = lambda row: {k: v for k, v in row.items() if k not in VOLATILE}  # noqa: E731
    return [strip(row) for row in lines], strip(final)


def kill_and_resume(root: Path, kills: int, seed: int, window: tuple[float, float],
                    reference: tuple[list[dict], dict]) -> dict:
    """Train in fresh folders under ``root``, SIGKILLing each start at a random moment in
    ``window`` seconds and resuming, until ``kills`` kills have landed; each run that finishes is
    compared with ``reference``. Returns counts for the report."""
    env = {**os.environ, "SEQKIT_LOAD_PLUGINS": "0"}
    rng = random.Random(seed)
    killed = starts = runs = 0
    while killed < kills:
        runs += 1
        out = root / f"run{runs}"
        while True:
            starts += 1
            proc = subprocess.Popen(command(out, "--resume"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True, env=env)
            deadline = time.monotonic() + rng.uniform(*window)
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
                killed += 1
                continue
            _, stderr = proc.communicate()
            assert proc.returncode == 0, stderr
            assert "Traceback" not in stderr
            break
        assert outcome(out) == reference, f"run {runs} (after {killed} kills in all) differs from the uninterrupted run"
    return {"kills": killed, "starts": starts, "runs": runs}


def test_sigkill_at_random_points_then_resume_is_bit_identical(tmp_path):
    env = {**os.environ, "SEQKIT_LOAD_PLUGINS": "0"}
    started = time.monotonic()
    whole = subprocess.run(command(tmp_path / "whole"), capture_output=True, text=True, env=env, timeout=600)
    assert whole.returncode == 0, whole.stderr
    took = time.monotonic() - started
    # kills land anywhere from the imports to the final evaluation; most land while it trains
    # every finished run is compared with the uninterrupted one inside (an AssertionError names it)
    kill_and_resume(tmp_path, kills=20, seed=0, window=(0.35 * took, 0.95 * took),
                    reference=outcome(tmp_path / "whole"))
