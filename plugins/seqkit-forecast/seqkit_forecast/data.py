"""Dataset providers of the forecasting task. Each returns a :class:`SeriesSet`: one or more
univariate series, each split chronologically into a training part, a validation part and a test
part (the last ``test_fraction`` of every series, or the M4 test file's values).

- ``csv``: a date column and value columns of a CSV file (each value column is one series);
- ``pmdarima``: the series that ship inside the pmdarima wheel (``msft``: daily Microsoft closing
  prices 1986-2017, the classic stock-price example; ``airpassengers``, ``wineind``, ...);
- ``statsmodels``: statsmodels' bundled series (``sunspots``, ``co2``, ``nile``, ``macrodata``);
- ``m4``: the M4 competition's series (Hourly by default) from ``../shared/data/m4/``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

import seqkit
from seqkit.tasks import resolve_path

TASK = "forecasting"
M4_HINT = ("the M4 competition data, which seqkit does not ship: get Hourly-train.csv and Hourly-test.csv "
           "from Mcompetitions/M4-methods (Dataset/Train, Dataset/Test)")


@dataclass
class Series:
    """One series. Targets at indices ``[0, valid_start)`` train, ``[valid_start, test_start)``
    validate and ``[test_start, len)`` test; inputs may reach back into earlier parts."""

    name: str
    values: np.ndarray  # float64, (T,)
    valid_start: int
    test_start: int
    dates: Optional[list[str]] = None  # ISO dates, one a value, when the data has them
    period: int = 1  # seasonality (seasonal naive, MASE's scale)

    def __len__(self) -> int:
        return len(self.values)


@dataclass
class SeriesSet:
    series: list[Series]
    source: str
    frequency: Optional[str] = None  # a pandas frequency ("D", "B", "h", "MS"), to date the future
    notes: list[str] = field(default_factory=list)  # said once in the run's log

    def __len__(self) -> int:
        return len(self.series)


# -- splitting ---------------------------------------------------------------------------------


@dataclass
class SplitOptions:
    test_fraction: float = seqkit.bounded(0.2, ge=0, lt=1)  # the last part of each series (0: no test)
    valid_fraction: float = seqkit.bounded(0.1, ge=0, lt=1)  # of what is left, its last part
    period: int = seqkit.bounded(0, ge=0)  # seasonality; 0: the data set's own (1 when it has none)


def split(name: str, values, config: SplitOptions, *, dates=None, period: int = 1) -> Series:
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise seqkit.DataError(f"series {name!r}: value {bad + 1} is missing or not a number "
                               "(fill or drop gaps before forecasting)")
    test_start = len(values) - int(round(len(values) * config.test_fraction))
    valid_start = test_start - int(round(test_start * config.valid_fraction))
    return Series(name, values, valid_start, test_start, dates, config.period or period)


def _dates(index) -> Optional[list[str]]:
    import pandas as pd

    try:
        return [str(d.date()) if d == d.normalize() else d.isoformat() for d in pd.DatetimeIndex(index)]
    except (TypeError, ValueError):
        return None


def _frequency(dates: Optional[list[str]]) -> Optional[str]:
    import pandas as pd

    if not dates or len(dates) < 3:
        return None
    index = pd.DatetimeIndex(dates)
    with warnings.catch_warnings():  # pandas 3 warns that a later version returns an offset object
        warnings.simplefilter("ignore")
        freq = pd.infer_freq(index[-min(len(index), 60):])
    freq = getattr(freq, "freqstr", freq)
    if freq is None and (index.dayofweek[-60:] < 5).all():
        return "B"  # trading days: weekdays with holidays missing
    return freq


# -- csv ---------------------------------------------------------------------------------------


@dataclass
class CsvConfig(SplitOptions):
    path: Optional[str] = None  # the CSV file (relative paths: from the recipe's folder)
    date_column: Optional[str] = None  # none: a column named date/Date/time/timestamp when there is one
    columns: list[str] = field(default_factory=list)  # value columns, one series each; empty: every numeric one


def read_csv(path: Path, config: CsvConfig) -> SeriesSet:
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise seqkit.DataError(f"{path}: could not read it as CSV ({' '.join(str(exc).split())[:160]})") from None
    date_column = config.date_column
    if date_column is None:
        date_column = next((c for c in frame.columns if str(c).lower() in ("date", "time", "timestamp", "ds")), None)
    elif date_column not in frame.columns:
        raise seqkit.DataError(f"{path}: no column {date_column!r} (it has {', '.join(map(str, frame.columns))}); "
                               "set data.date_column")
    dates = None
    if date_column is not None:
        try:
            when = pd.to_datetime(frame[date_column])
        except (ValueError, TypeError) as exc:
            raise seqkit.DataError(f"{path}: column {date_column!r} holds something that is not a date "
                                   f"({' '.join(str(exc).split())[:120]})") from None
        order = np.argsort(when.values, kind="stable")
        frame, when = frame.iloc[order].reset_index(drop=True), when.iloc[order]
        dates = _dates(when)
    columns = list(config.columns) or [c for c in frame.columns if c != date_column
                                       and pd.api.types.is_numeric_dtype(frame[c])]
    if not columns:
        raise seqkit.DataError(f"{path}: no numeric value column; name them with data.columns")
    series = []
    for column in columns:
        if column not in frame.columns:
            raise seqkit.DataError(f"{path}: no column {column!r} (it has {', '.join(map(str, frame.columns))})")
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            row = int(np.flatnonzero(~np.isfinite(values))[0]) + 2
            raise seqkit.DataError(f"{path}: row {row}, column {column!r}: missing or not a number "
                                   "(fill or drop gaps before forecasting)")
        series.append(split(str(column), values, config, dates=dates))
    return SeriesSet(series, str(path), _frequency(dates))


def csv_provider(config: CsvConfig, *, base: Path) -> SeriesSet:
    return read_csv(check_csv(config, base=base), config)


def check_csv(config: CsvConfig, *, base: Path) -> Path:
    if config.path is None:
        raise seqkit.RecipeError("data.path: the csv dataset needs a file (data.path: prices.csv)")
    return resolve_path(config.path, base, "data.path")


# -- pmdarima and statsmodels bundled series ---------------------------------------------------

# name -> (loader, value column or None, date column or None, period, pandas frequency)
PMDARIMA = {
    "msft": ("load_msft", "Close", "Date", 1, "B"),
    "airpassengers": ("load_airpassengers", None, None, 12, None),
    "wineind": ("load_wineind", None, None, 12, None),
    "ausbeer": ("load_ausbeer", None, None, 4, None),
    "austres": ("load_austres", None, None, 4, None),
    "woolyrnq": ("load_woolyrnq", None, None, 4, None),
    "gasoline": ("load_gasoline", None, None, 52, None),
    "lynx": ("load_lynx", None, None, 1, None),
    "sunspots": ("load_sunspots", None, None, 12, None),
    "taylor": ("load_taylor", None, None, 48, None),
    "heartrate": ("load_heartrate", None, None, 1, None),
}


@dataclass
class PmdarimaConfig(SplitOptions):
    name: str = "msft"  # one of pmdarima.datasets' series (see the plugin's README)
    column: Optional[str] = None  # for msft: Open, High, Low, Close (default) or Volume


def pmdarima_provider(config: PmdarimaConfig, *, base: Optional[Path] = None) -> SeriesSet:
    import pmdarima.datasets as pd_data

    loader, column, date_column, period, freq = check_pmdarima(config)
    raw = getattr(pd_data, loader)(as_series=True) if date_column is None else getattr(pd_data, loader)()
    if date_column is None:
        values, dates = np.asarray(raw, dtype=np.float64), None
    else:
        column = config.column or column
        if column not in raw.columns:
            raise seqkit.RecipeError(f"data.column: pmdarima's {config.name} has no column {column!r} "
                                     f"(it has {', '.join(c for c in raw.columns if c != date_column)})")
        values, dates = raw[column].to_numpy(dtype=np.float64), _dates(raw[date_column])
    name = config.name if date_column is None else f"{config.name}.{column}"
    return SeriesSet([split(name, values, config, dates=dates, period=period)], f"pmdarima.datasets.{loader}", freq)


def check_pmdarima(config: PmdarimaConfig):
    if config.name not in PMDARIMA:
        raise seqkit.RecipeError(f"data.name: pmdarima has no series {config.name!r}; "
                                 f"choose one of {', '.join(PMDARIMA)}")
    return PMDARIMA[config.name]


# name -> (module, value column, period, pandas frequency)
STATSMODELS = {
    "sunspots": ("sunspots", "SUNACTIVITY", 1, "YS"),
    "co2": ("co2", "co2", 52, "W-SAT"),
    "nile": ("nile", "volume", 1, "YS"),
    "macrodata": ("macrodata", "realgdp", 4, "QS"),
}


@dataclass
class StatsmodelsConfig(SplitOptions):
    name: str = "sunspots"  # sunspots (yearly), co2 (weekly, gaps interpolated), nile, macrodata
    column: Optional[str] = None  # macrodata: realgdp (default), realcons, cpi, unemp, ...


def statsmodels_provider(config: StatsmodelsConfig, *, base: Optional[Path] = None) -> SeriesSet:
    import importlib

    module, column, period, freq = check_statsmodels(config)
    frame = importlib.import_module(f"statsmodels.datasets.{module}").load_pandas().data
    column = config.column or column
    if column not in frame.columns:
        raise seqkit.RecipeError(f"data.column: statsmodels' {config.name} has no column {column!r} "
                                 f"(it has {', '.join(map(str, frame.columns))})")
    values = frame[column].astype(float)
    notes = []
    if values.isna().any():  # co2 has 59 missing weeks
        notes.append(f"statsmodels {config.name}: {int(values.isna().sum())} missing values filled by "
                     "linear interpolation")
        values = values.interpolate(limit_direction="both")
    dates = _dates(frame.index) if config.name == "co2" else None
    return SeriesSet([split(f"{config.name}.{column}", values.to_numpy(), config, dates=dates, period=period)],
                     f"statsmodels.datasets.{module}", freq if dates else None, notes)


def check_statsmodels(config: StatsmodelsConfig):
    if config.name not in STATSMODELS:
        raise seqkit.RecipeError(f"data.name: choose one of {', '.join(STATSMODELS)} (got {config.name!r})")
    return STATSMODELS[config.name]


# -- M4 ----------------------------------------------------------------------------------------

M4_PERIODS = {"Hourly": 24, "Daily": 1, "Weekly": 1, "Monthly": 12, "Quarterly": 4, "Yearly": 1}


@dataclass
class M4Config:
    folder: str = "../../../shared/data/m4"  # holds <Frequency>-train.csv and <Frequency>-test.csv
    frequency: str = "Hourly"
    valid_length: int = seqkit.bounded(48, ge=1)  # the last values of each training part validate
    limit: int = seqkit.bounded(0, ge=0)  # the first N series only (0: all)


def m4_provider(config: M4Config, *, base: Path) -> SeriesSet:
    import pandas as pd

    train_path, test_path = check_m4(config, base=base)
    train, test = pd.read_csv(train_path), pd.read_csv(test_path)
    if config.limit:
        train, test = train.iloc[: config.limit], test.iloc[: config.limit]
    tests = {row.iloc[0]: row.iloc[1:].dropna().to_numpy(dtype=np.float64) for _, row in test.iterrows()}
    series = []
    for _, row in train.iterrows():
        name = row.iloc[0]
        history = row.iloc[1:].dropna().to_numpy(dtype=np.float64)
        if name not in tests:
            raise seqkit.DataError(f"{test_path}: no test values for series {name}")
        values = np.concatenate([history, tests[name]])
        series.append(Series(name, values, len(history) - config.valid_length, len(history),
                             period=M4_PERIODS[config.frequency]))
    return SeriesSet(series, f"{train_path.parent} (M4 {config.frequency})")


def check_m4(config: M4Config, *, base: Path) -> tuple[Path, Path]:
    if config.frequency not in M4_PERIODS:
        raise seqkit.RecipeError(f"data.frequency: one of {', '.join(M4_PERIODS)} (got {config.frequency!r})")
    folder = Path(config.folder).expanduser()
    folder = folder if folder.is_absolute() else base / folder
    files = (folder / f"{config.frequency}-train.csv", folder / f"{config.frequency}-test.csv")
    for path in files:
        if not path.is_file():
            raise seqkit.RecipeError(f"data.folder: {path} not found; this is {M4_HINT}")
    return files


for _provider, _config, _check in ((csv_provider, CsvConfig, check_csv),
                                   (pmdarima_provider, PmdarimaConfig, check_pmdarima),
                                   (statsmodels_provider, StatsmodelsConfig, check_statsmodels),
                                   (m4_provider, M4Config, check_m4)):
    _provider.Config = _config  # type: ignore[attr-defined]
    _provider.task = TASK  # type: ignore[attr-defined]
    _provider.check = _check  # type: ignore[attr-defined]
