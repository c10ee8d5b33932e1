"""The command line: CliRunner for the details, a real subprocess once per command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from seqkit.cli import cli

ROOT = Path(__file__).resolve().parents[1]
CONLL = ROOT / "recipes" / "ner" / "conll.yaml"


def seqkit_proc(*args, **kw):
    env = {**os.environ, "SEQKIT_LOAD_PLUGINS": "0"}
    return subprocess.run([sys.executable, "-m", "seqkit", *args], capture_output=True, text=True,
                          env=env, timeout=300, cwd=ROOT, **kw)


def test_recipe_list_subprocess():
    proc = seqkit_proc("recipe", "list")
    assert proc.returncode == 0, proc.stderr
    assert "recipes/ner/msra.yaml  Chinese NER on MSRA" in proc.stdout
    assert "recipes/ner/conll.yaml" in proc.stdout


def test_recipe_show_applies_overrides():
    proc = seqkit_proc("recipe", "show", "recipes/ner/msra.yaml", "--set", "encoder.num_layers=3")
    assert proc.returncode == 0, proc.stderr
    assert "num_layers: 3" in proc.stdout and "dataset: msra-ner" in proc.stdout


def test_recipe_validate_ok_and_error_subprocess(tmp_path):
    assert seqkit_proc("recipe", "validate", str(CONLL)).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("encoder:\n  cell: lstm\n  hidden: 3\n", encoding="utf-8")
    proc = seqkit_proc("recipe", "validate", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {bad}: encoder.hidden: unknown key; expected one of bidirectional, "
                                   "cell, directions, dropout, engine, hidden_size, init_from, input_dropout, "
                                   "locked_dropout, num_layers, output_dropout, weight_drop")
    proc = seqkit_proc("--debug", "recipe", "validate", str(bad))
    assert "Traceback" in proc.stderr


def test_unknown_cell_and_device_via_set():
    runner = CliRunner()
    result = runner.invoke(cli, ["recipe", "validate", str(CONLL), "--set", "encoder.cell=lstmm"])
    assert result.exit_code == 2 and "encoder.cell: unknown cell 'lstmm'" in result.output
    result = runner.invoke(cli, ["recipe", "validate", str(CONLL), "--set", "device=cuda:3"])
    assert result.exit_code == 2 and "device: cuda:3 is not available" in result.output


def test_run_bad_data_is_one_line(tmp_path):
    data = tmp_path / "bad.conll"
    data.write_text("Ada B-PER\nBrook\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["recipe", "run", str(CONLL), "--out", str(tmp_path / "o"),
                                      "--set", f"data.train={data}", "--no-progress"])
    assert result.exit_code == 2
    assert f"{data}:2: expected at least 2 columns" in result.output
    assert "Traceback" not in result.output


def _wait_for(path: Path, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if path.exists():
            return
        time.sleep(0.2)
    raise AssertionError(f"{path} did not appear")


def test_ctrl_c_saves_and_resume_finishes(tmp_path):
    """A real `recipe run` process gets SIGINT mid-training, saves, exits 130; --resume finishes it."""
    out = tmp_path / "run"
    base = [sys.executable, "-m", "seqkit", "recipe", "run", str(CONLL), "--out", str(out), "--no-progress",
            "--set", "device=cpu", "--set", "train.threads=1"]
    args = base + ["--set", "train.epochs=200"]
    env = {**os.environ, "SEQKIT_LOAD_PLUGINS": "0"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _wait_for(out / "checkpoints" / "best.safetensors")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    assert (out / "checkpoints" / "last.safetensors").exists() and not (out / "metrics.json").exists()
    done = subprocess.run(base + ["--set", "train.epochs=2", "--resume"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["stopped"] in ("completed", "early_stopping")
    assert (out / "metrics.json").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = CliRunner().invoke(cli, ["recipe", "run", str(CONLL), "--out", str(out), "--no-progress",
                                      "--set", "device=cpu", "--set", "train.epochs=6"])
    assert result.exit_code == 0, result.output
    return out


def test_tag_subprocess(trained):
    proc = seqkit_proc("tag", str(trained), "Ada Brook works for Acme Corp in Paris .", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert [(e["type"], e["text"]) for e in result["entities"]] == [
        ("PER", "Ada Brook"), ("ORG", "Acme Corp"), ("LOC", "Paris")]


def test_tag_reads_input_file_and_rejects_non_utf8(trained, tmp_path):
    good = tmp_path / "in.txt"
    good.write_text("Lena Hart moved to Brisk last year .\n\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["tag", str(trained), "--input", str(good)])
    assert result.exit_code == 0 and "PER\t0-9\tLena Hart" in result.output
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"Paris \xff\xfe\n")
    result = CliRunner().invoke(cli, ["tag", str(trained), "--input", str(bad)])
    assert result.exit_code == 2 and "not UTF-8" in result.output


def test_evaluate_subprocess(trained):
    proc = seqkit_proc("evaluate", str(trained))
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[1:]}
    assert set(rows) == {"LOC", "ORG", "PER", "micro"}
    assert float(rows["micro"][3]) >= 90.0


def test_tag_missing_run_is_clear(tmp_path):
    result = CliRunner().invoke(cli, ["tag", str(tmp_path), "Paris"])
    assert result.exit_code == 2 and "not a seqkit run folder" in result.output


def test_plugin_command_is_added(register_plugin):
    from tests.plugins import hello_command

    register_plugin(hello_command, name="hello-command")
    group = type(cli)(name="seqkit-test", commands=dict(cli.commands))  # fresh group: adds plugin commands anew
    result = CliRunner().invoke(group, ["hello", "world"])
    assert result.exit_code == 0 and result.output == "hello world\n"
