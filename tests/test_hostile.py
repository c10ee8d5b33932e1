"""Hostile input: bad recipes, --set values, data files, run folders, API arguments, plugins and
signals. Every case checks the exit status, one clear line naming what and where, no traceback,
and that nothing trained earlier was lost. (Plugins and signals run in real subprocesses; the
rest goes through click's CliRunner or the Python API in this process, which is the same code.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seqkit
from seqkit import registry
from seqkit.build import run_folder_lock
from seqkit.cli import cli
from seqkit.errors import DataError, RecipeError, SeqkitError
from seqkit.features.audio import as_waveform
from seqkit.recipe import EncoderConfig, Recipe, TrainConfig, component_config
from tests.test_cli import _wait_for

ROOT = Path(__file__).resolve().parents[1]
CONLL = ROOT / "recipes" / "ner" / "conll.yaml"
TINY = ["device=cpu", "train.threads=1", "features.embedding_dim=8", "encoder.hidden_size=8"]
SETS = [a for kv in TINY for a in ("--set", kv)]


def _cli(args, **kw):
    result = CliRunner().invoke(cli, [str(a) for a in args], **kw)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"traceback from {args}: {result.exception!r}") from result.exception
    return result


def _one_error(result, code: int, *needles: str) -> str:
    """The command failed with ``code`` and said so in one line that contains every needle."""
    assert result.exit_code == code, (result.exit_code, result.output)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


# -- recipes: every bounded option refuses a value out of its range ------------------------------


def _bounded_fields(config: type, section: str):
    for f in dataclasses.fields(config):
        bounds = f.metadata.get("bounds")
        if bounds is None:
            continue
        ge, gt, le, lt = bounds
        if ge is not None:
            yield f"{section}.{f.name}", ge - 1 if isinstance(f.default, int) else ge - 0.5
        if gt is not None:
            yield f"{section}.{f.name}", gt
        if le is not None:
            yield f"{section}.{f.name}", le + 1
        if lt is not None:
            yield f"{section}.{f.name}", lt


def _out_of_range_cases():
    cases = list(_bounded_fields(EncoderConfig, "encoder")) + list(_bounded_fields(TrainConfig, "train"))
    for section, kind, name in (("head", "heads", "tagger"), ("features", "features", "tokens"),
                                ("data", "datasets", "conll"), ("task", "tasks", "tagging")):
        entry = getattr(registry, kind).entries()[name].obj
        cases += list(_bounded_fields(component_config(entry), section))
    return cases


OUT_OF_RANGE = _out_of_range_cases()


@pytest.mark.parametrize(("key", "value"), OUT_OF_RANGE, ids=[f"{k}={v}" for k, v in OUT_OF_RANGE])
def test_an_option_out_of_its_range_is_refused_by_validate(key, value):
    line = _one_error(_cli(["recipe", "validate", CONLL, "--set", f"{key}={value}"]), 2, str(CONLL), key)
    assert "must be" in line


def test_the_range_cases_cover_the_options_that_need_them():
    keys = {k for k, _ in OUT_OF_RANGE}
    assert {"train.lr", "train.batch_size", "encoder.dropout", "head.dropout", "encoder.hidden_size",
            "encoder.num_layers", "data.limit"} <= keys
    assert len(OUT_OF_RANGE) >= 40


@pytest.mark.parametrize(("override", "needle"), [
    ("train.lr=abc", "train.lr: expected a number"),
    ("train.lr=.inf", "train.lr: expected a number"),
    ("train.epochs=2.5", "train.epochs: expected an integer"),
    ("train.epochs=true", "train.epochs: expected an integer"),
    ("encoder.cell=3", "encoder.cell: expected a string"),
    ("encoder.cell=lstmm", "unknown cell 'lstmm'"),
    ("encoder.directions=sideways", "encoder.directions: expected one of"),
    ("head.crf=maybe", "head.crf: expected true or false"),
    ("head.name=ctc", "options of head 'ctc'"),
    ("head.name=lm", "options of head 'lm'"),
    ("head.nosuch=1", "head.nosuch: unknown key"),
    ("nosuch.key=1", "nosuch: unknown key"),
    ("train=3", "train: expected a mapping"),
    ("data.train=/no/such/file.conll", "data.train"),
    ("device=tpu", "device: 'tpu' is not a device"),
    ("device=cuda:7", "device: cuda:7 is not available"),
    ("task.name=nosuch", "unknown task 'nosuch'"),
    ("data.dataset=nosuch", "unknown dataset 'nosuch'"),
    ("train.optimizer=lbfgs", "train.optimizer: expected one of"),
    ("encoder.engine=turbo", "encoder.engine: expected one of"),
    ("features.kind=nosuch", "unknown features 'nosuch'"),
])
def test_bad_values_are_one_line(override, needle):
    _one_error(_cli(["recipe", "validate", CONLL, "--set", override]), 2, needle)


@pytest.mark.parametrize("override", ["encoder", "=3", "", "encoder.num_layers.x=3"])
def test_malformed_set_is_one_line(override):
    _one_error(_cli(["recipe", "validate", CONLL, "--set", override]), 2, "--set" if "." not in override else "")


@pytest.mark.parametrize(("text", "value"), [("1e-3", 1e-3), ("3e-4", 3e-4), ("5E-2", 0.05), ("2", 2.0),
                                             ("0.5", 0.5), ("-1e-1", None)])
def test_exponent_numbers_are_numbers(tmp_path, text, value):
    """YAML 1.1 reads 1e-3 (no dot) as a string; a recipe means the number."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(CONLL.read_text(encoding="utf-8").replace("lr: 0.005", f"lr: {text}"), encoding="utf-8")
    (tmp_path / "example").symlink_to(CONLL.parent / "example")
    if value is None:
        _one_error(_cli(["recipe", "validate", recipe]), 2, "train.lr: must be > 0")
        return
    assert Recipe.load(recipe).train.lr == pytest.approx(value)
    assert Recipe.load(CONLL, [f"train.lr={text}"]).train.lr == pytest.approx(value)


