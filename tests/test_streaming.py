"""Streaming sessions: chunked is whole, for speech (any chunk sizes: hypothesis) and language
models; ``seqkit transcribe --stream`` reads PCM from stdin in a real subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import seqkit
from seqkit import registry
from seqkit.errors import SeqkitError
from seqkit.heads.ctc import CTCVocab
from seqkit.models.speech import SpeechModel, collate
from tests.tiny import train_lm

ROOT = Path(__file__).resolve().parents[1]
STREAMING = ROOT / "recipes" / "ctc" / "synth-speech-streaming.yaml"
QUIET = dict(progress=False, log=lambda m: None)


def _speech_model(*overrides: str) -> SpeechModel:
    """The streaming recipe's model, small and untrained (streaming is exact for any weights)."""
    recipe = seqkit.Recipe.load(STREAMING, ["encoder.hidden_size=24", "features.conv_channels=4", *overrides])
    torch.manual_seed(0)
    vocab = CTCVocab.build(["in the beginning god created"])
    model = SpeechModel(recipe, vocab, registry.heads.get("ctc")).eval()
    with torch.no_grad():  # global statistics as training would set them (not the identity)
        model.normalize.mean.fill_(-6.0)
        model.normalize.std.fill_(2.5)
    return model


def _whole(model: SpeechModel, wave: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        out, _ = model.encode(collate([model.fbank(wave)], None, [""], [0]))
        return model.head.log_probs(out)[0]


@pytest.fixture(scope="module")
def speech():
    return _speech_model()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(samples=st.integers(1, 9000), cuts=st.lists(st.integers(1, 4000), min_size=1, max_size=12),
       seed=st.integers(0, 2**16))
def test_chunked_transcription_is_the_whole(speech, samples, cuts, seed):
    wave = torch.from_numpy(np.random.default_rng(seed).normal(0, 0.1, samples).astype(np.float32))
    session = speech.stream(keep_log_probs=True)
    pos, k = 0, 0
    while pos < samples:
        step = cuts[k % len(cuts)]
        session.feed(wave[pos: pos + step].numpy())
        pos, k = pos + step, k + 1
    text = session.finish()
    got = torch.cat(session.log_probs) if session.log_probs else torch.zeros(0, len(speech.vocab))
    want = _whole(speech, wave)
    assert got.shape == want.shape  # every frame, none twice: ceil(ceil((T // 160 + 1) / 2) / 2) steps
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    best = want.argmax(-1).tolist()
    units = [u for i, u in enumerate(best) if u and (i == 0 or u != best[i - 1])]
    assert text == speech.vocab.decode(units)


def test_a_finished_stream_refuses_more_audio(speech):
    session = speech.stream()
    session.feed(np.zeros(800, np.float32))
    session.finish()
    with pytest.raises(SeqkitError, match="this stream has finished"):
        session.feed(np.zeros(10, np.float32))
    with pytest.raises(SeqkitError, match=r"feed\(\) takes mono samples"):
        speech.stream().feed(np.zeros((2, 10), np.float32))


@pytest.mark.parametrize("override, message", [
    ("encoder.directions=bidirectional", "stream\\(\\) needs a forward-only encoder"),
    ("features.normalize=utterance", "stream\\(\\) needs features.normalize: global or none"),
])
def test_models_that_need_the_whole_utterance_cannot_stream(override, message):
    with pytest.raises(SeqkitError, match=message):
        _speech_model(override).stream()


# -- language models ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return seqkit.load(train_lm(tmp_path_factory.mktemp("stream-lm"), steps=20, seed=1))


def test_lm_stream_in_pieces_scores_the_whole_text(lm):
    text = "the cat sat on the mat a dog ran under the log"
    words = text.split()
    session = lm.stream()
    total = sum(session.feed(" ".join(words[i: i + 3])) for i in range(0, len(words), 3)) + session.end_line()
    whole = lm.score(text)
    assert total == pytest.approx(whole["logprob"], abs=1e-4) and session.tokens == whole["tokens"]
    assert session.ppl == pytest.approx(whole["ppl"], rel=1e-4)


def test_lm_stream_generates_what_generate_would_and_reads_it(lm):
    session = lm.stream()
    session.feed("the cat")
    generated = session.generate(12, temperature=0.9, seed=5)
    assert generated == lm.generate("the cat", max_tokens=12, temperature=0.9, seed=5)
    # what it generated was read: a fresh stream fed the same tokens (a newline is <eos>) scores
    # what comes next the same way
    after = session.feed("the dog")
    fresh = lm.stream()
    fresh.feed("the cat")
    for k, line in enumerate(generated.split("\n")):
        if k:
            fresh.end_line()
        fresh.feed(line)
    assert after == pytest.approx(fresh.feed("the dog"), abs=1e-4)
    assert after != pytest.approx(lm.stream().feed("the dog"), abs=1e-4)  # the context mattered


# -- the command line ------------------------------------------------------------------------------


@pytest.mark.skipif(any(shutil.which(p) is None for p in ("espeak-ng", "flite", "bible")),
                    reason="needs espeak-ng, flite and bible-kjv (apt-get install espeak-ng flite bible-kjv "
                           "bible-kjv-text)")
def test_transcribe_stream_reads_pcm_from_stdin(tmp_path):
    overrides = ["device=cpu", "train.max_steps=2", "train.threads=1", "train.batch_size=3", "data.limit=3",
                 f"data.cache_dir={tmp_path / 'cache'}", "data.librivox=false", "encoder.hidden_size=32"]
    seqkit.run_recipe(seqkit.Recipe.load(STREAMING, overrides), tmp_path / "run", **QUIET)
    model = seqkit.load(tmp_path / "run")
    wave = np.random.default_rng(0).normal(0, 0.2, 16000).astype(np.float32)
    pcm = (np.clip(wave, -1, 1) * 32767).astype("<i2")
    result = subprocess.run([sys.executable, "-m", "seqkit", "transcribe", str(tmp_path / "run"), "--stream",
                             "--chunk-ms", "50", "--json"], input=pcm.tobytes(), capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert lines[-1]["final"] and lines[-1]["time_s"] == pytest.approx(1.0)
    assert lines[-1]["text"] == model.transcribe(pcm.astype(np.float32) / 32768.0, sample_rate=16000)["text"]
    assert "from a chunk's arrival to its text: median" in result.stderr.decode()
    bad = subprocess.run([sys.executable, "-m", "seqkit", "transcribe", str(tmp_path / "run"), "--stream", "x.wav"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "error: --stream reads audio from stdin; give no files with it" in bad.stderr
