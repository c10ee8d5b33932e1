"""The forecasting task: ``window`` past values -> (a CNN front-end) -> the shared encoder -> a
regression head -> the next ``horizon`` values.

Every series is scaled by a scaler fitted on its training part only (``minmax`` or ``standard``);
one global model learns from the windows of all series. With ``task.inputs: relative`` (the
default) each window is shifted so that its last value is 0 and the head predicts the change from
that value, so an untrained model starts out as the naive forecast. The ``regression`` head gives
point forecasts (MSE or MAE loss) or, with ``distribution: gaussian``, a mean and a standard
deviation a step (Gaussian negative log-likelihood), which ``forecast`` turns into 95% intervals.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import seqkit
from seqkit.tasks import (
    ModelOutput,
    Prepared,
    Task,
    build_encoder,
    check_batch_size,
    head_class,
    load_splits,
    persist_vocab,
    read_vocab,
    seed_everything,
)

from .baselines import arima_or_none, mase_scale, naive, scores, seasonal_naive
from .data import TASK, CsvConfig, Series, SeriesSet, read_csv

Z95 = 1.959964
BASELINES = ("naive", "seasonal_naive", "arima")


# -- what a run keeps about its series ---------------------------------------------------------


@dataclass
class Meta:
    """Per series: the scaler (``scaled = (x - shift) / scale``, fitted on the training part),
    MASE's scale, the seasonal period, and the last values (and dates) to forecast from."""

    names: list[str]
    shift: list[float]
    scale: list[float]
    mase: list[float]
    period: list[int]
    tails: list[list[float]]
    dates: list[Optional[list[str]]]
    frequency: Optional[str]

    @classmethod
    def build(cls, data: SeriesSet, scaler: str, keep: int) -> "Meta":
        shift, scale = zip(*(fit_scaler(s.values[: s.valid_start], scaler) for s in data.series))
        return cls([s.name for s in data.series], list(shift), list(scale),
                   [mase_scale(s.values, s.test_start, s.period) for s in data.series],
                   [s.period for s in data.series], [s.values[-keep:].tolist() for s in data.series],
                   [s.dates[-keep:] if s.dates else None for s in data.series], data.frequency)

    def index(self, series: Any) -> int:
        if series is None:
            return 0
        if isinstance(series, int) and not isinstance(series, bool):
            if not 0 <= series < len(self.names):
                raise seqkit.SeqkitError(f"series: {series} is out of range (0..{len(self.names) - 1})")
            return series
        if series not in self.names:
            shown = ", ".join(self.names[:8]) + (", ..." if len(self.names) > 8 else "")
            raise seqkit.SeqkitError(f"series: no series {series!r} in this run (it has {shown})")
        return self.names.index(series)

    def save(self, folder: Path) -> None:
        (folder / "forecast_meta.json").write_text(json.dumps(self.__dict__), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "Meta":
        return cls(**json.loads((folder / "forecast_meta.json").read_text(encoding="utf-8")))


def fit_scaler(train: np.ndarray, kind: str) -> tuple[float, float]:
    """``(shift, scale)`` from a series' training values (a constant series scales by 1)."""
    if kind == "none" or not len(train):
        return 0.0, 1.0
    if kind == "minmax":
        low, high = float(train.min()), float(train.max())
        return low, (high - low) or 1.0
    return float(train.mean()), float(train.std()) or 1.0


# -- windows and batches -----------------------------------------------------------------------


@dataclass
class Batch:
    inputs: Tensor  # (N, W) scaled past values
    targets: Tensor  # (N, H) scaled future values
    series: Tensor  # (N,) which series
    shift: Tensor  # (N,) the series' scaler, to report in the data's units
    scale: Tensor  # (N,)
    mase: Tensor  # (N,) the series' MASE scale
    period: Tensor  # (N,) the series' seasonality

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.inputs.to(device), self.targets.to(device), self.series, self.shift, self.scale, self.mase,
                     self.period)

    @property
    def num_items(self) -> int:
        return self.targets.numel()

    def __len__(self) -> int:
        return len(self.series)


