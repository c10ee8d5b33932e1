"""seqkit-forecast: time-series forecasting on seqkit's shared encoder, added as a plugin through
the public task API only (``seqkit.tasks``): the ``forecasting`` task, the ``regression`` head
(point or Gaussian forecasts), the ``csv``, ``pmdarima``, ``statsmodels`` and ``m4`` datasets, and
the ``forecast`` command."""

from __future__ import annotations

import seqkit

from .data import TASK, csv_provider, m4_provider, pmdarima_provider, statsmodels_provider
from .model import ForecastTask, RegressionHead

__version__ = "0.1.0"


@seqkit.hookimpl
def register_tasks(register):
    register(TASK, ForecastTask)


@seqkit.hookimpl
def register_heads(register):
    register("regression", RegressionHead)


@seqkit.hookimpl
def register_datasets(register):
    register("csv", csv_provider)
    register("pmdarima", pmdarima_provider)
    register("statsmodels", statsmodels_provider)
    register("m4", m4_provider)


@seqkit.hookimpl
def register_commands(cli):
    from .cli import forecast_cmd

    cli.add_command(forecast_cmd)