RECIPE_FILES = {
    "not-yaml": (b"encoder: [1, 2\n", "invalid YAML"),
    "a-list": (b"- 1\n- 2\n", "a recipe must be a mapping"),
    "a-string": (b"just words\n", "a recipe must be a mapping"),
    "not-utf8": (b"description: caf\xe9\n", "not UTF-8"),
    "binary": (bytes(range(256)), ""),
    "bad-section": (b"encoder: 3\n", "encoder: expected a mapping"),
    "tab-indent": (b"encoder:\n\tcell: lstm\n", "invalid YAML"),
    "old-layout": (b"task: transcription\ndata:\n  dataset: synth-speech\n  synth:\n    train: 10\n", "moved"),
    "no-task": (b"encoder:\n  cell: lstm\n", "task: missing"),
    "duplicate-key": (b"task: tagging\nhead:\n  name: tagger\n  name: crf\n", "key 'name' appears twice"),
    "alias-bomb": (textwrap.dedent("""\
        a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]
        b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
        c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
        d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
        e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
        f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
        g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
        h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
        i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
        """).encode(), "expands to more than"),
    "huge-value": (b"description: [" + b", ".join(b"1" for _ in range(5000)) + b"]\n",
                   "description: expected a string"),
}


@pytest.mark.parametrize("name", sorted(RECIPE_FILES))
def test_bad_recipe_files_are_one_line(tmp_path, name):
    content, needle = RECIPE_FILES[name]
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(content)
    line = _one_error(_cli(["recipe", "validate", path]), 2, str(path), needle)
    assert len(line) < 400  # a huge value is never printed whole


def test_a_recipe_that_is_not_a_file(tmp_path):
    _one_error(_cli(["recipe", "validate", tmp_path / "missing.yaml"]), 2, "recipe file not found")
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    _one_error(_cli(["recipe", "validate", fifo]), 2, "not a regular file")  # and no hang