class Windows:
    """Forecast origins ``(series, t)``: inputs ``x[t - W: t]``, targets ``x[t: t + H]``, built
    into batches on demand (M4 has a few hundred thousand windows)."""

    def __init__(self, data: list[Series], meta_scalers: list[tuple[float, float, float]], window: int,
                 horizon: int, part: str, stride: int = 1) -> None:
        self.window, self.horizon = window, horizon
        self.scaled = [((s.values - a) / b).astype(np.float32) for s, (a, b, _) in zip(data, meta_scalers)]
        # per series: shift, scale, MASE scale, period (looked up by row for every batch)
        self.table = torch.tensor([(*sc, s.period) for sc, s in zip(meta_scalers, data)], dtype=torch.float64)
        rows = []
        for k, s in enumerate(data):
            first, end = {"train": (window, s.valid_start), "valid": (max(s.valid_start, window), s.test_start),
                          "test": (max(s.test_start, window), len(s))}[part]
            for t in range(first, end - horizon + 1, 1 if part == "train" else stride):
                rows.append((k, t))
        self.rows = np.array(rows, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, rows: np.ndarray) -> Batch:
        w, h = self.window, self.horizon
        x = np.stack([self.scaled[k][t - w: t] for k, t in rows])
        y = np.stack([self.scaled[k][t: t + h] for k, t in rows])
        series = torch.from_numpy(rows[:, 0].copy())
        a, b, m, period = self.table[series].unbind(1)
        return Batch(torch.from_numpy(x), torch.from_numpy(y), series, a, b, m, period.long())

    def batches(self, size: int, *, seed: Optional[int] = None, limit: int = 0) -> "Batches":
        order = np.arange(len(self.rows))
        if seed is not None:
            order = np.random.RandomState(seed).permutation(len(self.rows))
        if limit:
            order = order[:limit]
        return Batches(self, order, size)


class Batches:
    """A sequence of batches over ``Windows`` in a fixed order, each built when asked for."""

    def __init__(self, windows: Windows, order: np.ndarray, size: int) -> None:
        self.windows, self.order, self.size = windows, order, size

    def __len__(self) -> int:
        return (len(self.order) + self.size - 1) // self.size

    def __getitem__(self, k: int) -> Batch:
        if not 0 <= k < len(self):
            raise IndexError(k)
        return self.windows.batch(self.windows.rows[self.order[k * self.size: (k + 1) * self.size]])


# -- the head ----------------------------------------------------------------------------------


@dataclass
class RegressionOptions:
    distribution: Literal["point", "gaussian"] = "point"  # gaussian: also a standard deviation a step
    hidden: int = seqkit.bounded(0, ge=0)  # a ReLU layer of this width before the output (0: none)
    dropout: float = seqkit.bounded(0.0, ge=0, lt=1)  # on the encoder's last state


