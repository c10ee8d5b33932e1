"""Speech end to end: the shipped recipe for two steps, `seqkit transcribe` (CliRunner and a real
subprocess), `seqkit evaluate` on a manifest, and ``seqkit.load(...).transcribe``."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from click.testing import CliRunner

import seqkit
from seqkit.cli import cli
from seqkit.data.speech import LIBRIVOX
from seqkit.errors import DataError
from seqkit.features.audio import read_audio
from seqkit.heads.ctc import error_rates
from seqkit.models.speech import TranscriptionTask, make_batches
from seqkit.ngram import find_lmplz
from seqkit.recipe import Recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "ctc" / "synth-speech.yaml"

pytestmark = pytest.mark.skipif(
    any(shutil.which(p) is None for p in ("espeak-ng", "flite", "bible")),
    reason="needs espeak-ng, flite and bible-kjv (apt-get install espeak-ng flite bible-kjv bible-kjv-text)")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The shipped recipe, two steps on three utterances per split (a smoke run)."""
    tmp = tmp_path_factory.mktemp("speech")
    overrides = ["device=cpu", "train.max_steps=2", "train.threads=1", "train.batch_size=3",
                 "data.limit=3", f"data.cache_dir={tmp / 'cache'}",
                 f"data.librivox={'true' if LIBRIVOX.is_dir() else 'false'}"]
    if find_lmplz() is None:
        overrides.append("head.lm=null")  # the decoder LM needs KenLM (bash tools/build_kenlm.sh)
    args = ["recipe", "run", str(RECIPE), "--out", str(tmp / "run"), "--no-progress"]
    for item in overrides:
        args += ["--set", item]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return tmp / "run"


def test_recipe_smoke_run_writes_all_metrics(run):
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["stopped"] == "max_steps"
    for key in ("cer", "wer", "cer_beam", "wer_beam"):
        assert 0 <= metrics[key] <= 1000  # an untrained model may insert more than the reference has
    assert metrics["beam_size"] == Recipe.load(RECIPE).head.beam_size and metrics["utterances"] == 3
    assert {"cer", "wer", "cer_beam"} <= set(metrics["flite"]) and metrics["flite"]["utterances"] == 3
    if LIBRIVOX.is_dir():
        assert metrics["librivox"]["utterances"] == 5
    units = json.loads((run / "vocab" / "units.json").read_text())
    assert units["kind"] == "chars" and units["tokens"][:2] == ["<blank>", "|"]


