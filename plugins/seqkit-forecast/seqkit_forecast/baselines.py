"""Forecast scores and the baselines fitted in the same run on the same forecast origins.

Scores follow the M4 competition's guide: sMAPE = mean of 200 |y - f| / (|y| + |f|); MASE = each
series' mean absolute error divided by its in-sample seasonal-naive error (the mean of
``|y_i - y_(i-m)|`` over everything before the test part), averaged over the series. RMSE and MAE
pool every forecast value, in the data's own units.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import numpy as np


def mase_scale(values: np.ndarray, end: int, period: int) -> float:
    """The in-sample seasonal naive mean absolute error of ``values[:end]`` (``m = period``)."""
    y = values[:end]
    m = period if len(y) > period else 1
    diffs = np.abs(y[m:] - y[:-m])
    return float(diffs.mean()) if len(diffs) else math.nan


def scores(predicted: np.ndarray, target: np.ndarray, series: np.ndarray, scale: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, sMAPE and MASE of forecasts ``(N, H)`` of rows belonging to ``series`` (N,)
    whose MASE scale is ``scale`` (N,)."""
    err = predicted - target
    denom = np.abs(predicted) + np.abs(target)
    smape = np.where(denom > 0, 200.0 * np.abs(err) / np.where(denom > 0, denom, 1.0), 0.0)
    out = {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err))),
           "smape": float(np.mean(smape))}
    mase = []
    for s in np.unique(series):
        rows = series == s
        if scale[rows][0] > 0 and math.isfinite(scale[rows][0]):
            mase.append(float(np.mean(np.abs(err[rows]))) / float(scale[rows][0]))
    out["mase"] = float(np.mean(mase)) if mase else math.nan
    return out


def naive(values: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    """The last value before each origin, repeated."""
    return np.repeat(values[origins - 1][:, None], horizon, axis=1)


def seasonal_naive(values: np.ndarray, origins: np.ndarray, horizon: int, period: int) -> np.ndarray:
    """The value one season before each target (from data before the origin)."""
    steps = np.arange(horizon) % period
    return values[origins[:, None] - period + steps[None, :]]


def _seasonal_indices(y: np.ndarray, period: int) -> tuple[np.ndarray, bool]:
    """Classical decomposition's seasonal indices of ``y`` (position 0 = ``y[0]``'s season):
    multiplicative for positive data, additive otherwise."""
    from statsmodels.tsa.seasonal import seasonal_decompose

    multiplicative = bool(np.all(y > 0))
    parts = seasonal_decompose(y, period=period, model="multiplicative" if multiplicative else "additive")
    return np.asarray(parts.seasonal[:period], dtype=np.float64), multiplicative


def arima(values: np.ndarray, fit_end: int, origins: np.ndarray, horizon: int, period: int, *,
          seasonal: str = "adjust", max_history: int = 0) -> tuple[np.ndarray, str]:
    """Forecasts from ARIMA with orders chosen by ``pmdarima.auto_arima`` (stepwise, AIC) on
    ``values[:fit_end]`` (its last ``max_history`` values when set); the fitted parameters are then
    applied to the whole series and every origin forecasts from the data before it.

    ``seasonal``: ``adjust`` divides out (or subtracts, for data that is not positive) classical
    decomposition's seasonal indices and fits a non-seasonal ARIMA (fast; what the M4 guide does for
    its statistical benchmarks), ``full`` searches seasonal orders too (slow: minutes a series for
    hourly data), ``none`` ignores seasonality. Returns the forecasts and the model's description."""
    import pmdarima as pm

    start = max(0, fit_end - max_history) if max_history else 0
    y = values[start:]
    fit = y[: fit_end - start]
    use_season = period > 1 and seasonal != "none" and len(fit) >= 2 * period
    adjust = use_season and seasonal == "adjust"
    if adjust:
        indices, multiplicative = _seasonal_indices(fit, period)
        season = indices[np.arange(len(y)) % period]
        y = y / season if multiplicative else y - season
        fit = y[: fit_end - start]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = pm.auto_arima(fit, seasonal=use_season and seasonal == "full", m=period if seasonal == "full" else 1,
                              stepwise=True, suppress_warnings=True, error_action="ignore")
        result = model.arima_res_.apply(y)
        rel = origins - start
        if horizon == 1:
            first, last = int(rel.min()), int(rel.max())
            path = np.asarray(result.get_prediction(start=first, end=last).predicted_mean)
            predicted = path[rel - first][:, None]
        else:
            predicted = np.stack([np.asarray(result.get_prediction(start=int(o), end=int(o) + horizon - 1,
                                                                   dynamic=True).predicted_mean) for o in rel])
    if adjust:
        back = season[rel[:, None] + np.arange(horizon)[None, :]]
        predicted = predicted * back if multiplicative else predicted + back
    order = f"ARIMA{tuple(model.order)}"
    if use_season and seasonal == "full":
        order += f"{tuple(model.seasonal_order)}"
    elif adjust:
        order += f" on {'multiplicatively' if multiplicative else 'additively'} seasonally adjusted data (m={period})"
    return predicted, order


def arima_or_none(*args, **kwargs) -> tuple[Optional[np.ndarray], str]:
    """``arima`` that reports a failed fit instead of raising (the run's other results stand)."""
    try:
        return arima(*args, **kwargs)
    except Exception as exc:  # statsmodels and pmdarima raise many kinds (LinAlgError, ValueError, ...)
        return None, f"failed: {type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
