"""``seqkit forecast``: the next values of a series with the history before them, as text, JSON
or a plot (history, forecast and, for Gaussian heads, the 95% interval)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

import seqkit
from seqkit.tasks import not_a


@click.command("forecast")
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.option("--series", help="Which series of the run (name or index; default: the first).")
@click.option("--horizon", type=click.IntRange(min=1), help="Values to forecast (default: the model's horizon; "
              "beyond it forecasts are fed back as inputs).")
@click.option("--history", "history_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Forecast after these values instead (a text file, one number a line).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of a table.")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), help="Plot history and forecast.")
def forecast_cmd(run: Path, series: Optional[str], horizon: Optional[int], history_file: Optional[Path],
                 as_json: bool, png: Optional[Path]) -> None:
    """Forecast the values after the end of a series of the model in RUN."""
    model = seqkit.load(run)
    if not hasattr(model, "forecast"):
        raise not_a(model, "forecast", run)
    history = None
    if history_file is not None:
        history = []
        for number, line in enumerate(history_file.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    history.append(float(line))
                except ValueError:
                    raise seqkit.DataError(f"{history_file}: line {number}: not a number: "
                                           f"{line.strip()[:40]!r}") from None
    key = int(series) if series is not None and series.isdigit() else series
    result = model.forecast(key, horizon=horizon, history=history)
    if as_json:
        click.echo(json.dumps(result))
    else:
        when = result["future_dates"] or [f"+{k + 1}" for k in range(len(result["forecast"]))]
        head = f"{'step':<12}{'forecast':>14}" + (f"{'lower 95%':>14}{'upper 95%':>14}" if "lower" in result else "")
        click.echo(f"# {result['series']}: {len(result['history'])} past values, last {result['history'][-1]:.6g}")
        click.echo(head)
        for k, value in enumerate(result["forecast"]):
            line = f"{when[k]:<12}{value:>14.6g}"
            if "lower" in result:
                line += f"{result['lower'][k]:>14.6g}{result['upper'][k]:>14.6g}"
            click.echo(line)
    if png is not None:
        draw_forecast(result, png, model.window)
        click.echo(f"plot: {png}", err=True)


def draw_forecast(result: dict, path: Path, window: int) -> None:
    """The recent history (a few windows, at least four times the forecast), the forecast and its
    95% band, a dashed line where the data ends; dates on the axis when the data has them."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib import pyplot as plt

    steps = len(result["forecast"])
    shown = min(len(result["history"]), max(2 * window, 4 * steps, 60))
    past = np.asarray(result["history"][-shown:])
    if result["dates"] and result["future_dates"]:
        import pandas as pd

        x_past = pd.DatetimeIndex(result["dates"][-shown:])
        x_next = pd.DatetimeIndex(result["future_dates"])
    else:
        x_past, x_next = np.arange(-shown + 1, 1), np.arange(1, steps + 1)
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(x_past, past, color="#333333", linewidth=1.2, label="history")
    joined_x = [x_past[-1], *x_next]
    ax.plot(joined_x, [past[-1], *result["forecast"]], color="#1f77b4", linewidth=1.8, label="forecast")
    if "lower" in result:
        ax.fill_between(joined_x, [past[-1], *result["lower"]], [past[-1], *result["upper"]], color="#1f77b4",
                        alpha=0.2, linewidth=0, label="95% interval")
    ax.axvline(x_past[-1], color="#999999", linestyle="--", linewidth=1)
    ax.set_title(f"{result['series']}: {steps}-step forecast")
    ax.set_xlabel("date" if result["future_dates"] else "step (0 = last known value)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