@pytest.mark.skipif(find_lmplz() is None, reason="KenLM's lmplz is not built (bash tools/build_kenlm.sh)")
def test_the_recipe_builds_a_decoder_lm_without_any_held_out_sentence_and_tunes_it(run, tmp_path, monkeypatch):
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"cer_lm", "wer_lm"} <= set(metrics) and {"cer_lm", "wer_lm"} <= set(metrics["flite"])
    decoder = json.loads((run / "decoder.json").read_text())
    assert decoder["lm"]["path"] == "lm/kn4.bin" and decoder["tuned_on"] == "valid"
    head = Recipe.load(RECIPE).head  # the recipe's grid, all of it tried
    assert len(decoder["grid"]) == len(head.lm_weight_grid) * len(head.word_score_grid) * len(head.sil_score_grid)
    assert {(r["lm_weight"], r["word_score"], r["sil_score"]) for r in decoder["grid"]} == set(
        itertools.product(head.lm_weight_grid, head.word_score_grid, head.sil_score_grid))
    assert decoder["beam_size"] == head.lm_beam_size and decoder["tune_beam"] == head.lm_tune_beam
    assert decoder["lm_text"]["held_out_sentences_in_lm_text"] == 0
    lm = decoder["lm"]
    assert (lm["lm_weight"], lm["word_score"], lm["sil_score"]) in {(r["lm_weight"], r["word_score"], r["sil_score"])
                                                                    for r in decoder["grid"]}
    assert metrics["lm_beam_size"] == head.lm_beam_size  # the report searched with the LM at that beam
    held_out = set()
    for split in ("valid", "test", "flite"):
        manifest = next((run.parent / "cache" / "synth-speech").glob(f"{split}-*/manifest.jsonl"))
        held_out |= {json.loads(line)["text"] for line in manifest.read_text().splitlines()}
    lines = (run / "lm" / "text.txt").read_text().splitlines()
    assert len(lines) > 70000 and not held_out & set(lines)
    assert decoder["lm_text"]["removed_lines"] >= len(held_out)  # each was in the KJV text at least once
    asr = seqkit.load(run)
    assert asr.decoder_lm is not None and asr.decoding(4) == ("lm", 4) and asr.decoding(4, lm=False) == 4
    # tune-decoder: another grid, kept in the (copied) run; the CLI prints the grid
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    monkeypatch.chdir(tmp_path)  # --lm is read from the current folder
    result = CliRunner().invoke(cli, ["tune-decoder", str(copy), "--lm", "run/lm/kn4.bin",
                                      "--weights", "0,2", "--word-scores", "1", "--sil-scores", "-1,0",
                                      "--beam", "4", "--tune-beam", "2"])
    assert result.exit_code == 0, result.output
    tuned = json.loads((copy / "decoder.json").read_text())
    assert [(r["lm_weight"], r["word_score"], r["sil_score"]) for r in tuned["grid"]] == [
        (0.0, 1.0, -1.0), (0.0, 1.0, 0.0), (2.0, 1.0, -1.0), (2.0, 1.0, 0.0)]
    assert (tuned["beam_size"], tuned["tune_beam"]) == (4, 2) and tuned["lm"]["path"] == "lm/kn4.bin"
    assert "kept in" in result.output and "sil_score" in result.output


def test_train_lexicon_is_the_training_words_and_the_loaded_model_uses_it(run):
    assert Recipe.load(RECIPE).head.lexicon == "train"
    manifest = next((run.parent / "cache" / "synth-speech").glob("train-*/manifest.jsonl"))
    words = {w for line in manifest.read_text().splitlines() for w in json.loads(line)["text"].split()}
    assert (run / "vocab" / "lexicon.txt").read_text().split() == sorted(words)
    assert seqkit.load(run).head.lexicon == sorted(words)  # the loaded model reads it back
    # (that beam search keeps to a lexicon is checked on known emissions in test_ctc.py)


def _talkative(asr):
    """The smoke run's model says blank (or a space) everywhere; with those two ruled out and its
    output layer scaled up, it says letters that depend on the audio, so paths that must agree
    can be compared on something."""
    with torch.no_grad():
        asr.head.proj.weight.mul_(50.0)
        asr.head.proj.bias.zero_()
        asr.head.proj.bias[:2] = -1e4  # <blank> and |
    return asr


def _audio(tmp_path) -> list[Path]:
    good = tmp_path / "good.wav"
    subprocess.run(["espeak-ng", "-w", str(good), "let there be light"], check=True)
    stereo = tmp_path / "stereo.flac"
    wave, rate = soundfile.read(str(good))
    soundfile.write(str(stereo), np.stack([wave, wave], axis=1), rate)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEfmt garbage")
    return [good, bad, stereo]


