"""Tiny trained runs for tests that need a real model of a task (any weights will do)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

import seqkit

WORDS = "the a cat dog sat ran on under mat log".split()


def train_lm(folder: Path, name: str = "run", *, cell: str = "lstm", directions: str = "forward",
             steps: int = 10, seed: int = 0, text: Optional[list[str]] = None) -> Path:
    """A two-layer word LM of hidden size 12 on random lines of ten words (or on ``text``, every
    split), ``steps`` steps."""
    rng = random.Random(seed)
    for split, count in (("train", 200), ("valid", 20), ("test", 20)):
        lines = text or [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(count)]
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    recipe = folder / f"{name}.yaml"
    recipe.write_text(f"""
description: tiny LM
task: {{name: language-model, bptt: 8, eval_streams: 2}}
data: {{dataset: text, train: {folder}/train.txt, valid: {folder}/valid.txt, test: {folder}/test.txt}}
features: {{kind: lm-tokens, units: words, embedding_dim: 12}}
encoder: {{cell: {cell}, directions: {directions}, num_layers: 2, hidden_size: 12}}
head: {{name: lm}}
train: {{epochs: {steps}, max_steps: {steps}, batch_size: 4, lr: 0.01, seed: 3, threads: 1}}
device: cpu
""", encoding="utf-8")
    seqkit.run_recipe(seqkit.Recipe.load(recipe), folder / name, progress=False, log=lambda m: None)
    return folder / name
