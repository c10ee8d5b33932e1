"""seqkit-forecast through the public task API: data providers, scores, baselines, windows, the
model, training, the Python API and the ``forecast`` command.

The plugin is found through its entry point when installed (install.sh, tox -e plugins); otherwise
each test registers it in a fresh plugin manager."""

from __future__ import annotations

import importlib.metadata
import json
import math
from pathlib import Path

import numpy as np
import pytest
import seqkit_forecast
import torch
from click.testing import CliRunner
from seqkit_forecast.baselines import arima, mase_scale, naive, scores, seasonal_naive
from seqkit_forecast.data import CsvConfig, M4Config, PmdarimaConfig, SplitOptions, m4_provider, read_csv, split
from seqkit_forecast.model import ConvFrontEnd, Windows

import seqkit
from seqkit.cli import cli as seqkit_cli
from seqkit.testing import installed_plugin_info, registered_plugin

ROOT = Path(__file__).resolve().parents[3]
M4 = ROOT.parent / "shared" / "data" / "m4"


def cli():
    """A fresh command group: it adds the commands of the plugins registered now."""
    return type(seqkit_cli)(name="seqkit", commands={k: v for k, v in seqkit_cli.commands.items() if k != "forecast"})


@pytest.fixture(autouse=True)
def plugin():
    with registered_plugin(seqkit_forecast, name="forecast"):
        yield