def test_transcribe_subprocess_reports_bad_files_and_carries_on(run, tmp_path):
    good, bad, stereo = _audio(tmp_path)
    env = {**os.environ, "SEQKIT_LOAD_PLUGINS": "0"}
    proc = subprocess.run([sys.executable, "-m", "seqkit", "transcribe", str(run), str(good), str(bad), str(stereo),
                           "--beam", "4"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(good), str(stereo)]
    path, duration, spent, _text = lines[0].split("\t")
    assert float(duration.rstrip("s")) > 0.5 and float(spent.rstrip("s")) >= 0
    assert f"error: {bad}: cannot read audio" in proc.stderr
    assert "2 file(s)" in proc.stderr and "1 could not be read" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_transcribe_json_and_missing_files(run, tmp_path):
    good, bad, _ = _audio(tmp_path)
    result = CliRunner().invoke(cli, ["transcribe", str(run), str(good), str(tmp_path / "nope.wav"), "--json"])
    assert result.exit_code == 1
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[0]["audio"] == str(good) and isinstance(rows[0]["text"], str) and rows[0]["duration_s"] > 0.5
    assert rows[1]["text"] is None and "audio file not found" in rows[1]["error"]
    result = CliRunner().invoke(cli, ["transcribe", str(run)])
    assert result.exit_code == 2 and "nothing to transcribe" in result.output


def test_evaluate_prints_error_rates_of_a_manifest(run, tmp_path):
    good, bad, stereo = _audio(tmp_path)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"audio": p.name, "text": "Let there be light."}) + "\n"
                                for p in (good, bad, stereo)), encoding="utf-8")
    result = CliRunner().invoke(cli, ["evaluate", str(run), "--data", str(manifest)])
    assert result.exit_code == 0, result.output
    assert "cer" in result.stdout and "wer" in result.stdout
    assert "2 utterances" in result.output and "bad.wav" in result.output  # the unreadable one is named
    result = CliRunner().invoke(cli, ["evaluate", str(run), "--data", str(manifest), "--json"])
    metrics = json.loads(result.stdout)
    assert metrics["utterances"] == 2 and len(metrics["unreadable"]) == 1 and "cer_beam" in metrics
    if "cer_lm" in metrics:  # the smoke run has the recipe's 4-gram when lmplz is built
        table = CliRunner().invoke(cli, ["evaluate", str(run), "--data", str(manifest)]).stdout
        assert "+ LM" in table and f"{metrics['cer_lm']:.2f}" in table and "LM: kenlm kn4.bin" in table


def test_the_evaluate_table_has_a_column_for_each_decoding_the_metrics_have():
    full = TranscriptionTask().format_metrics({"cer": 10.0, "wer": 30.0, "cer_beam": 7.7, "wer_beam": 18.2,
                                               "beam_size": 64, "cer_lm": 6.18, "wer_lm": 12.5,
                                               "decoder_lm": "kenlm kn4.bin (lm_weight 1.5, word_score 1)",
                                               "lm_beam_size": 2048})
    lines = full.splitlines()
    assert lines[0].split() == ["greedy", "beam", "64", "+", "LM"]
    assert lines[1].split() == ["cer", "10.00", "7.70", "6.18"]
    assert lines[2].split() == ["wer", "30.00", "18.20", "12.50"]
    assert lines[3] == "LM: kenlm kn4.bin (lm_weight 1.5, word_score 1), beam 2048"
    greedy = TranscriptionTask().format_metrics({"cer": 10.0, "wer": 30.0})
    assert greedy.splitlines()[1].split() == ["cer", "10.00"] and len(greedy.splitlines()) == 3


def test_one_pass_for_several_beams_gives_what_each_beam_gives_alone(run, tmp_path):
    good, bad, stereo = _audio(tmp_path)
    asr = _talkative(seqkit.load(run))
    both = asr.transcribe_beams([good, bad, stereo], [0, 4], errors="skip")
    assert both[1]["texts"] is None and "bad.wav" in both[1]["error"]
    texts = {beam: [both[0]["texts"][beam], both[2]["texts"][beam]] for beam in (0, 4)}
    assert texts[0] != texts[4], texts  # the talkative model spells differently under the lexicon
    for beam in (0, 4):
        assert texts[beam] == [r["text"] for r in asr.transcribe([good, stereo], beam=beam, lm=False)]
    if asr.decoder_lm is not None:  # the recipe's decoder LM: transcribe(beam=N) searches with it
        with_lm = asr.transcribe_beams([good, stereo], [("lm", 4)])
        assert [r["texts"][("lm", 4)] for r in with_lm] == [r["text"] for r in asr.transcribe([good, stereo], beam=4)]
    # batch scoring: one pass for both widths, the same as each width alone and as scoring those texts
    refs = ["let there be light"] * 2
    feats = [asr.fbank(read_audio(p, asr.sample_rate)) for p in (good, stereo)]
    batches = make_batches(feats, None, refs, 2)
    scores = asr.evaluate_beams(batches, [0, 4])
    for beam in (0, 4):
        assert scores[beam] == asr.evaluate(batches, beam) == {**error_rates(refs, texts[beam]), "utterances": 2}
    # seqkit evaluate's figures are those texts' error rates (the recipe's beam is 64, so use 4 here)
    asr.recipe.head.beam_size = 4
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"audio": p.name, "text": refs[0]}) + "\n" for p in (good, bad, stereo)),
                        encoding="utf-8")
    metrics = TranscriptionTask().evaluate_data(asr, manifest)
    assert (metrics["cer"], metrics["wer"]) == tuple(error_rates(refs, texts[0]).values())
    assert (metrics["cer_beam"], metrics["wer_beam"]) == tuple(error_rates(refs, texts[4]).values())
    assert metrics["utterances"] == 2 and len(metrics["unreadable"]) == 1


