"""Speech data providers: manifests, the LibriVox sample, synth-speech and its program checks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile
from click.testing import CliRunner

from seqkit.build import check_recipe
from seqkit.cli import cli
from seqkit.data import speech
from seqkit.data.speech import ManifestConfig, chunks, normalize_transcript, read_manifest
from seqkit.errors import DataError
from seqkit.recipe import Recipe

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("bible") is None,
                                  reason="espeak-ng or bible-kjv is not installed "
                                         "(apt-get install espeak-ng bible-kjv bible-kjv-text)")


def test_transcripts_are_normalised_for_scoring():
    assert normalize_transcript("And the LORD said, Let there be light:") == "and the lord said let there be light"
    assert normalize_transcript("Beth-el \u2018Pharaoh\u2019s\u2019  'quoted'") == "beth el pharaoh's quoted"


def test_text_is_cut_at_punctuation_into_bounded_chunks():
    verse = ("And the earth was without form, and void; and darkness was upon the face of the deep. "
             "And the Spirit of God moved upon the face of the waters.")
    assert chunks(verse, 3, 16) == ["And the earth was without form, and void;",
                                    "and darkness was upon the face of the deep.",
                                    "And the Spirit of God moved upon the face of the waters."]
    assert all(len(c.split()) <= 5 for c in chunks(verse, 1, 5))
    assert chunks("In the year 1066 the king came.", 3, 16) == []  # numbers have no safe transcript


def test_manifest_resolves_audio_relative_to_itself(tmp_path, monkeypatch):
    data = tmp_path / "corpus"
    (data / "wav").mkdir(parents=True)
    soundfile.write(str(data / "wav" / "a.wav"), np.zeros(1600, dtype=np.float32), 16000)
    (data / "all.jsonl").write_text(
        json.dumps({"audio": "wav/a.wav", "text": "Hello, World!", "speaker": "x"}) + "\n\n"
        + json.dumps({"audio": str(data / "wav" / "a.wav"), "text": "again"}) + "\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # not the manifest's folder
    corpus = read_manifest(data / "all.jsonl")
    assert [u.audio for u in corpus.utterances] == [data / "wav" / "a.wav"] * 2
    assert corpus.utterances[0].text == "hello world" and corpus.utterances[0].info == {"speaker": "x"}
    splits = speech.manifest_provider(ManifestConfig(train="corpus/all.jsonl"), base=tmp_path)
    assert splits["train"].utterances[0].audio.exists() and splits["test"].utterances == []


@pytest.mark.parametrize("line, message", [
    ("not json", "all.jsonl:2: not a JSON object"),
    ('{"audio": "a.wav"}', 'all.jsonl:2: expected {"audio"'),
])
def test_bad_manifest_lines_name_the_line(tmp_path, line, message):
    path = tmp_path / "all.jsonl"
    path.write_text('{"audio": "a.wav", "text": "ok"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message.replace("{", r"\{")):
        read_manifest(path)


@pytest.mark.skipif(not speech.LIBRIVOX.is_dir(), reason="pocketsphinx-testdata is not installed")
def test_librivox_sample_has_five_real_sentences():
    corpus = speech.librivox_corpus()
    assert len(corpus.utterances) == 5 and all(u.audio.exists() for u in corpus.utterances)
    assert corpus.utterances[1].text == "he was not an ill disposed young man"


def _recipe(tmp_path, **synth) -> Recipe:
    data = {"dataset": "synth-speech", "cache_dir": str(tmp_path / "cache"), "train": 6, "valid": 2, "test": 3,
            "flite": 0, "librivox": False, **synth}
    return Recipe.from_dict({"task": "transcription", "data": data})


def test_missing_program_is_one_line_naming_the_package(tmp_path, monkeypatch):
    # Simulate a machine without espeak-ng: PATH holds only an empty folder.
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(DataError, match=r"`espeak-ng`.*apt-get install espeak-ng"):
        check_recipe(_recipe(tmp_path))
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(_recipe(tmp_path).to_yaml(), encoding="utf-8")
    result = CliRunner().invoke(cli, ["recipe", "validate", str(recipe_file)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "sudo apt-get install espeak-ng" in lines[0], result.output


def test_flite_program_is_checked_when_a_flite_split_is_asked_for(tmp_path, monkeypatch):
    real = tmp_path / "bin"
    real.mkdir()
    for program in ("espeak-ng", "bible"):  # present: stand-ins; only flite is missing
        (real / program).write_text("#!/bin/sh\n")
        (real / program).chmod(0o755)
    monkeypatch.setenv("PATH", str(real))
    with pytest.raises(DataError, match="apt-get install flite"):
        check_recipe(_recipe(tmp_path, flite=2))
    check_recipe(_recipe(tmp_path, flite=0))


@needs_espeak
def test_synth_speech_is_deterministic_cached_and_held_out(tmp_path, monkeypatch):
    recipe = _recipe(tmp_path)
    first = speech.synth_provider(recipe.data, base=tmp_path)
    again = speech.synth_provider(_recipe(tmp_path / "other").data, base=tmp_path)
    for split in ("train", "valid", "test"):
        a, b = first[split].utterances, again[split].utterances
        assert [u.text for u in a] == [u.text for u in b]
        assert all(np.array_equal(soundfile.read(str(x.audio))[0], soundfile.read(str(y.audio))[0])
                   for x, y in zip(a, b, strict=True))
    assert len(first["train"].utterances) == 6 and len(first["test"].utterances) == 3
    # held out: sentences, voices and variants of validation and test never occur in training
    train = first["train"].utterances
    for split in ("valid", "test"):
        held = first[split].utterances
        assert not {u.text for u in held} & {u.text for u in train}
        assert not {u.info["voice"] for u in held} & {u.info["voice"] for u in train}
        assert not {u.info["variant"] for u in held} & {u.info["variant"] for u in train}
    # cached: a second build renders nothing
    monkeypatch.setattr(speech, "_render_espeak", lambda *a: pytest.fail("rendered again"))
    monkeypatch.setattr(speech, "_render_flite", lambda *a: pytest.fail("rendered again"))
    cached = speech.synth_provider(recipe.data, base=tmp_path)
    assert [u.audio for u in cached["train"].utterances] == [u.audio for u in train]


@needs_espeak
def test_espeak_audio_does_not_depend_on_jobs_or_on_resuming(tmp_path, monkeypatch):
    # libespeak-ng keeps state between utterances: each fixed chunk starts a fresh process
    monkeypatch.setattr(speech, "_ESPEAK_CHUNK", 3)
    full = speech.synth_provider(_recipe(tmp_path / "a").data, base=tmp_path)["train"].utterances
    recipe = _recipe(tmp_path / "b", jobs=1)
    speech.synth_provider(recipe.data, base=tmp_path)
    split = next((tmp_path / "b" / "cache" / "synth-speech").glob("train-*"))
    for name in ("000001.flac", "000004.flac", "manifest.jsonl"):  # an interrupted build
        (split / name).unlink()
    resumed = speech.synth_provider(recipe.data, base=tmp_path)["train"].utterances
    assert len(resumed) == len(full) == 6
    waves = [soundfile.read(str(u.audio))[0] for u in full]
    assert all(np.array_equal(w, soundfile.read(str(u.audio))[0]) for w, u in zip(waves, resumed, strict=True))
    assert len({w.size for w in waves}) > 1 and all(w.size > 8000 for w in waves)  # real, distinct speech


@needs_espeak
def test_espeak_failure_names_the_voice_and_the_text(tmp_path):
    row = {"engine": "espeak-ng", "voice": "xx-no-such-voice", "variant": "", "speed": 150, "pitch": 50,
           "gap": 0, "said": "hello there"}
    with pytest.raises(DataError, match=r"espeak-ng -v xx-no-such-voice failed on 'hello there'"):
        speech._render_espeak([(row, tmp_path / "0.flac")], {tmp_path / "0.flac"})
    assert not (tmp_path / "0.flac").exists()


def test_a_dying_espeak_worker_is_one_error_with_its_reason(tmp_path, monkeypatch):
    # Stand-in for a worker that crashes after the first utterance (a real crash cannot be forced).
    worker = tmp_path / "worker.py"
    worker.write_text("import sys\nsys.stdin.readline()\nprint('ok', flush=True)\n"
                      "sys.exit('Segmentation fault in libespeak-ng')\n")
    monkeypatch.setattr(speech, "_ESPEAK_WORKER", worker)
    row = {"engine": "espeak-ng", "voice": "en-us", "variant": "m2", "speed": 150, "pitch": 50, "gap": 0}
    rows = [({**row, "said": "first one"}, tmp_path / "0.flac"), ({**row, "said": "second one"}, tmp_path / "1.flac")]
    with pytest.raises(DataError, match=r"espeak-ng -v en-us\+m2 failed on 'second one': Segmentation fault"):
        speech._render_espeak(rows, {tmp_path / "1.flac"})  # the first is not asked for: not read
    assert not (tmp_path / "1.flac").exists()


@needs_espeak
def test_test_split_alone_renders_only_its_own_audio(tmp_path):
    # What `seqkit evaluate RUN` does on a machine without the training audio.
    from seqkit.models import load_splits

    full = speech.synth_provider(_recipe(tmp_path / "full").data, base=tmp_path)
    recipe = _recipe(tmp_path / "alone")
    alone = load_splits(recipe, ["test"])
    assert set(alone) == {"test"}
    built = sorted(p.name.split("-")[0] for p in (tmp_path / "alone" / "cache" / "synth-speech").iterdir())
    assert built == ["test"]
    a, b = full["test"].utterances, alone["test"].utterances
    assert [u.text for u in a] == [u.text for u in b] and [u.info for u in a] == [u.info for u in b]
    assert all(np.array_equal(soundfile.read(str(x.audio))[0], soundfile.read(str(y.audio))[0])
               for x, y in zip(a, b, strict=True))
    assert set(load_splits(recipe)) == {"train", "valid", "test"}  # everything, when asked for all


def test_train_flite_reads_a_share_of_train_with_voices_the_flite_split_never_uses():
    sentences = [("src", f"sentence number {i}") for i in range(400)]
    train = speech._plan("train", sentences, 400, seed=0, train_flite=0.25)
    flite = [row for row in train if row["engine"] == "flite"]
    assert 70 <= len(flite) <= 130 and {row["voice"] for row in flite} == set(speech._FLITE_TRAIN)
    held = speech._plan("flite", sentences, 100, seed=0, train_flite=0.25)
    assert {row["voice"] for row in held} == set(speech._FLITE_HELD)
    assert not set(speech._FLITE_TRAIN) & set(speech._FLITE_HELD)
    # without train_flite, the plans (and so the cached audio) are what they always were
    assert all(row["engine"] == "espeak-ng" for row in speech._plan("train", sentences, 400, seed=0))
    assert {row["voice"] for row in speech._plan("flite", sentences, 100, seed=0)} == set(speech._FLITE_VOICES)


def test_train_flite_changes_the_cache_folders_of_train_and_flite_only(tmp_path):
    plain, mixed = _recipe(tmp_path), _recipe(tmp_path, train_flite=0.2)
    a, b = speech._split_dirs(plain.data), speech._split_dirs(mixed.data)
    assert a["valid"] == b["valid"] and a["test"] == b["test"]
    assert a["train"] != b["train"]


def test_lm_text_is_every_piece_of_the_text_cut_like_the_utterances(monkeypatch):
    monkeypatch.setattr(speech, "_kjv", lambda: [("Gen 1:1", "In the beginning God created the heaven and the "
                                                   "earth. And the earth was without form, and void; and darkness."),
                                                  ("Gen 1:2", "Selah.")])
    lines = speech.lm_text(speech.SynthConfig(max_words=16))
    assert lines == ["in the beginning god created the heaven and the earth",
                     "and the earth was without form and void", "and darkness", "selah"]
    # the utterances' sentences are among the LM's lines (so a held-out one can be removed exactly)
    cut = speech.chunks("In the beginning God created the heaven and the earth. And the earth was without "
                        "form, and void; and darkness.", 3, 16)
    assert {speech.normalize_transcript(c) for c in cut} <= set(lines)
