"""``seqkit export``: every built-in cell, direction and task to ONNX, TorchScript and pt2, checked
against the eager model on random batches of random lengths; the runtime.py an app uses with
numpy and onnxruntime only gives seqkit's own tags, transcripts and scores."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import seqkit
import seqkit.testing
from seqkit.data.conll import read_conll
from seqkit.encoder import Encoder
from seqkit.errors import SeqkitError
from seqkit.export import ExportEncoder, export_run
from tests.tiny import train_lm

pytest.importorskip("onnxruntime", reason="export tests need onnx, onnxscript, onnxruntime: pip install -e .[export]")

ROOT = Path(__file__).resolve().parents[1]
CONLL = ROOT / "recipes" / "ner" / "conll.yaml"
QUIET = dict(progress=False, log=lambda m: None)


def _runtime(folder: Path):
    """The export's own runtime.py, imported from its folder as an app would."""
    spec = importlib.util.spec_from_file_location(f"runtime_{folder.name}", folder / "runtime.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load(folder)


def _tagger(tmp: Path, name: str, *overrides: str) -> Path:
    recipe = seqkit.Recipe.load(CONLL, ["train.max_steps=12", "train.threads=1", *overrides])
    seqkit.run_recipe(recipe, tmp / name, **QUIET)
    return tmp / name


@pytest.fixture(scope="module")
def tagger_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export-tag")
    return {"lstm-bidirectional": _tagger(tmp, "a"),
            "gru-split": _tagger(tmp, "b", "encoder.cell=gru", "encoder.directions=split", "head.crf=false")}


@pytest.fixture(scope="module")
def lm_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export-lm")
    return {f"{cell}-{directions}": train_lm(tmp, f"{cell}-{directions}", cell=cell, directions=directions)
            for cell, directions in (("lstm", "forward"), ("gru", "forward"), ("lstm", "split"))}


# -- the encoder graph ------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("directions", ["forward", "bidirectional", "split"])
@pytest.mark.parametrize("custom_ops", [False, True])
def test_export_encoder_matches_the_encoder_on_random_lengths(cell, directions, custom_ops):
    torch.manual_seed(0)
    enc = Encoder(5, 7, num_layers=2, cell=cell, directions=directions, batch_first=True).eval()
    graph = ExportEncoder(enc, custom_ops=custom_ops)
    gen = torch.Generator().manual_seed(1)
    for n, length in ((1, 1), (3, 9), (6, 4)):
        x = torch.randn(n, length, 5, generator=gen)
        lengths = torch.randint(1, length + 1, (n,), generator=gen)
        state = None
        if directions == "forward":  # a carried state is a real input too
            state = tuple(torch.randn(2, n, 7, generator=gen) for _ in range(2 if cell == "lstm" else 1))
        with torch.no_grad():
            want, want_final = enc(x, lengths, state)
            got, got_final = graph(x, lengths, state)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        for a, b in zip(got_final, want_final, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_a_cell_without_a_fused_kernel_is_refused_by_name():
    from seqkit_peephole import PeepholeLSTMCell

    enc = Encoder(4, 6, cell=PeepholeLSTMCell, batch_first=True)
    with pytest.raises(SeqkitError, match=r"cell 'PeepholeLSTMCell' cannot be exported: it has no fused kernel"):
        ExportEncoder(enc, custom_ops=True)


def test_a_plugin_cell_run_is_refused_before_anything_is_written(tmp_path):
    import seqkit_peephole

    with seqkit.testing.registered_plugin(seqkit_peephole, name="peephole-plugin"):
        run = _tagger(tmp_path, "peep", "encoder.cell=peephole", "train.max_steps=2")
        with pytest.raises(SeqkitError, match=r"cell 'peephole' \(plugin peephole-plugin\) cannot be exported"):
            export_run(run, "onnx", tmp_path / "out", log=lambda m: None)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out-*"))


# -- tagging ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
@pytest.mark.parametrize("kind", ["lstm-bidirectional", "gru-split"])
def test_exported_tagger_tags_as_seqkit_does(tagger_runs, tmp_path, fmt, kind):
    run = tagger_runs[kind]
    manifest = export_run(run, fmt, tmp_path / "out", log=lambda m: None)
    assert manifest["max_difference"] <= 1e-4 and manifest["seqkit"] == seqkit.__version__
    assert {"dynamic": {"0": "batch", "1": "length"}}.items() <= manifest["inputs"]["ids"].items()
    texts = [" ".join(words) for words, _ in read_conll(CONLL.parent / "example" / "test.conll").sentences]
    texts += ["", "Unseen Zyx words here", "a"]
    exported = _runtime(tmp_path / "out")
    want = seqkit.load(run).tag(texts)
    assert exported.tag(texts) == want and exported.tag(texts, batch_size=3) == want
    assert exported.tag(texts[0]) == seqkit.load(run).tag(texts[0])


def test_a_wrong_graph_is_caught_and_never_written(tagger_runs, tmp_path, monkeypatch):
    """The parity check is what stands between a bad exporter and a silently wrong graph: break
    the ONNX gate order on purpose and the export must fail with nothing left behind."""
    import seqkit.export as export

    def wrong(kernel):
        from onnxscript import opset18 as op

        def lstm(x, lengths, h0, c0, w_ih, w_hh, b_ih, b_hh):  # torch's gate order handed to ONNX as is
            y, yh, yc = op.LSTM(x, op.Unsqueeze(w_ih, [0]), op.Unsqueeze(w_hh, [0]),
                                op.Unsqueeze(op.Concat(b_ih, b_hh, axis=0), [0]), op.Cast(lengths, to=6), h0, c0,
                                hidden_size=w_hh.shape[1])
            return op.Squeeze(y, [1]), yh, yc
        return lstm if kernel == "lstm" else right(kernel)

    right = export._onnx_rnn
    monkeypatch.setattr(export, "_onnx_rnn", wrong)
    with pytest.raises(SeqkitError, match=r"export check failed: output 'emissions' differs from the model"):
        export_run(tagger_runs["lstm-bidirectional"], "onnx", tmp_path / "out", log=lambda m: None)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out-*"))


# -- language models ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
@pytest.mark.parametrize("kind", ["lstm-forward", "gru-forward"])
def test_exported_lm_scores_as_seqkit_and_carries_its_state(lm_runs, tmp_path, fmt, kind):
    run = lm_runs[kind]
    export_run(run, fmt, tmp_path / "out", log=lambda m: None)
    exported, model = _runtime(tmp_path / "out"), seqkit.load(run)
    texts = ["the cat sat on the mat", "a dog ran", "unknownword the"]
    for a, b in zip(exported.score(texts), model.score(texts), strict=True):
        assert a["tokens"] == b["tokens"] and a["logprob"] == pytest.approx(b["logprob"], abs=1e-4)
    # the carried state is a real input: token by token gives the logits of the whole sequence
    ids = [1, *exported.encode("the dog sat under the log")]
    whole, _ = exported.step(ids, exported.zero_state())
    state, steps = exported.zero_state(), []
    for token in ids:
        logits, state = exported.step([token], state)
        steps.append(logits[0])
    np.testing.assert_allclose(np.stack(steps), whole, atol=1e-4)
    assert exported.generate("the cat", max_tokens=5, seed=1) == exported.generate("the cat", max_tokens=5, seed=1)


def test_exported_split_bilm_embeds_as_seqkit(lm_runs, tmp_path):
    run = lm_runs["lstm-split"]
    export_run(run, "onnx", tmp_path / "out", log=lambda m: None)
    got = _runtime(tmp_path / "out").embed("the cat sat")
    np.testing.assert_allclose(got, seqkit.load(run).embed_texts("the cat sat")["vectors"].numpy(), atol=1e-5)


# -- the command line ------------------------------------------------------------------------------


def test_export_command_writes_a_folder_an_app_runs_without_seqkit(tagger_runs, tmp_path):
    out = tmp_path / "tagger"
    result = subprocess.run([sys.executable, "-m", "seqkit", "export", str(tagger_runs["lstm-bidirectional"]),
                             "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "checked against the model on 5 random batches" in result.stderr
    assert {p.name for p in out.iterdir()} == {"manifest.json", "model.onnx", "runtime.py", "tagger.json"}
    # an app with numpy and onnxruntime only: importing torch or seqkit is made to fail
    app = ("import sys; sys.modules['torch'] = None; sys.modules['seqkit'] = None\n"
           "import runtime, json; print(json.dumps(runtime.load('.').tag('EU rejects German call')))")
    shown = subprocess.run([sys.executable, "-c", app], cwd=out, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == seqkit.load(tagger_runs["lstm-bidirectional"]).tag("EU rejects German call")
    again = subprocess.run([sys.executable, "-m", "seqkit", "export", str(tagger_runs["lstm-bidirectional"]),
                            "--out", str(out)], capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.strip().splitlines()[-1].startswith(
        f"error: {out}: already exists and is not an empty folder")


# -- transcription -----------------------------------------------------------------------------------


@pytest.mark.parametrize("directions", ["bidirectional", "forward"])
def test_exported_speech_model_transcribes_as_seqkit(tmp_path, directions):
    """The runtime computes log-mel features in numpy and decodes greedily: the same text as the
    model's own transcribe (a tiny model trained on tones: any weights will do)."""
    from tests.test_serve import _tone, _train_speech

    overrides = ("encoder.bidirectional=false", "encoder.directions=forward") if directions == "forward" else ()
    run = _train_speech(tmp_path, "asr", overrides)
    manifest = export_run(run, "onnx", tmp_path / "out", log=lambda m: None)
    assert manifest["max_difference"] <= 1e-4 and manifest["inputs"]["feats"]["dynamic"]["1"]["min"] == 5
    exported, model = _runtime(tmp_path / "out"), seqkit.load(run)
    waves = [_tone(seconds, 16000, pitch).astype(np.float32) for seconds, pitch in ((0.7, 200), (0.02, 300),
                                                                                      (1.3, 350))]
    want = [r["text"] for r in model.transcribe(waves, sample_rate=16000)]
    assert exported.transcribe(waves) == want and exported.transcribe(waves[0]) == want[0]
    assert exported.transcribe(waves, batch_size=1) == want and exported.transcribe([]) == []
    assert any(want), "an untrained model that says nothing would make this check empty"
    feats = model.fbank(torch.from_numpy(waves[0])).numpy()
    np.testing.assert_allclose(exported.features(waves[0]), feats, atol=2e-3)  # log-mel in numpy vs torchaudio


@settings(max_examples=80, deadline=None)
@given(lengths=st.lists(st.integers(0, 200), max_size=70), batch_size=st.integers(1, 70))
def test_the_runtime_batches_items_of_similar_length(lengths, batch_size):
    """Every item once, shortest first, no batch over batch_size, none whose longest is more
    than 1.25 times its shortest (onnxruntime runs each row to its batch's longest)."""
    from seqkit.export_runtime import batches_by_length

    groups = batches_by_length(lengths, batch_size)
    flat = [i for group in groups for i in group]
    assert sorted(flat) == list(range(len(lengths))) and all(groups)
    assert [lengths[i] for i in flat] == sorted(lengths)
    for group in groups:
        longest, shortest = max(lengths[i] for i in group), min(lengths[i] for i in group)
        assert len(group) <= batch_size and longest <= 1.25 * max(1, shortest)


def test_the_runtimes_batched_viterbi_is_the_crfs():
    """runtime.py's numpy Viterbi (a batch at once, rows of any length; also what the CRF runs on
    CPU) decodes as the CRF's torch steps (what it runs on a GPU)."""
    from seqkit.export_runtime import viterbi
    from seqkit.heads.crf import CRF
    from seqkit.heads.scheme import allowed_transitions

    labels = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]
    crf = CRF(len(labels), *allowed_transitions(labels, "BIOES"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in crf.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
        for n, length in ((1, 1), (5, 12), (9, 30)):
            emissions = torch.randn(n, length, len(labels), generator=gen) * 3
            lengths = torch.randint(1, length + 1, (n,), generator=gen)
            trans, start, end = crf._scores(torch.float32, float("-inf"))
            got = viterbi(emissions.numpy(), lengths.numpy(), trans.numpy(), start.numpy(), end.numpy())
            prepared, mask, lens = crf._prepare(emissions, lengths)
            assert got == crf._decode_steps(prepared, mask, lens, trans, start, end) == crf.decode(emissions, lengths)