def _wave(n: int, seed: int, phase: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 50 + 10 * np.sin(2 * np.pi * t / 12 + phase) + 0.01 * t + rng.normal(0, 0.3, n)


def _csv(path: Path, n: int = 480, seed: int = 0) -> Path:
    dates = np.datetime64("2020-01-01") + np.arange(n)
    a, b = _wave(n, seed), _wave(n, seed + 1, phase=1.0) * 3
    rows = ["date,a,b,note"] + [f"{d},{x:.4f},{y:.4f},x" for d, x, y in zip(dates, a, b)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def recipe(tmp_path):
    _csv(tmp_path / "waves.csv")
    path = tmp_path / "r.yaml"
    path.write_text("task: {name: forecasting, window: 24, horizon: 4, baselines: [naive, seasonal_naive]}\n"
                    "data: {dataset: csv, path: waves.csv, period: 12, test_fraction: 0.2}\n"
                    "encoder: {hidden_size: 24, num_layers: 1, bidirectional: false}\n"
                    "head: {name: regression, distribution: gaussian}\n"
                    "train: {epochs: 6, batch_size: 32, lr: 0.01, threads: 1, eval_batch_size: 256}\n"
                    "device: cpu\n", encoding="utf-8")
    return path


# -- data --------------------------------------------------------------------------------------


def test_csv_reads_dates_in_order_and_numeric_columns(tmp_path):
    path = _csv(tmp_path / "w.csv", n=100)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")  # newest first, as downloads often are
    data = read_csv(path, CsvConfig(test_fraction=0.2, valid_fraction=0.25))
    assert [s.name for s in data.series] == ["a", "b"] and data.frequency == "D"
    a = data.series[0]
    assert a.dates[0] == "2020-01-01" and a.values[0] == pytest.approx(_wave(100, 0)[0], abs=1e-4)
    assert (a.valid_start, a.test_start, len(a)) == (60, 80, 100)


@pytest.mark.parametrize("content, message", [
    ("date,a\n2020-01-01,1\n2020-01-02,\n", "row 3, column 'a': missing or not a number"),
    ("date,a\n2020-01-01,1\nyesterday,2\n", "column 'date' holds something that is not a date"),
    ("date,a\n2020-01-01,x\n", "no numeric value column"),
])
def test_bad_csv_is_one_error_saying_where(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(seqkit.DataError, match=message):
        read_csv(path, CsvConfig())
    with pytest.raises(seqkit.DataError, match="no column 'c'"):
        read_csv(_csv(tmp_path / "ok.csv", 30), CsvConfig(columns=["c"]))


def test_pmdarima_ships_the_msft_prices():
    data = seqkit_forecast.pmdarima_provider(PmdarimaConfig(name="msft"))
    msft = data.series[0]
    assert msft.name == "msft.Close" and len(msft) == 7983 and msft.dates[0] == "1986-03-13"
    assert msft.test_start == 7983 - 1597 and data.frequency == "B"
    last = msft.values[msft.test_start - 1: -1]
    assert math.sqrt(np.mean((msft.values[msft.test_start:] - last) ** 2)) == pytest.approx(0.580, abs=1e-3)


def test_statsmodels_series_and_their_gaps():
    from seqkit_forecast.data import StatsmodelsConfig

    co2 = seqkit_forecast.statsmodels_provider(StatsmodelsConfig(name="co2"))
    assert "59 missing values filled" in co2.notes[0] and np.isfinite(co2.series[0].values).all()
    assert len(seqkit_forecast.statsmodels_provider(StatsmodelsConfig(name="sunspots")).series[0]) == 309


@pytest.mark.skipif(not (M4 / "Hourly-train.csv").is_file(), reason="the M4 files are not in ../shared/data/m4 "
                    "(public source: Mcompetitions/M4-methods, Dataset/)")
def test_m4_hourly_series_and_the_published_seasonal_naive():
    data = m4_provider(M4Config(folder=str(M4)), base=ROOT)
    assert len(data) == 414 and {len(s) - s.test_start for s in data.series} == {48}
    smape, mase = [], []
    for s in data.series:
        origin = np.array([s.test_start])
        got = scores(seasonal_naive(s.values, origin, 48, 24), s.values[s.test_start:][None], np.zeros(1),
                     np.array([mase_scale(s.values, s.test_start, 24)]))
        smape.append(got["smape"])
        mase.append(got["mase"])
    # the M4 benchmarks' seasonal naive on Hourly: sMAPE 13.912, MASE 1.193
    assert np.mean(smape) == pytest.approx(13.912, abs=1e-3) and np.mean(mase) == pytest.approx(1.193, abs=1e-3)


def test_missing_m4_files_are_one_line_with_the_source(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(f"task: forecasting\ndata: {{dataset: m4, folder: {tmp_path / 'none'}}}\n", encoding="utf-8")
    result = CliRunner().invoke(cli(), ["recipe", "validate", str(path)])
    assert result.exit_code == 2 and "Hourly-train.csv not found" in result.output and "M4-methods" in result.output


# -- scores and baselines ----------------------------------------------------------------------


def test_scores_by_hand():
    pred, target = np.array([[2.0, 4.0], [1.0, 1.0]]), np.array([[1.0, 4.0], [1.0, 3.0]])
    got = scores(pred, target, np.array([0, 1]), np.array([0.5, 2.0]))
    assert got["rmse"] == pytest.approx(math.sqrt(5 / 4)) and got["mae"] == pytest.approx(3 / 4)
    assert got["smape"] == pytest.approx((200 / 3 + 0 + 0 + 100) / 4)
    assert got["mase"] == pytest.approx(((1 / 2) / 0.5 + (2 / 2) / 2.0) / 2)
    assert mase_scale(np.array([1.0, 2, 4, 7, 100]), 4, 1) == pytest.approx(2.0)
    assert mase_scale(np.array([1.0, 2, 4, 7, 100]), 4, 2) == pytest.approx(4.0)  # |4-1|, |7-2|


def test_naive_and_seasonal_naive_use_only_the_past():
    values = np.arange(100.0)
    origins = np.array([30, 50])
    assert naive(values, origins, 3).tolist() == [[29, 29, 29], [49, 49, 49]]
    assert seasonal_naive(values, origins, 5, 4).tolist() == [[26, 27, 28, 29, 26], [46, 47, 48, 49, 46]]


@pytest.mark.parametrize("seasonal", ["adjust", "none"])
def test_arima_one_step_path_equals_the_rolling_forecasts(seasonal):
    """The fast one-step path (one filter pass) and the per-origin dynamic forecasts agree."""
    values = _wave(300, 3)
    origins = np.arange(250, 260)
    one, order = arima(values, 240, origins, 1, 12, seasonal=seasonal)
    many, _ = arima(values, 240, origins, 2, 12, seasonal=seasonal)
    assert one.shape == (10, 1) and many.shape == (10, 2) and order.startswith("ARIMA(")
    assert np.allclose(one[:, 0], many[:, 0], atol=1e-6)
    err = lambda p: np.abs(p[:, 0] - values[origins]).mean()  # noqa: E731
    assert err(one) < err(naive(values, origins, 1))


# -- windows and the model ---------------------------------------------------------------------


def test_windows_respect_the_split():
    s = split("x", np.arange(200.0), SplitOptions(test_fraction=0.2, valid_fraction=0.25))  # 120 / 40 / 40
    scalers = [(0.0, 1.0, 1.0)]
    train, valid, test = (Windows([s], scalers, 30, 5, part, 1) for part in ("train", "valid", "test"))
    assert train.rows[:, 1].min() == 30 and train.rows[:, 1].max() + 5 <= 120
    assert (valid.rows[:, 1].min(), valid.rows[:, 1].max() + 5) == (120, 160)
    assert (test.rows[:, 1].min(), test.rows[:, 1].max() + 5) == (160, 200)
    b = test.batches(8)[0]
    assert b.inputs[0].tolist() == list(range(130, 160)) and b.targets[0].tolist() == list(range(160, 165))
    assert len(Windows([s], scalers, 30, 5, "test", 5)) == 8
    order1 = [x.targets[0, 0].item() for x in train.batches(16, seed=3)]
    assert order1 == [x.targets[0, 0].item() for x in train.batches(16, seed=3)]
    assert order1 != [x.targets[0, 0].item() for x in train.batches(16, seed=4)]


@pytest.mark.parametrize("inputs, baseline", [("relative", "naive"), ("seasonal", "seasonal_naive")])
def test_an_untrained_model_is_its_baseline(recipe, tmp_path, inputs, baseline):
    """The head starts at zero and adds the last value (relative) or the value a season before
    (seasonal) back: every scaling and unscaling step has to be right for the scores to equal the
    baseline's."""
    metrics = seqkit.run_recipe(seqkit.Recipe.load(recipe, ["train.max_steps=1", "train.lr=1e-9",
                                                            f"task.inputs={inputs}"]),
                                tmp_path / "run", progress=False, log=lambda m: None)
    for key in ("rmse", "mae", "smape", "mase"):
        assert metrics[key] == pytest.approx(metrics[f"{baseline}_{key}"], rel=1e-5)


def test_cnn_front_end_reads_subsequences():
    front = ConvFrontEnd(1, 6, 5, 3)
    x = torch.randn(4, 24, 1)
    out = front(x)
    assert out.shape == (4, 4, 5)
    x2 = x.clone()
    x2[:, 18:] += 10.0  # only the last subsequence changes
    assert torch.equal(front(x2)[:, :3], out[:, :3]) and not torch.equal(front(x2)[:, 3], out[:, 3])


def test_options_are_checked(recipe):
    runner = CliRunner()
    result = runner.invoke(cli(), ["recipe", "validate", str(recipe), "--set", "task.baselines=[naive,prophet]"])
    assert result.exit_code == 2 and "unknown baseline 'prophet'" in result.output
    result = runner.invoke(cli(), ["recipe", "validate", str(recipe), "--set", "task.frontend=cnn",
                                   "--set", "task.cnn_length=5"])
    assert result.exit_code == 2 and "task.window: 24 is not a multiple of task.cnn_length (5)" in result.output
    result = runner.invoke(cli(), ["recipe", "validate", str(recipe), "--set", "task.baselines=naive"])
    assert result.exit_code == 2 and "task.baselines: expected a list of a string" in result.output
    result = runner.invoke(cli(), ["recipe", "validate", str(recipe), "--set", "data.name=msft"])
    assert result.exit_code == 2 and "data.name: unknown key" in result.output


# -- training, the API and the commands --------------------------------------------------------


def test_trains_beats_naive_forecasts_and_plots(recipe, tmp_path):
    run = tmp_path / "run"
    metrics = seqkit.run_recipe(seqkit.Recipe.load(recipe), run, progress=False, log=lambda m: None)
    assert metrics["rmse"] < 0.7 * metrics["naive_rmse"] and metrics["mase"] < metrics["naive_mase"]
    assert 50 <= metrics["coverage95"] <= 100
    model = seqkit.load(run)
    out = model.forecast("b", horizon=10)
    assert len(out["forecast"]) == 10 and out["future_dates"][0] == "2021-04-25"
    assert all(lo < f < hi for lo, f, hi in zip(out["lower"], out["forecast"], out["upper"]))
    assert model.forecast(1, horizon=10) == out
    same = model.forecast(0, history=_wave(480, 0)[-30:], horizon=4)
    assert len(same["forecast"]) == 4 and same["future_dates"] is None
    with pytest.raises(seqkit.DataError, match="history: 10 values; the model reads windows of 24"):
        model.forecast(history=[1.0] * 10)
    with pytest.raises(seqkit.SeqkitError, match="no series 'zz'"):
        model.forecast("zz")

    png = tmp_path / "f.png"
    result = CliRunner().invoke(cli(), ["forecast", str(run), "--series", "a", "--horizon", "6", "--png", str(png)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].split() == ["step", "forecast", "lower", "95%", "upper", "95%"] and len(lines) >= 8
    assert lines[2].startswith("2021-04-25")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    result = CliRunner().invoke(cli(), ["forecast", str(run), "--json", "--series", "1"])
    assert json.loads(result.output.splitlines()[0])["series"] == "b"

    result = CliRunner().invoke(cli(), ["evaluate", str(run), "--json"])
    assert json.loads(result.output)["rmse"] == pytest.approx(metrics["rmse"])
    other = _csv(tmp_path / "other.csv", n=300, seed=7)
    result = CliRunner().invoke(cli(), ["evaluate", str(run), "--data", str(other)])
    assert result.exit_code == 0, result.output
    assert "naive" in result.output and "seasonal naive" in result.output


def test_found_through_its_entry_point_when_installed():
    try:
        infos = installed_plugin_info("seqkit-forecast")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("seqkit-forecast is not installed (install.sh or tox -e plugins installs it)")
    assert [(i["name"], i["tasks"]) for i in infos] == [("forecast", ["forecasting"])]
    assert infos[0]["datasets"] == ["csv", "pmdarima", "statsmodels", "m4"] and infos[0]["heads"] == ["regression"]


@pytest.mark.parametrize("overrides", [
    ["task.frontend=cnn", "task.cnn_length=6"],
    ["head.distribution=gaussian", "encoder.directions=bidirectional", "task.inputs=seasonal"],
])
def test_exported_forecaster_forecasts_as_the_model(recipe, tmp_path, overrides):
    """seqkit export through the public export API, with this plugin's own numpy post-processing."""
    pytest.importorskip("onnxruntime", reason="export needs onnx, onnxscript, onnxruntime: pip install seqkit[export]")
    import importlib.util

    from seqkit.export import export_run

    run = tmp_path / "run"
    seqkit.run_recipe(seqkit.Recipe.load(recipe, ["train.max_steps=5", *overrides]), run, progress=False,
                      log=lambda m: None)
    manifest = export_run(run, "onnx", tmp_path / "out", log=lambda m: None)
    assert manifest["max_difference"] <= 1e-4
    spec = importlib.util.spec_from_file_location("runtime_forecast", tmp_path / "out" / "runtime.py")
    runtime = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runtime)
    got, want = runtime.load(tmp_path / "out").forecast(horizon=7), seqkit.load(run).forecast(horizon=7)
    for key in ("forecast", "lower", "upper"):
        assert got.get(key) == pytest.approx(want.get(key), rel=1e-4, abs=1e-4)
