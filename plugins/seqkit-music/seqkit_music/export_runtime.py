"""Post-processing of an exported seqkit-music piano-roll model, with numpy only (``seqkit
export`` copies this file beside the graph; ``runtime.load(folder)`` returns a :class:`RollModel`).

    model = runtime.load("DIR")
    roll = model.generate(64, temperature=1.0, seed=1)    # (frames, 88) 0/1, MIDI keys 21..108
    for roll in model.stream(64, seed=1): ...            # one frame at a time, as it is sampled
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Optional

import numpy as np

KEYS = 88


def load(graph: Any) -> "RollModel":
    return RollModel(graph)


class RollModel:
    """Samples piano rolls: each key of the next frame on with the model's probability (at a
    temperature), the frame fed back; ``prime`` (T, 88) is read first."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        info = json.loads((graph.folder / "music.json").read_text(encoding="utf-8"))
        self.layers, self.hidden, self.num_states = info["layers"], info["hidden"], info["num_states"]
        self.frame_beats = info["frame_beats"]

    def _step(self, frames: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        feeds = {"frames": frames[None].astype(np.float32), "lengths": np.array([len(frames)], dtype=np.int64)}
        feeds.update({f"state{k}": s for k, s in enumerate(state)})
        logits, *new = self.graph.run(feeds)
        return logits[0, -1], new

    def stream(self, frames: int, *, temperature: float = 1.0, seed: Optional[int] = None,
               prime: Optional[np.ndarray] = None) -> Iterator[np.ndarray]:
        """Yield each sampled frame (88,) 0/1 as it comes."""
        rng = np.random.default_rng(seed)
        state = [np.zeros((self.layers, 1, self.hidden), np.float32) for _ in range(self.num_states)]
        start = np.zeros((0, KEYS)) if prime is None else (np.asarray(prime) > 0).astype(np.float32)
        context = np.concatenate([np.zeros((1, KEYS)), start])  # silence, then the prime
        logits, state = self._step(context, state)
        for _ in range(frames):
            if temperature == 0:
                frame = (logits > 0).astype(np.float32)
            else:
                frame = (rng.random(KEYS) < 1 / (1 + np.exp(-logits / temperature))).astype(np.float32)
            yield frame.astype(np.uint8)
            logits, state = self._step(frame[None], state)

    def generate(self, frames: int = 32, **options: Any) -> np.ndarray:
        """(frames, 88) 0/1: see :meth:`stream`."""
        rows = list(self.stream(frames, **options))
        return np.stack(rows) if rows else np.zeros((0, KEYS), np.uint8)