# -- run folders -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile") / "run"
    result = _cli(["recipe", "run", CONLL, "--out", out, "--no-progress", *SETS, "--set", "train.epochs=2"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def _damage(run: Path, what: str) -> Path:
    vocab, best = run / "vocab" / "vocab.json", run / "checkpoints" / "best.safetensors"
    if what == "zero-byte vocab":
        vocab.write_bytes(b"")
    elif what == "truncated vocab":
        vocab.write_bytes(vocab.read_bytes()[:20])
    elif what == "fifo vocab":
        vocab.unlink()
        os.mkfifo(vocab)
    elif what == "no vocab":
        shutil.rmtree(run / "vocab")
    elif what == "garbage tokens":
        (run / "vocab" / "tokens.json").write_text('{"not": "a tokenizer"}', encoding="utf-8")
    elif what == "truncated checkpoint":
        best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    elif what == "zero-byte checkpoint":
        best.write_bytes(b"")
    elif what == "bit-flipped checkpoint":
        data = bytearray(best.read_bytes())
        data[-100] ^= 0x10
        best.write_bytes(bytes(data))
    elif what == "fifo checkpoint":
        best.unlink()
        os.mkfifo(best)
    elif what == "no recipe":
        (run / "recipe.yaml").unlink()
    elif what == "garbage recipe":
        (run / "recipe.yaml").write_text("encoder: [", encoding="utf-8")
    elif what == "fifo recipe":
        (run / "recipe.yaml").unlink()
        os.mkfifo(run / "recipe.yaml")
    else:
        raise AssertionError(what)
    return run


DAMAGES = ["zero-byte vocab", "truncated vocab", "fifo vocab", "no vocab", "garbage tokens", "truncated checkpoint",
           "zero-byte checkpoint", "bit-flipped checkpoint", "fifo checkpoint", "no recipe", "garbage recipe",
           "fifo recipe"]


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("command", ["tag", "evaluate"])
def test_a_damaged_run_folder_is_one_line(run, damage, command):
    _damage(run, damage)
    args = ["tag", run, "Ada Brook"] if command == "tag" else ["evaluate", run]
    _one_error(_cli(args), 2, str(run))


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_run_folder_is_one_error_from_the_api(run, damage):
    _damage(run, damage)
    with pytest.raises(SeqkitError, match=str(run)):
        seqkit.load(run)


def test_a_bit_flip_is_caught_by_the_checksum(run):
    _damage(run, "bit-flipped checkpoint")
    with pytest.raises(SeqkitError, match="do not match their checksum"):
        seqkit.load(run)


def test_load_refuses_an_unknown_checkpoint_name(run):
    with pytest.raises(SeqkitError, match="checkpoint: expected 'best' or 'last', got 'bogus'"):
        seqkit.load(run, checkpoint="bogus")
    assert seqkit.load(run, checkpoint="last") is not None


@pytest.mark.parametrize("args", [["tag", "{run}", "x", "--batch-size", "0"],
                                  ["evaluate", "{run}", "--batch-size", "0"],
                                  ["tag", "{run}", "x", "--batch-size", "-3"], ["tag", "{run}"],
                                  ["evaluate", "{run}", "--data", "/no/such.conll"], ["tag", "/no/such/run", "x"],
                                  ["generate", "{run}"], ["transcribe", "{run}", "a.wav"]])
def test_bad_command_arguments_are_one_line(run, args):
    result = _cli([a.format(run=run) for a in args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.stderr.strip()


def test_a_second_run_into_a_locked_folder_refuses_at_once(run):
    with run_folder_lock(run):
        started = time.perf_counter()
        line = _one_error(_cli(["recipe", "run", CONLL, "--out", run, "--resume", *SETS]), 2, "in use by another")
        assert f"pid {os.getpid()}" in line and time.perf_counter() - started < 60
    before = (run / "metrics.jsonl").read_bytes()
    assert before and (run / "checkpoints" / "best.safetensors").exists()


def test_a_fresh_run_refuses_a_folder_with_a_trained_model(run):
    best = (run / "checkpoints" / "best.safetensors").read_bytes()
    _one_error(_cli(["recipe", "run", CONLL, "--out", run, *SETS]), 2, "already holds a run")
    assert (run / "checkpoints" / "best.safetensors").read_bytes() == best


def test_resume_without_last_keeps_best(run):
    best = (run / "checkpoints" / "best.safetensors").read_bytes()
    history = (run / "metrics.jsonl").read_bytes()
    (run / "checkpoints" / "last.safetensors").unlink()
    _one_error(_cli(["recipe", "run", CONLL, "--out", run, "--resume", *SETS]), 2, "no checkpoints/last.safetensors",
               "kept")
    assert (run / "checkpoints" / "best.safetensors").read_bytes() == best
    assert (run / "metrics.jsonl").read_bytes() == history


def test_a_run_that_never_saved_starts_clean_not_with_its_stale_vocab(tmp_path):
    """A failed run leaves recipe.yaml and vocab/; the next run must not reuse that vocabulary."""
    out = tmp_path / "run"
    (out / "vocab").mkdir(parents=True, exist_ok=True)
    (out / "vocab" / "vocab.json").write_text("{}", encoding="utf-8")  # stale, as a crashed run leaves it
    (out / "recipe.yaml").write_text("task: tagging\n", encoding="utf-8")
    done = _cli(["recipe", "run", CONLL, "--out", out, "--no-progress", *SETS, "--set", "train.max_steps=3"])
    assert done.exit_code == 0, done.output
    assert "never saved a checkpoint; starting it afresh" in done.stderr
    assert json.loads((out / "vocab" / "vocab.json").read_text(encoding="utf-8"))


def test_a_fresh_run_refuses_a_folder_of_other_files(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious", encoding="utf-8")
    _one_error(_cli(["recipe", "run", CONLL, "--out", tmp_path, *SETS]), 2, "not a seqkit run folder")
    assert (tmp_path / "thesis.tex").read_text(encoding="utf-8") == "precious"


def test_resume_continues_with_the_runs_own_recipe(tmp_path):
    """--set at the start is not lost at --resume; only how long to train may change."""
    out = tmp_path / "run"
    first = _cli(["recipe", "run", CONLL, "--out", out, "--no-progress", *SETS, "--set", "train.epochs=3",
                  "--set", "train.max_steps=4"])
    assert first.exit_code == 0, first.output
    resumed = _cli(["recipe", "run", CONLL, "--out", out, "--no-progress", "--resume", *SETS,
                    "--set", "train.max_steps=0"])
    assert resumed.exit_code == 0, resumed.output
    assert "train.epochs: the run in" in resumed.stderr and "uses 3" in resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["epochs"] == 3
    assert Recipe.load(out / "recipe.yaml", saved=True).train.epochs == 3
    _one_error(_cli(["recipe", "run", CONLL, "--out", out, "--resume", *SETS, "--set", "encoder.hidden_size=16"]),
               2, "encoder.hidden_size")
    _one_error(_cli(["recipe", "run", CONLL, "--out", out, "--resume", *SETS, "--set", "train.lr=0.1"]), 2,
               "train.lr")


def test_vocabulary_saves_are_atomic(tmp_path, monkeypatch):
    """A save that fails half way (a full disk) leaves no vocabulary a later run would trust."""
    from seqkit.tasks import persist_vocab

    def save(vocab, folder):
        (folder / "vocab.json").write_text("{}", encoding="utf-8")
        raise OSError(28, "No space left on device")

    with pytest.raises(SeqkitError, match="could not save the vocabulary .No space left on device"):
        persist_vocab(tmp_path, "vocab.json", lambda: {"a": 1}, lambda f: None, save)
    assert not (tmp_path / "vocab" / "vocab.json").exists()
    assert not any(p.name.startswith(".vocab") for p in tmp_path.iterdir())


# -- data files ------------------------------------------------------------------------------


def test_cr_only_line_endings_are_lines(tmp_path):
    from seqkit.data.conll import read_conll

    path = tmp_path / "mac.conll"
    path.write_bytes(b"Ada B-PER\rBrook I-PER\r\rParis B-LOC\r")
    corpus = read_conll(path)
    assert [words for words, _ in corpus.sentences] == [["Ada", "Brook"], ["Paris"]]


@pytest.mark.parametrize(("content", "needle"), [
    (b"Ada B-PER\nBrook\n", ":2: expected at least 2 columns"),
    (b"Ada B-PER\n\xff\xfe I-PER\n", ":2: not valid UTF-8"),
    (b"Ada Q-PER\n", ":1: bad tag 'Q-PER'"),
])
def test_bad_conll_files_are_file_and_line(tmp_path, content, needle):
    data = tmp_path / "bad.conll"
    data.write_bytes(content)
    _one_error(_cli(["recipe", "run", CONLL, "--out", tmp_path / "o", *SETS, "--set", f"data.train={data}",
                     "--no-progress"]), 2, f"{data}{needle}")


def test_a_fifo_as_data_is_refused_not_read_forever(tmp_path):
    fifo = tmp_path / "train.conll"
    os.mkfifo(fifo)
    _one_error(_cli(["recipe", "run", CONLL, "--out", tmp_path / "o", *SETS, "--set", f"data.train={fifo}",
                     "--no-progress"]), 2, "not a regular file")


def test_a_non_utf8_manifest_is_file_and_line(tmp_path):
    from seqkit.data.speech import read_manifest

    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"audio": "a.wav", "text": "hi"}\n{"audio": "b.wav", "text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"m\.jsonl:2: not valid UTF-8"):
        read_manifest(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_fuzzed_conll_files_parse_or_fail_cleanly(tmp_path, content):
    from seqkit.data.conll import read_conll

    path = tmp_path / "fuzz.conll"
    path.write_bytes(content)
    try:
        read_conll(path)
    except DataError as exc:
        assert str(exc).startswith(str(path))


_yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                          st.text(max_size=12))
_yaml_values = st.recursive(_yaml_scalars, lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
_SECTION_KEYS = {"encoder": [f.name for f in dataclasses.fields(EncoderConfig)],
                 "train": [f.name for f in dataclasses.fields(TrainConfig)],
                 "head": ["name", "crf", "dropout", "scheme"], "data": ["dataset", "train", "limit", "tokenize"],
                 "features": ["kind", "embedding_dim", "dropout"], "task": ["name"]}


@st.composite
def _recipes(draw):
    raw: dict = {"task": "tagging"}
    for section in draw(st.lists(st.sampled_from(sorted(_SECTION_KEYS)), max_size=4, unique=True)):
        keys = draw(st.lists(st.sampled_from(_SECTION_KEYS[section]), max_size=3, unique=True))
        raw[section] = {key: draw(_yaml_values) for key in keys}
    if draw(st.booleans()):
        raw[draw(st.text(max_size=6))] = draw(_yaml_values)
    return raw


@settings(max_examples=300, deadline=None)
@given(_recipes())
def test_fuzzed_recipes_load_or_fail_with_a_recipe_error(raw):
    try:
        Recipe.from_dict(raw, source="fuzz.yaml")
    except RecipeError as exc:
        assert str(exc).startswith("fuzz.yaml") and len(str(exc)) < 600


# -- API arguments ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tagger(trained):
    return seqkit.load(trained)


def test_tag_takes_one_string_as_one_text(tagger):
    one = tagger.tag("Ada Brook moved to Paris")
    assert isinstance(one, dict) and one["tokens"] == ["Ada", "Brook", "moved", "to", "Paris"]
    assert tagger.tag(t for t in ["Ada", "Paris"])[1]["tokens"] == ["Paris"]  # a generator is fine


@pytest.mark.parametrize(("texts", "needle"), [(None, "got NoneType"), (b"Ada", "decode bytes first"),
                                               ([1, 2], "item 0 is int"), (["Ada", None], "item 1 is NoneType"),
                                               (42, "got int"), ([["Ada", 3]], "item 0 is list")])
def test_tag_refuses_what_is_not_text(tagger, texts, needle):
    with pytest.raises(SeqkitError, match=needle):
        tagger.tag(texts)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, "8"])
def test_tag_refuses_a_bad_batch_size(tagger, batch_size):
    with pytest.raises(SeqkitError, match="batch_size: expected a positive integer"):
        tagger.tag(["Ada"], batch_size=batch_size)


def test_audio_arrays_in_either_layout():
    rng = np.random.default_rng(0)
    stereo = rng.uniform(-0.5, 0.5, size=(16000, 2)).astype(np.float32)
    last = as_waveform(stereo, 16000)
    first = as_waveform(stereo.T.copy(), 16000)  # torchaudio.load's (channels, T)
    assert last.shape == first.shape == (16000,) and torch.equal(last, first)
    assert as_waveform(torch.from_numpy(stereo.T.copy()), 16000).shape == (16000,)


@pytest.mark.parametrize(("audio", "needle"), [
    (np.zeros(100, dtype=np.complex64), "real-valued"), (np.zeros(100, dtype=bool), "real-valued"),
    (np.array(["a", "b"], dtype=object), "real-valued"), (None, "got NoneType"),
    (np.zeros((100, 100), dtype=np.float32), "cannot tell channels from samples"),
    (np.zeros((3, 3), dtype=np.float32), "cannot tell channels"), (np.zeros((2, 3, 4), dtype=np.float32), "got shape"),
    (np.zeros(0, dtype=np.float32), "empty audio"), (np.full(10, np.nan, dtype=np.float32), "NaN"),
    (torch.zeros(10, dtype=torch.complex64), "real-valued"),
])
def test_bad_audio_arrays_are_one_error(audio, needle):
    with pytest.raises(DataError, match=needle):
        as_waveform(audio, 16000)


# -- plugins (real distributions, real entry points, real subprocesses) -------------------------


def _dist(root: Path, name: str, source: str) -> None:
    module = name.replace("-", "_")
    (root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    info = root / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[seqkit]\n{module} = {module}\n", encoding="utf-8")


PLUGINS = {
    "raises-cells": """
        import seqkit
        @seqkit.hookimpl
        def register_cells(register):
            raise RuntimeError("cell table exploded")
        """,
    "clash-lstm": """
        import seqkit
        from seqkit.cells import GRUCell
        @seqkit.hookimpl
        def register_cells(register):
            register("lstm", GRUCell)
            register("gru3", GRUCell)
        """,
    "raises-commands": """
        import seqkit
        @seqkit.hookimpl
        def register_commands(cli):
            raise ValueError("no commands today")
        """,
    "clash-tag": """
        import click
        import seqkit
        @seqkit.hookimpl
        def register_commands(cli):
            @cli.command("tag")
            def tag():
                click.echo("hijacked")
        """,
    "bad-name": """
        import seqkit
        @seqkit.hookimpl
        def register_heads(register):
            register(None, object)
        """,
    "import-error": """
        raise ImportError("needs a library that is not installed")
        """,
}


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    for name, source in PLUGINS.items():
        _dist(root, f"seqkit-{name}", source)
    return root


def _seqkit(site: Path, *args: str, code: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SEQKIT_LOAD_PLUGINS": "1", "PYTHONPATH": str(site)}
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "seqkit", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)


def test_broken_plugins_are_named_and_the_rest_works(plugin_site):
    proc = _seqkit(plugin_site, "plugins")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    out = proc.stdout
    assert "seqkit_raises_cells" in out and "is disabled: its register_cells raised RuntimeError: cell table" in out
    assert "seqkit_clash_lstm" in out and "registers cell 'lstm', which plugin seqkit.default_plugins.cells" in out
    assert "seqkit_raises_commands" in out and "register_commands raised ValueError" in out
    assert "adds command 'tag', which seqkit already has" in out
    assert "seqkit_bad_name" in out and "head names are non-empty strings" in out
    assert "seqkit_import_error" in out and "failed to load" in out
    assert "gru3" in out  # the clashing plugin's other cell still works
    assert "6 plugin(s) with problems" in proc.stderr


def test_broken_plugins_do_not_break_the_cli_or_the_api(plugin_site):
    proc = _seqkit(plugin_site, "--help")
    assert proc.returncode == 0 and "recipe" in proc.stdout and "Traceback" not in proc.stderr
    proc = _seqkit(plugin_site, "recipe", "validate", str(CONLL), "--set", "encoder.cell=gru")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("seqkit_raises_cells") == 1  # reported once
    code = ("import seqkit, torch; enc = seqkit.Encoder(8, 4); "
            "print(type(enc.cells['l0']).__name__, enc(torch.zeros(3, 1, 8))[0].shape)")
    proc = _seqkit(plugin_site, code=code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "LSTMCell"  # the built-in 'lstm', not the clashing plugin's


# -- signals ---------------------------------------------------------------------------------


def test_sigterm_saves_and_exits_143_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    base = [sys.executable, "-m", "seqkit", "recipe", "run", str(CONLL), "--out", str(out), "--no-progress", *SETS]
    env = {**os.environ, "SEQKIT_LOAD_PLUGINS": "0"}
    proc = subprocess.Popen(base + ["--set", "train.epochs=300"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    _wait_for(out / "checkpoints" / "best.safetensors")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "SIGTERM: stopping after this step" in stderr and "--resume" in stderr and "Traceback" not in stderr
    assert (out / "checkpoints" / "last.safetensors").exists()
    done = subprocess.run(base + ["--resume", "--set", "train.epochs=2"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr


_PATCHED_RUN = """
import os, signal, sys
import seqkit.data.conll as conll
import seqkit.train as train
SIG = signal.{sig}

def hit():
    os.kill(os.getpid(), SIG)

if "{phase}" == "data":
    real_load = conll.load_text
    def load_text(path):
        hit()
        return real_load(path)
    conll.load_text = load_text
else:  # the final evaluation on the test split, after training has finished
    real_evaluate = train.Trainer.evaluate
    def evaluate(self, *args, **kwargs):
        hit()
        return real_evaluate(self, *args, **kwargs)
    train.Trainer.evaluate = evaluate
from seqkit.cli import main
sys.argv = ["seqkit", "recipe", "run", {recipe!r}, "--out", {out!r}, "--no-progress", *{sets!r}]
main()
"""


@pytest.mark.parametrize("phase", ["data", "final-eval"])
@pytest.mark.parametrize(("sig", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_outside_the_training_loop_is_a_clean_exit(tmp_path, phase, sig, code):
    """An interrupt while the data is read, or during the final test evaluation, exits 130 (Ctrl-C)
    or 143 (SIGTERM) with one line, no traceback; after training, the checkpoints are kept and
    --resume only has the evaluation left to do."""
    out = tmp_path / "o"
    script = tmp_path / "run.py"
    script.write_text(_PATCHED_RUN.format(sig=sig, phase=phase, recipe=str(CONLL), out=str(out),
                                          sets=[*SETS, "--set", "train.epochs=2"]), encoding="utf-8")
    # started with Ctrl-C at its default, as from a terminal: a test run launched in the background
    # (`cmd &` in a script) would hand the child an ignored SIGINT, which Python then keeps ignoring
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SEQKIT_LOAD_PLUGINS": "0"},
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and "Aborted" not in proc.stderr
    assert ("error: interrupted" if sig == "SIGINT" else "error: terminated") in proc.stderr
    if phase == "final-eval":
        assert (out / "checkpoints" / "last.safetensors").exists() and not (out / "metrics.json").exists()
        done = _cli(["recipe", "run", CONLL, "--out", out, "--no-progress", "--resume", *SETS,
                     "--set", "train.epochs=2"])
        assert done.exit_code == 0 and (out / "metrics.json").exists()


def test_a_read_only_run_folder_serves_models_and_refuses_training_in_one_line(small_disk):
    out = small_disk / "run"
    first = _cli(["recipe", "run", CONLL, "--out", out, "--no-progress", *SETS, "--set", "train.max_steps=3"])
    assert first.exit_code == 0, first.output
    remount = subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True, text=True)
    if remount.returncode != 0:
        pytest.skip(f"cannot remount read-only here ({remount.stderr.strip()})")
    assert _cli(["tag", out, "Ada Brook moved to Paris"]).exit_code == 0
    assert _cli(["evaluate", out]).exit_code == 0
    _one_error(_cli(["recipe", "run", CONLL, "--out", out, "--no-progress", "--resume", *SETS]), 2,
               "Read-only file system")
    _one_error(_cli(["recipe", "run", CONLL, "--out", small_disk / "new", "--no-progress", *SETS]), 2,
               "Read-only file system")


def test_a_scheme_other_than_the_files_converts_every_split(tmp_path):
    """head.scheme: BIOES on BIO files re-encodes train, valid and test span by span (it used to
    'repair' every BIO sentence and then stop at an I- tag of the validation file)."""
    from seqkit.data.conll import read_conll
    from seqkit.metrics.spans import spans
    from seqkit.models.tagging import in_scheme

    result = _cli(["recipe", "run", CONLL, "--out", tmp_path / "r", "--no-progress", *SETS,
                   "--set", "head.scheme=BIOES", "--set", "train.max_steps=2"])
    assert result.exit_code == 0, result.output
    assert "scheme BIOES (converted from the files' BIO)" in result.stderr
    assert "; 0 ill-formed tag sequences repaired" in result.stderr
    valid = read_conll(CONLL.parent / "example" / "valid.conll").sentences
    converted = in_scheme(valid, "BIOES")
    assert any(t.startswith(("E-", "S-")) for _, tags in converted for t in tags)
    assert [spans(t, "BIOES") for _, t in converted] == [spans(t, "BIO") for _, t in valid]


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs of its own (root and CAP_SYS_ADMIN needed; skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here ({proc.stderr.strip() or 'mount failed'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(folder: Path, leave: int = 0) -> Path:
    """Fill the filesystem of ``folder``, then give back ``leave`` bytes."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(small_disk):
    out = small_disk / "run"
    first = _cli(["recipe", "run", CONLL, "--out", out, "--no-progress", *SETS, "--set", "train.max_steps=3"])
    assert first.exit_code == 0, first.output
    last = (out / "checkpoints" / "last.safetensors").read_bytes()
    filler = _fill(small_disk, leave=16384)  # room for recipe.yaml and log lines, not a checkpoint
    more = ["--no-progress", "--resume", *SETS, "--set", "train.max_steps=30"]
    full = _cli(["recipe", "run", CONLL, "--out", out, *more])
    _one_error(full, 2, "No space left on device", "--resume")
    assert (out / "checkpoints" / "last.safetensors").read_bytes() == last  # the old one, whole
    assert not [p for p in (out / "checkpoints").iterdir() if p.suffix == ".tmp"]
    filler.unlink()
    done = _cli(["recipe", "run", CONLL, "--out", out, *more])
    assert done.exit_code == 0, done.output


def test_a_full_disk_before_the_vocabulary_is_saved(small_disk):
    _fill(small_disk)
    out = small_disk / "run"
    result = _cli(["recipe", "run", CONLL, "--out", out, "--no-progress", *SETS])
    line = _one_error(result, 2, str(out))
    assert "No space left on device" in line or "could not" in line
    assert not (out / "vocab" / "vocab.json").exists()


class _WrongWidth(seqkit.Cell):
    """A plugin cell with a bug: its output is one wider than hidden_size."""

    def __init__(self, input_size, hidden_size):
        super().__init__(input_size, hidden_size)
        self.lin = torch.nn.Linear(input_size + hidden_size, hidden_size + 1)

    def forward(self, x, state):
        out = self.lin(torch.cat([x, state[0]], -1))
        return out, (out,)


class _WrongState(_WrongWidth):
    """Another bug: the state it returns is narrower than the one it got."""

    def __init__(self, input_size, hidden_size):
        seqkit.Cell.__init__(self, input_size, hidden_size)
        self.lin = torch.nn.Linear(input_size + hidden_size, hidden_size)

    def forward(self, x, state):
        out = self.lin(torch.cat([x, state[0]], -1))
        return out, (out[..., :-1],)


@pytest.mark.parametrize("cell", [_WrongWidth, _WrongState])
def test_a_plugin_cell_with_wrong_shapes_is_one_error_naming_it(register_plugin, cell):
    class Plugin:
        @seqkit.hookimpl
        def register_cells(self, register):
            register("buggy", cell)

    register_plugin(Plugin(), name="seqkit-buggy")
    enc = seqkit.Encoder(4, 3, cell="buggy", num_layers=2, bidirectional=False, batch_first=True)
    with pytest.raises(SeqkitError, match=r"cell 'buggy' \(plugin seqkit-buggy\) .*layer 0.*check_cell"):
        enc(torch.randn(2, 5, 4), torch.tensor([5, 3]))


@pytest.mark.parametrize(("make", "needle"), [
    (lambda p: None, "file not found"),
    (lambda p: p.mkdir(), "not a regular file"),
    (lambda p: os.mkfifo(p), "not a regular file"),
    (lambda p: p.write_bytes(b"good line\nbad \xff\xfe line\n"), "could not read it as UTF-8"),
])
def test_bad_language_model_text_is_one_error(tmp_path, make, needle):
    from seqkit.data.lm import read_text

    path = tmp_path / "text.txt"
    make(path)
    with pytest.raises(DataError, match=needle) as info:
        read_text(path, tmp_path / "cache")
    assert str(info.value).startswith(str(path))


def test_a_missing_benchmark_file_is_one_line_with_its_source(tmp_path):
    recipe = ROOT / "recipes" / "lm" / "ptb.yaml"
    _one_error(_cli(["recipe", "validate", recipe, "--set", f"data.train={tmp_path / 'ptb.train.txt'}"]), 2,
               "data.train", "ptb.train.txt", "locuslab/TCN")