class RegressionHead(nn.Module):
    """The encoder's summary of a window ``(N, D)`` -> the next ``horizon`` values ``(N, H)``
    (and their log standard deviations for ``gaussian``)."""

    Config = RegressionOptions
    task = TASK

    def __init__(self, input_size: int, horizon: int, *, distribution: str = "point", hidden: int = 0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.horizon, self.gaussian = horizon, distribution == "gaussian"
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        width = input_size
        if hidden:
            layers += [nn.Linear(input_size, hidden), nn.ReLU()]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(width, horizon * (2 if self.gaussian else 1))
        nn.init.zeros_(self.out.weight)  # start from "no change" (the naive forecast, relative inputs)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        out = self.out(self.body(h))
        if self.gaussian:
            mean, log_std = out.split(self.horizon, dim=-1)
            return mean, log_std.clamp(-7.0, 5.0)
        return out, None


class ConvFrontEnd(nn.Module):
    """CNN-LSTM's time-distributed convolution: the window is cut into ``steps`` subsequences of
    ``length`` values; one 1-D convolution (ReLU, max-pooled over the subsequence) turns each into
    a vector, and the encoder reads the sequence of those vectors."""

    def __init__(self, features: int, length: int, channels: int, kernel: int) -> None:
        super().__init__()
        self.length = length
        self.conv = nn.Conv1d(features, channels, kernel, padding=kernel // 2)

    def forward(self, x: Tensor) -> Tensor:  # (N, W, F) -> (N, W / length, C)
        n, w, f = x.shape
        parts = x.reshape(n * (w // self.length), self.length, f).transpose(1, 2)
        return F.relu(self.conv(parts)).amax(dim=-1).reshape(n, w // self.length, -1)


# -- the model ---------------------------------------------------------------------------------


class Forecaster(nn.Module):
    """Windows of past values in, the next values out; ``forecast(...)`` for apps."""

    def __init__(self, recipe: Any, meta: Meta) -> None:
        super().__init__()
        self.recipe, self.meta = recipe, meta
        opts = recipe.task
        self.window, self.horizon, self.inputs = opts.window, opts.horizon, opts.inputs
        self.relative = opts.inputs != "level"
        self.loss_kind = opts.loss
        features = 1
        self.frontend = None
        if opts.frontend == "cnn":
            self.frontend = ConvFrontEnd(1, opts.cnn_length, opts.cnn_channels, opts.cnn_kernel)
            features = opts.cnn_channels
        self.encoder = build_encoder(recipe, features)
        h = recipe.head
        self.head = head_class(recipe)(self.encoder.output_size, opts.horizon, distribution=h.distribution,
                                       hidden=h.hidden, dropout=h.dropout)

    def base(self, inputs: Tensor, period: Optional[Tensor]) -> Optional[Tensor]:
        """What the head's output is added to: the last value (``relative``), the value one season
        before each target (``seasonal``, periods from ``period``) or nothing (``level``)."""
        if self.inputs == "level":
            return None
        if self.inputs == "relative" or period is None:
            return inputs[:, -1:].expand(-1, self.horizon)
        steps = torch.arange(self.horizon, device=inputs.device)
        m = period.to(inputs.device).clamp(1, self.window).unsqueeze(1)  # (N, 1)
        return inputs.gather(1, self.window - m + steps.unsqueeze(0) % m)

    def predict(self, inputs: Tensor, period: Optional[Tensor] = None, *,
                encoder: Optional[nn.Module] = None) -> tuple[Tensor, Optional[Tensor]]:
        """Scaled windows ``(N, W)`` -> scaled forecasts ``(N, H)`` and log standard deviations
        (``period``: each window's seasonality, for ``inputs: seasonal``; ``encoder``: the
        encoder's export form, for ``seqkit export``)."""
        last = inputs[:, -1:]
        x = (inputs - last if self.relative else inputs).unsqueeze(-1)
        if self.frontend is not None:
            x = self.frontend(x)
        lengths = torch.full((x.size(0),), x.size(1), dtype=torch.long)
        out, _ = (encoder or self.encoder)(x, lengths)
        summary = out[:, -1]
        if self.encoder.bidirectional:  # the backward half has read the whole window at step 0
            half = out.size(-1) // 2
            summary = torch.cat([out[:, -1, :half], out[:, 0, half:]], dim=-1)
        mean, log_std = self.head(summary)
        base = self.base(inputs, period)
        return (mean if base is None else mean + base), log_std

    def _loss(self, mean: Tensor, log_std: Optional[Tensor], targets: Tensor, reduction: str = "mean") -> Tensor:
        if log_std is not None:
            loss = 0.5 * ((targets - mean) * torch.exp(-log_std)) ** 2 + log_std + 0.5 * math.log(2 * math.pi)
        elif self.loss_kind == "mae":
            loss = (targets - mean).abs()
        else:
            loss = (targets - mean) ** 2
        return loss.mean() if reduction == "mean" else loss.sum()

    def forward(self, batch: Batch, state=None) -> ModelOutput:
        mean, log_std = self.predict(batch.inputs, batch.period)
        return ModelOutput(self._loss(mean, log_std, batch.targets))

    @torch.inference_mode()
    def forecasts(self, batches) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, dict]:
        """Forecasts and targets in the data's units, the series and MASE scale of each row, the
        mean loss, and (Gaussian heads) the share of targets inside the 95% intervals."""
        was = self.training
        self.eval()
        device = next(self.parameters()).device
        preds, targets, series, mase = [], [], [], []
        loss = 0.0
        inside = values = 0
        for batch in batches:
            mean, log_std = self.predict(batch.inputs.to(device), batch.period)
            y = batch.targets.to(device)
            loss += float(self._loss(mean, log_std, y, reduction="sum"))
            a, b = batch.shift.unsqueeze(1).numpy(), batch.scale.unsqueeze(1).numpy()
            preds.append(mean.double().cpu().numpy() * b + a)
            targets.append(batch.targets.double().numpy() * b + a)
            series.append(batch.series.numpy())
            mase.append(batch.mase.numpy())
            if log_std is not None:
                inside += int(((y - mean).abs() <= Z95 * log_std.exp()).sum())
                values += y.numel()
        self.train(was)
        if not preds:
            empty = np.zeros((0, self.horizon))
            return empty, empty, np.zeros(0, dtype=np.int64), np.zeros(0), math.nan, {}
        pred, target = np.concatenate(preds), np.concatenate(targets)
        extra = {"coverage95": 100.0 * inside / values} if values else {}
        return pred, target, np.concatenate(series), np.concatenate(mase), loss / max(target.size, 1), extra

    def evaluate(self, batches) -> dict[str, float]:
        pred, target, series, mase, loss, extra = self.forecasts(batches)
        if not len(pred):
            return {}
        return {**scores(pred, target, series, mase), "loss": loss, **extra}

    @torch.inference_mode()
    def forecast(self, series: Any = None, *, horizon: Optional[int] = None, history=None) -> dict[str, Any]:
        """The next ``horizon`` values (default: the model's) of a series of this run (by name or
        index; the end of its data) or of ``history`` (past values in the data's units, scaled like
        ``series``). Beyond the model's horizon the forecasts are fed back as inputs (the intervals
        of those later steps are then too narrow: they ignore the error of the fed-back values).

        Returns ``{"series", "history", "forecast", "lower", "upper", "dates", "future_dates"}``
        (``lower``/``upper``: 95% intervals, Gaussian heads only; dates when the data has them)."""
        k = self.meta.index(series)
        steps = check_batch_size(self.horizon if horizon is None else horizon, "horizon")
        if history is None:
            past = np.asarray(self.meta.tails[k], dtype=np.float64)
            dates = self.meta.dates[k]
        else:
            past, dates = np.asarray(history, dtype=np.float64).reshape(-1), None
            if not np.isfinite(past).all():
                raise seqkit.DataError("history: every value must be a finite number")
        if len(past) < self.window:
            raise seqkit.DataError(f"history: {len(past)} values; the model reads windows of {self.window}")
        a, b = self.meta.shift[k], self.meta.scale[k]
        self.eval()
        device = next(self.parameters()).device
        context = torch.tensor((past[-self.window:] - a) / b, dtype=torch.float32, device=device).unsqueeze(0)
        means, stds = [], []
        period = torch.tensor([self.meta.period[k]])
        while sum(len(m) for m in means) < steps:
            mean, log_std = self.predict(context, period)
            means.append(mean[0].double().cpu().numpy())
            stds.append(log_std[0].double().exp().cpu().numpy() if log_std is not None else None)
            context = torch.cat([context, mean.float()], dim=1)[:, -self.window:]
        mean = np.concatenate(means)[:steps] * b + a
        result: dict[str, Any] = {"series": self.meta.names[k], "history": past.tolist(),
                                  "forecast": mean.tolist(), "dates": dates, "future_dates": None}
        if stds[0] is not None:
            spread = np.concatenate(stds)[:steps] * b * Z95
            result["lower"], result["upper"] = (mean - spread).tolist(), (mean + spread).tolist()
        if dates and self.meta.frequency:
            result["future_dates"] = future_dates(dates[-1], self.meta.frequency, steps)
        return result


    def export_spec(self) -> Any:
        """What ``seqkit export`` writes: scaled windows ``context`` (N, W) and each window's
        seasonal ``period`` (N,) in; scaled forecasts (N, H) (and a Gaussian head's log standard
        deviations) out; this plugin's export_runtime.py scales, feeds back and unscales."""
        from seqkit.export import ExportGraph, ExportSpec

        class Graph(ExportGraph):
            def forward(self, context: Tensor, period: Tensor) -> tuple[Tensor, ...]:
                mean, log_std = self.model.predict(context, period, encoder=self.encoder)
                return (mean,) if log_std is None else (mean, log_std)

        def sample(gen: torch.Generator) -> dict[str, Tensor]:
            n = int(torch.randint(2, 9, (1,), generator=gen))
            return {"context": torch.rand(n, self.window, generator=gen),
                    "period": torch.randint(1, self.window + 1, (n,), generator=gen)}

        meta = self.meta
        info = {"window": self.window, "horizon": self.horizon, "names": meta.names, "shift": meta.shift,
                "scale": meta.scale, "period": meta.period, "tails": meta.tails}
        outputs = ["mean"] + (["log_std"] if self.head.gaussian else [])
        return ExportSpec(build=functools.partial(Graph, self), inputs=sample(torch.Generator().manual_seed(1)),
                          outputs=outputs,
                          dynamic={"context": {0: "batch"}, "period": {0: "batch"}}, sample=sample,
                          files={"forecast.json": info,
                                 "forecast_runtime.py": Path(__file__).with_name("export_runtime.py")},
                          manifest={"runtime_module": "forecast_runtime.py"})


def future_dates(last: str, frequency: str, steps: int) -> Optional[list[str]]:
    import pandas as pd

    try:
        index = pd.date_range(pd.Timestamp(last), periods=steps + 1, freq=frequency)[1:]
    except (ValueError, TypeError):
        return None
    return [str(d.date()) if d == d.normalize() else d.isoformat() for d in index]


# -- the task ----------------------------------------------------------------------------------


@dataclass
class ForecastOptions:
    window: int = seqkit.bounded(60, ge=1)  # past values the model reads
    horizon: int = seqkit.bounded(1, ge=1)  # future values it predicts at once
    scaler: Literal["minmax", "standard", "none"] = "minmax"  # per series, fitted on its training part
    # relative: windows shifted so their last value is 0, the head predicts changes from it;
    # seasonal: the same inputs, the head predicts changes from the seasonal naive forecast
    inputs: Literal["relative", "seasonal", "level"] = "relative"
    loss: Literal["mse", "mae"] = "mse"  # for point forecasts (a gaussian head uses its likelihood)
    frontend: Literal["none", "cnn"] = "none"  # cnn: CNN-LSTM, a time-distributed 1-D convolution
    cnn_length: int = seqkit.bounded(10, ge=1)  # values per subsequence (window must be a multiple)
    cnn_channels: int = seqkit.bounded(32, ge=1)
    cnn_kernel: int = seqkit.bounded(3, ge=1)
    max_windows: int = seqkit.bounded(0, ge=0)  # training windows an epoch, a fresh random sample (0: all)
    eval_stride: int = seqkit.bounded(1, ge=1)  # steps between validation/test forecast origins
    # fitted in the same run on the same test origins: naive, seasonal_naive, arima
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    arima_seasonal: Literal["adjust", "full", "none"] = "adjust"
    arima_max_history: int = seqkit.bounded(0, ge=0)  # fit ARIMA on the last N values only (0: all)
    arima_jobs: int = seqkit.bounded(0, ge=0)  # processes fitting ARIMA (0: train.threads)


class ForecastTask(Task):
    """Forecasting: RMSE/MAE in the data's units, sMAPE and MASE; baselines beside the model."""

    Config = ForecastOptions
    default_head = "regression"
    default_dataset = "pmdarima"
    default_features = None
    monitor, mode = "loss", "min"
    summary = ("rmse", "mae", "smape", "mase", "naive_rmse", "naive_mae", "naive_smape", "naive_mase")

    def check(self, recipe) -> None:
        opts = recipe.task
        unknown = [b for b in opts.baselines if b not in BASELINES]
        if unknown:
            raise seqkit.RecipeError(f"{recipe.source}: task.baselines: unknown baseline {unknown[0]!r}; "
                                     f"choose from {', '.join(BASELINES)}")
        if opts.frontend == "cnn" and opts.window % opts.cnn_length:
            raise seqkit.RecipeError(f"{recipe.source}: task.window: {opts.window} is not a multiple of "
                                     f"task.cnn_length ({opts.cnn_length}), which the cnn front-end needs")

    def prepare(self, recipe, run_dir, *, log) -> Prepared:
        data: SeriesSet = load_splits(recipe)
        opts, cfg = recipe.task, recipe.train
        for note in data.notes:
            log(note)
        meta = persist_vocab(run_dir, "forecast_meta.json",
                             lambda: Meta.build(data, opts.scaler, max(opts.window, 400)), Meta.load, Meta.save)
        if meta.names != [s.name for s in data.series]:
            raise seqkit.DataError(f"{data.source}: the series differ from the ones this run was started with")
        scalers = list(zip(meta.shift, meta.scale, meta.mase))
        train = Windows(data.series, scalers, opts.window, opts.horizon, "train")
        valid = Windows(data.series, scalers, opts.window, opts.horizon, "valid", opts.eval_stride)
        test = Windows(data.series, scalers, opts.window, opts.horizon, "test", opts.eval_stride)
        short = sum(1 for s in data.series if s.valid_start < opts.window + opts.horizon)
        if not len(train):
            raise seqkit.DataError(f"{data.source}: no series has {opts.window + opts.horizon} training values "
                                   f"(task.window + task.horizon); shorten the window")
        log(f"data: {data.source}: {len(data)} series, {sum(len(s) for s in data.series):,} values; windows "
            f"{len(train):,} train / {len(valid):,} valid / {len(test):,} test (window {opts.window}, "
            f"horizon {opts.horizon})" + (f"; {short} series too short to train on" if short else ""))
        seed_everything(cfg.seed)
        model = Forecaster(recipe, meta)
        eval_size = cfg.eval_batch_size

        def final_eval(best: Forecaster) -> dict[str, Any]:
            if not len(test):
                return {}
            metrics = best.evaluate(test.batches(eval_size))
            metrics.update(baseline_metrics(data, test, opts, cfg.threads, log))
            log(results_table(metrics, opts, len(test)))
            return metrics

        return Prepared(model, lambda epoch: train.batches(cfg.batch_size, seed=cfg.seed * 7919 + epoch,
                                                           limit=opts.max_windows),
                        valid.batches(eval_size) if len(valid) else None,
                        test.batches(eval_size) if len(test) else None, final_eval)

    def format_metrics(self, metrics: dict[str, Any]) -> str:
        lines = [results_table(metrics, None, metrics.get("forecasts"))]
        lines += [f"{key:<16}{metrics[key]:.4g}" for key in ("loss", "coverage95") if key in metrics]
        return "\n".join(lines)

    def build_model(self, recipe, run_dir: Path) -> Forecaster:
        return Forecaster(recipe, read_vocab(run_dir / "vocab", Meta.load, marker="forecast_meta.json"))

    def evaluate_data(self, model, data: Optional[Path], *, batch_size: int) -> dict[str, Any]:
        opts = model.recipe.task
        if data is None:
            series_set = load_splits(model.recipe)
        else:
            config = model.recipe.data if isinstance(model.recipe.data, CsvConfig) else CsvConfig()
            series_set = read_csv(Path(data), config)
        scalers = []
        for s in series_set.series:  # a series of the run keeps its scaler; others get their own
            if s.name in model.meta.names:
                k = model.meta.names.index(s.name)
                scalers.append((model.meta.shift[k], model.meta.scale[k], mase_scale(s.values, s.test_start, s.period)))
            else:
                scalers.append((*fit_scaler(s.values[: s.valid_start], opts.scaler),
                                mase_scale(s.values, s.test_start, s.period)))
        test = Windows(series_set.series, scalers, opts.window, opts.horizon, "test", opts.eval_stride)
        if not len(test):
            raise seqkit.DataError(f"{series_set.source}: no test forecasts: each series needs more than "
                                   f"task.window + task.horizon values in its test part and before it")
        check_batch_size(batch_size)
        metrics = model.evaluate(test.batches(batch_size))
        metrics.update(baseline_metrics(series_set, test, opts, 1, None, only=("naive", "seasonal_naive")))
        return {**metrics, "forecasts": len(test), "data": series_set.source}


def _origins(test: Windows, k: int) -> np.ndarray:
    return test.rows[test.rows[:, 0] == k, 1]


def baseline_metrics(data: SeriesSet, test: Windows, opts, jobs: int, log, only=None) -> dict[str, Any]:
    """The baselines' scores on exactly the model's test origins, keys ``<baseline>_<metric>``."""
    wanted = [b for b in opts.baselines if only is None or b in only]
    h = opts.horizon
    series = test.rows[:, 0]
    targets = np.stack([data.series[k].values[t: t + h] for k, t in test.rows])
    mase = test.table.numpy()[series, 2]
    out: dict[str, Any] = {}
    for name in wanted:
        if name == "arima":
            continue
        preds = []
        for k, s in enumerate(data.series):
            origins = _origins(test, k)
            if name == "naive" or s.period <= 1:
                preds.append(naive(s.values, origins, h))
            else:
                preds.append(seasonal_naive(s.values, origins, h, s.period))
        out.update({f"{name}_{key}": value for key, value in
                    scores(np.concatenate(preds), targets, series, mase).items()})
    if "arima" in wanted:
        from joblib import Parallel, delayed

        if log:
            log(f"baseline: fitting ARIMA (pmdarima.auto_arima) to {len(data)} series ...")
        fits = Parallel(n_jobs=opts.arima_jobs or jobs)(
            delayed(arima_or_none)(s.values, s.test_start, _origins(test, k), h, s.period,
                                   seasonal=opts.arima_seasonal, max_history=opts.arima_max_history)
            for k, s in enumerate(data.series))
        failed = [data.series[k].name for k, (p, _) in enumerate(fits) if p is None]
        preds = [p if p is not None else naive(data.series[k].values, _origins(test, k), h)
                 for k, (p, _) in enumerate(fits)]
        out.update({f"arima_{key}": value for key, value in
                    scores(np.concatenate(preds), targets, series, mase).items()})
        models = sorted({d for p, d in fits if p is not None})
        out["arima_model"] = models[0] if len(models) == 1 else f"{len(models)} different orders"
        if failed:
            out["arima_failed"] = len(failed)
            if log:
                log(f"baseline: ARIMA failed on {len(failed)} series ({', '.join(failed[:5])}); "
                    "the naive forecast stands in for them")
    return out


def results_table(metrics: dict[str, Any], opts, forecasts: Optional[int]) -> str:
    """The model and its baselines, one line each (the run's log, ``seqkit evaluate``)."""
    keys = ("rmse", "mae", "smape", "mase")
    lines = [f"test: {forecasts:,} forecasts" + (f" of {opts.horizon} step(s)" if opts else "")] if forecasts else []
    lines.append(f"  {'':<16}" + "".join(f"{k:>10}" for k in keys))
    for label, prefix in (("model", ""), ("naive", "naive_"), ("seasonal naive", "seasonal_naive_"),
                          ("ARIMA", "arima_")):
        if f"{prefix}rmse" in metrics:
            lines.append(f"  {label:<16}" + "".join(f"{metrics[prefix + k]:>10.4g}" for k in keys))
    if "arima_model" in metrics:
        lines.append(f"  ARIMA: {metrics['arima_model']}")
    return "\n".join(lines)