def test_load_and_transcribe_files_and_arrays(run, tmp_path, device):
    good, bad, stereo = _audio(tmp_path)
    asr = _talkative(seqkit.load(run, device=str(device)))
    one = asr.transcribe(str(good))
    assert isinstance(one, dict) and one["text"] and one["audio"] == str(good)
    wave, rate = soundfile.read(str(good), dtype="float32")
    from_array = asr.transcribe(wave, sample_rate=rate)
    assert from_array["text"] == one["text"] and from_array["audio"] is None
    assert asr.transcribe(torch.from_numpy(wave), sample_rate=rate)["text"] == one["text"]
    many = asr.transcribe([good, bad, stereo], errors="skip", batch_size=2)
    assert many[0]["text"] == one["text"] == many[2]["text"] and many[1]["text"] is None
    with pytest.raises(DataError, match="bad.wav"):
        asr.transcribe([good, bad])
    with pytest.raises(DataError, match="sample_rate"):
        asr.transcribe(wave)


def test_sortagrad_orders_the_first_speech_epoch_by_duration(run):
    prepare = TranscriptionTask().prepare

    recipe = Recipe.load(RECIPE, ["device=cpu", "train.batch_size=2", "data.limit=6", "train.sortagrad=true",
                                  f"data.cache_dir={run.parent / 'cache'}", "data.librivox=false"])
    prepared = prepare(recipe, None, log=lambda msg: None)
    first = [b.lengths.tolist() for b in prepared.train_batches(0)]
    frames = [n for batch in first for n in sorted(batch)]
    assert frames == sorted(frames) and len(frames) == 6  # shortest utterances first, every one once
    later = [b.lengths.tolist() for b in prepared.train_batches(1)]
    assert sorted(n for batch in later for n in batch) == sorted(frames)


def test_trim_silence_shortens_training_utterances_only(run):
    from seqkit.errors import RecipeError
    prepare = TranscriptionTask().prepare

    base = ["device=cpu", "train.batch_size=2", "data.limit=6", f"data.cache_dir={run.parent / 'cache'}",
            "data.librivox=false", "data.flite=0"]
    logs: list[str] = []
    plain = prepare(Recipe.load(RECIPE, base), None, log=lambda msg: None)
    trimmed = prepare(Recipe.load(RECIPE, base + ["features.trim_silence=0.05"]), None, log=logs.append)

    def frames(batches):
        return sorted(n for b in batches for n in b.lengths.tolist())

    before, after = frames(plain.train_batches(0)), frames(trimmed.train_batches(0))
    assert len(after) == len(before) == 6 and sum(after) < sum(before)  # espeak-ng ends in silence
    assert frames(trimmed.valid_batches) == frames(plain.valid_batches)
    assert frames(trimmed.test_batches) == frames(plain.test_batches)
    assert any("trimmed silence" in line for line in logs)
    with pytest.raises(RecipeError, match="features.trim_silence"):
        prepare(Recipe.load(RECIPE, base + ["features.trim_silence=-1"]), None, log=lambda msg: None)
