"""Post-processing of an exported seqkit-forecast model, with numpy only (``seqkit export``
copies this file beside the graph; ``runtime.load(folder)`` returns a :class:`Forecaster`).

    model = runtime.load("DIR")
    model.forecast("MSFT", horizon=10)        # or forecast(history=[...past values...])
"""

from __future__ import annotations

import json
from typing import Any, Optional

import numpy as np

Z95 = 1.959964  # the 95% interval of a Gaussian head: mean +- Z95 standard deviations


def load(graph: Any) -> "Forecaster":
    return Forecaster(graph)


class Forecaster:
    """``forecast(series=None, horizon=None, history=None)`` as ``seqkit.load(run).forecast``:
    ``{"series", "history", "forecast"}`` and, for a Gaussian head, ``"lower"``/``"upper"``."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        info = json.loads((graph.folder / "forecast.json").read_text(encoding="utf-8"))
        self.window, self.horizon = info["window"], info["horizon"]
        self.names, self.shift, self.scale = info["names"], info["shift"], info["scale"]
        self.period, self.tails = info["period"], info["tails"]

    def _index(self, series: Any) -> int:
        if series is None:
            return 0
        if isinstance(series, int):
            return series
        return self.names.index(series)

    def forecast(self, series: Any = None, *, horizon: Optional[int] = None, history: Any = None) -> dict:
        k = self._index(series)
        steps = self.horizon if horizon is None else int(horizon)
        past = np.asarray(self.tails[k] if history is None else history, dtype=np.float64).reshape(-1)
        if len(past) < self.window:
            raise ValueError(f"history: {len(past)} values; the model reads windows of {self.window}")
        a, b = self.shift[k], self.scale[k]
        context = ((past[-self.window:] - a) / b).astype(np.float32)[None]
        period = np.array([self.period[k]], dtype=np.int64)
        means, stds = [], []
        while sum(len(m) for m in means) < steps:
            mean, *log_std = self.graph.run({"context": context, "period": period})
            means.append(mean[0].astype(np.float64))
            stds.append(np.exp(log_std[0][0].astype(np.float64)) if log_std else None)
            context = np.concatenate([context, mean.astype(np.float32)], axis=1)[:, -self.window:]
        mean = np.concatenate(means)[:steps] * b + a
        result = {"series": self.names[k], "history": past.tolist(), "forecast": mean.tolist()}
        if stds[0] is not None:
            spread = np.concatenate(stds)[:steps] * b * Z95
            result["lower"], result["upper"] = (mean - spread).tolist(), (mean + spread).tolist()
        return result
