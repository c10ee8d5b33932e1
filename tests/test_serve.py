"""`seqkit serve` end to end: tiny runs trained here (a CoNLL tagger, a word LM, a CTC speech
model and, when the seqkit-music plugin is installed, a piano-roll model), the real server as a
subprocess, real HTTP requests, and its page in headless Chromium."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from click.testing import CliRunner

import seqkit
from seqkit.build import run_recipe
from seqkit.cli import cli
from seqkit.recipe import Recipe
from seqkit.testing import registered_plugin

for module in ("starlette", "uvicorn", "multipart", "prometheus_client", "httpx"):
    pytest.importorskip(module, reason="seqkit serve's tests need the serve extra and httpx: pip install -e '.[test]'")

import httpx  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

try:  # the piano-roll model: the seqkit-music plugin (plugins/seqkit-music), installed as a distribution
    import seqkit_music
except ImportError:
    seqkit_music = None
needs_music = pytest.mark.skipif(seqkit_music is None, reason="needs the seqkit-music plugin (pip install -c "
                                 "constraints.txt -e plugins/seqkit-music): the piano-roll model is its own")
PNG = b"\x89PNG\r\n\x1a\n"

ROOT = Path(__file__).resolve().parents[1]
SENTENCE = "Ada Brook works for Acme Corp in Paris ."
SENTENCES = [SENTENCE, "Lena Hart moved to Brisk last year .", "Paris is far from Acme Corp .", "the cat sat",
             "Ada Brook and Lena Hart met in Paris .", "Acme Corp hired Ada ."]
ARTIFACTS = ROOT / "tests" / "artifacts"
SERVER_FLAGS = ["--threads", "1", "--max-wait-ms", "20", "--max-chars", "2000", "--max-texts", "64",
                "--max-body", "256k", "--max-audio-body", "2MB", "--max-audio-seconds", "5", "--max-tokens", "200",
                "--max-frames", "128", "--rate-limit", "0"]


# -- tiny runs --------------------------------------------------------------------------------


def _tone(seconds: float, rate: int, pitch: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * pitch * t * (1 + t)) * np.hanning(len(t))
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _train_tagger(tmp: Path) -> Path:
    recipe = Recipe.load(ROOT / "recipes" / "ner" / "conll.yaml", ["device=cpu", "train.epochs=3", "train.threads=1"])
    run_recipe(recipe, tmp / "tagger", progress=False, log=lambda m: None)
    return tmp / "tagger"


def _train_lm(tmp: Path) -> Path:
    rng = random.Random(0)
    lines = [f"{rng.choice(['the', 'a'])} {rng.choice(['cat', 'dog', 'bird'])} {rng.choice(['sat', 'ran'])} "
             f"{rng.choice(['on', 'under'])} the {rng.choice(['mat', 'log', 'tree'])}" for _ in range(300)]
    text = _write(tmp / "lm.txt", "\n".join(lines) + "\n")
    recipe = _write(tmp / "lm.yaml", f"""
task: {{name: language-model, bptt: 12, eval_streams: 2, baseline: none}}
data: {{dataset: text, train: {text}, valid: {text}, test: {text}}}
features: {{kind: lm-tokens, units: words, embedding_dim: 16}}
encoder: {{directions: forward, num_layers: 1, hidden_size: 24}}
head: {{name: lm}}
train: {{epochs: 1, batch_size: 4, lr: 0.01, seed: 3, threads: 1}}
device: cpu
""")
    run_recipe(Recipe.load(recipe), tmp / "lm", progress=False, log=lambda m: None)
    return tmp / "lm"


def _train_speech(tmp: Path, name: str = "asr", overrides: tuple[str, ...] = ()) -> Path:
    rows = []
    for i, words in enumerate(["let there be light", "and god said", "a cat", "the light"]):
        soundfile.write(str(tmp / f"u{i}.wav"), _tone(0.6 + 0.1 * i, 16000, 200 + 50 * i), 16000)
        rows.append(json.dumps({"audio": f"u{i}.wav", "text": words}))
    manifest = _write(tmp / "speech.jsonl", "\n".join(rows) + "\n")
    recipe = _write(tmp / "asr.yaml", f"""
task: transcription
data: {{dataset: manifest, train: {manifest}, valid: {manifest}, test: {manifest}}}
features: {{kind: fbank, n_mels: 20, subsampling: 2, conv_layers: 1, conv_channels: 4}}
encoder: {{num_layers: 1, hidden_size: 16, bidirectional: true}}
head: {{name: ctc, beam_size: 0}}
train: {{max_steps: 2, batch_size: 2, threads: 1}}
device: cpu
""")
    run_recipe(Recipe.load(recipe, list(overrides)), tmp / name, progress=False, log=lambda m: None)
    return tmp / name


def _train_music(tmp: Path) -> Path:
    """A piano-roll run (bernoulli head) on tiny JSB-style data, the plugin registered in this
    process while it trains. 10 epochs (about 1 s): after 1 the model still turns half the keys
    on, and the page's picture (tests/artifacts/serve-page.png) would be noise; after 10 it plays
    about four notes a frame, as the data does."""
    from seqkit_music.data import toy_benchmark

    path = _write(tmp / "chorales.json", json.dumps(toy_benchmark()))
    recipe = _write(tmp / "music.yaml", f"""
task: piano-roll
data: {{dataset: jsb, path: {path}}}
encoder: {{hidden_size: 16, num_layers: 1, bidirectional: false}}
head: {{name: bernoulli}}
train: {{epochs: 10, lr: 0.03, batch_size: 4, threads: 1}}
device: cpu
""")
    with registered_plugin(seqkit_music, name="music"):
        run_recipe(Recipe.load(recipe), tmp / "music", progress=False, log=lambda m: None)
    return tmp / "music"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One thread each (several threads on a busy 2-core machine were 8x slower); torch's thread
    count is put back afterwards."""
    tmp = tmp_path_factory.mktemp("serve")
    threads = torch.get_num_threads()
    try:
        found = {"tagger": _train_tagger(tmp), "lm": _train_lm(tmp), "asr": _train_speech(tmp)}
        if seqkit_music is not None:
            found["music"] = _train_music(tmp)
        return found
    finally:
        torch.set_num_threads(threads)


# -- servers ----------------------------------------------------------------------------------


class Server:
    """`seqkit serve` as a real process on a free port; its stderr goes to a file."""

    def __init__(self, args: list[str], log: Path, plugins: bool = False) -> None:
        self.log = log
        self.stderr = open(log, "w", encoding="utf-8")
        # plugins: the installed ones found through their entry points (the piano-roll task is the music plugin's)
        env = {**os.environ, "SEQKIT_LOAD_PLUGINS": "1" if plugins else "0"}
        self.proc = subprocess.Popen([sys.executable, "-m", "seqkit", "serve", *args, "--port", "0"], cwd=ROOT,
                                     env=env, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        self.url = ""

    def wait(self, timeout: float = 120) -> "Server":
        """Read the URL line, then wait for /health."""
        deadline = time.time() + timeout
        while not self.url:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.time()))
            line = self.proc.stdout.readline() if ready else ""
            if not line:
                raise AssertionError(f"seqkit serve did not start: {self.log.read_text()}")
            self.url = line.split("http://", 1)[1].split()[0].rstrip("/") if "http://" in line else ""
            self.url = f"http://{self.url}" if self.url else ""
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"{self.url}/health did not answer")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.stderr.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def servers(runs, tmp_path_factory):
    logs = tmp_path_factory.mktemp("serve-logs")
    main = Server([str(path) for path in runs.values()] + SERVER_FLAGS, logs / "main.log", plugins="music" in runs)
    limited = Server([str(runs["tagger"]), "--threads", "1", "--max-batch", "1", "--rate-limit", "0.2",
                      "--rate-burst", "3"], logs / "limited.log")
    try:
        yield {"main": main.wait(), "limited": limited.wait()}
    finally:
        main.stop()
        limited.stop()


@pytest.fixture(scope="module")
def server(servers) -> Server:
    return servers["main"]


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def models(runs):
    """The same runs loaded in this process: what the server must answer. They run on one
    thread, as the servers do (--threads 1), so that sums are added in the same order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loaded = {name: seqkit.load(path) for name, path in runs.items() if name != "music"}
        if "music" in runs:
            with registered_plugin(seqkit_music, name="music"):
                loaded["music"] = seqkit.load(runs["music"])
        yield loaded
    finally:
        torch.set_num_threads(threads)


def _metrics(client) -> dict:
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    return families


def _sample(families: dict, family: str, suffix: str, **labels) -> float:
    for sample in families[family].samples:
        if sample.name == family + suffix and all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    return 0.0


# -- answers ----------------------------------------------------------------------------------


def test_health_lists_each_model_and_what_it_answers(client):
    health = client.get("/health").json()
    assert health["status"] == "ok"
    want = {
        "tagger": ("tagging", ["tag", "embed"], None),
        "lm": ("language-model", ["generate", "score"], "text"),
        "asr": ("transcription", ["transcribe"], None),
    }
    if seqkit_music is not None:
        want["music"] = ("piano-roll", ["generate"], "piano-roll")
    assert {m["name"]: (m["task"], m["endpoints"], m.get("generates")) for m in health["models"]} == want


def test_tag_answers_what_the_loaded_model_does(client, models):
    one = client.post("/tag", json={"text": SENTENCE})
    assert one.status_code == 200
    assert one.json() == {"model": "tagger", **models["tagger"].tag(SENTENCE)}
    assert [e["text"] for e in one.json()["entities"]] == ["Ada Brook", "Acme Corp", "Paris"]
    many = client.post("/tag", json={"model": "tagger", "texts": SENTENCES}).json()
    assert many == {"model": "tagger", "results": models["tagger"].tag(SENTENCES)}


def test_score_answers_what_the_loaded_model_does(client, models):
    texts = ["the cat sat on the mat", "mat the on sat cat the"]
    got = client.post("/score", json={"texts": texts}).json()
    want = models["lm"].score(texts)
    assert got["model"] == "lm" and [r["text"] for r in got["results"]] == texts
    for mine, theirs in zip(got["results"], want):
        assert mine == {**theirs, "logprob": pytest.approx(theirs["logprob"], rel=1e-6),
                        "ppl": pytest.approx(theirs["ppl"], rel=1e-6)}
    assert got["results"][0]["logprob"] > got["results"][1]["logprob"]  # the grammar's order is likelier


def test_embed_gives_the_tagger_encoder_vectors(client, models):
    got = client.post("/embed", json={"model": "tagger", "text": SENTENCE}).json()
    want = models["tagger"].embed_texts(SENTENCE)
    assert got["tokens"] == want["tokens"] and np.allclose(got["vectors"], want["vectors"].numpy(), atol=1e-6)
    assert np.allclose(got["vector"], want["vectors"].mean(0).numpy(), atol=1e-6)
    assert len(got["vector"]) == models["tagger"].encoder.output_size


def test_generate_streams_tokens_that_join_to_generate(client, models):
    options = {"max_tokens": 25, "temperature": 0.8, "top_k": 5, "seed": 7}
    lines = []
    with client.stream("POST", "/generate", json={"prompt": "the cat", **options}) as response:
        assert response.status_code == 200 and response.headers["content-type"] == "application/x-ndjson"
        for line in response.iter_lines():
            lines.append(json.loads(line))
    pieces = [chunk["text"] for chunk in lines if "text" in chunk]
    assert len(pieces) == 25 and lines[-1] == {"done": True, "tokens": 25}
    assert "".join(pieces) == models["lm"].generate("the cat", **options)


@needs_music
def test_generate_draws_a_piano_roll_with_the_models_own_picture_and_midi(client, models, tmp_path):
    options = {"frames": 48, "temperature": 1.0, "seed": 5}
    first = client.post("/generate", json={"model": "music", **options})
    assert first.status_code == 200 and first.headers["content-type"] == "application/json"
    got = first.json()
    assert {k: got[k] for k in ("model", "frames", "seed")} == {"model": "music", "frames": 48, "seed": 5}
    png, midi = base64.b64decode(got["png"]), base64.b64decode(got["midi"])
    width, height = (int.from_bytes(png[at: at + 4], "big") for at in (16, 20))  # the IHDR chunk
    assert png.startswith(PNG) and png[12:16] == b"IHDR" and 300 <= width <= 2000 and 200 <= height <= 2000
    assert midi.startswith(b"MThd")
    # the same seed, the same bytes; and they are the model's own: generate(...).save_midi here
    again = client.post("/generate", json={"model": "music", **options}).json()
    assert (again["png"], again["midi"]) == (got["png"], got["midi"])
    roll = models["music"].generate(48, temperature=1.0, seed=5)
    assert roll.save_midi(tmp_path / "here.mid").read_bytes() == midi and got["notes"] == roll.note_count()
    assert got["seconds"] == pytest.approx(roll.seconds, abs=1e-3)
    # "model" left out: the fields say a piano roll; one file as is with "format"
    alone = client.post("/generate", json={**options, "format": "midi"})
    assert alone.headers["content-type"] == "audio/midi" and alone.content == midi
    assert alone.headers["x-seqkit-model"] == "music" and alone.headers["x-seqkit-seed"] == "5"
    picture = client.post("/generate", json={"model": "music", **options, "format": "png"})
    assert picture.headers["content-type"] == "image/png" and picture.content == png
    # seconds of music, at the model's frame length; no seed: one is drawn and said
    timed = client.post("/generate", json={"model": "music", "seconds": 3.0, "temperature": 0}).json()
    assert timed["frames"] == max(1, round(3.0 / roll.frame_seconds)) and isinstance(timed["seed"], int)
    assert _sample(_metrics(client), "seqkit_generated_frames", "_total", model="music") >= 4 * 48


def test_transcribe_raw_body_and_multipart_answer_like_transcribe(client, models, tmp_path):
    path = tmp_path / "stereo.wav"
    soundfile.write(str(path), _tone(1.2, 22050, 260, channels=2), 22050)  # resampled to 16 kHz, mixed down
    want = models["asr"].transcribe(path)["text"]
    raw = client.post("/transcribe", content=path.read_bytes(), headers={"Content-Type": "audio/wav"}).json()
    assert raw["model"] == "asr" and raw["text"] == want and raw["duration_s"] == pytest.approx(1.2, abs=0.01)
    form = client.post("/transcribe", files={"audio": ("a.wav", path.read_bytes(), "audio/wav")},
                       data={"model": "asr", "beam": "4"}).json()
    assert form["text"] == models["asr"].transcribe(path, beam=4)["text"]


def test_concurrent_tag_requests_are_micro_batched(client, server, models):
    before = _metrics(client)
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(32)]

    async def fire():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            return await asyncio.gather(*(c.post("/tag", json={"text": t}) for t in texts))

    responses = asyncio.run(fire())
    single = {t: models["tagger"].tag(t) for t in set(texts)}
    assert [r.status_code for r in responses] == [200] * 32
    assert [r.json() for r in responses] == [{"model": "tagger", **single[t]} for t in texts]
    after = _metrics(client)
    labels = {"model": "tagger", "endpoint": "tag"}
    batches = (_sample(after, "seqkit_batch_requests", "_count", **labels)
               - _sample(before, "seqkit_batch_requests", "_count", **labels))
    requests = (_sample(after, "seqkit_batch_requests", "_sum", **labels)
                - _sample(before, "seqkit_batch_requests", "_sum", **labels))
    assert requests == 32 and batches < 32, f"32 requests ran as {batches} model calls: none was batched"


def test_metrics_parse_and_count_requests(client):
    client.get("/health")
    families = _metrics(client)
    assert {"seqkit_requests", "seqkit_request_seconds", "seqkit_batch_requests", "seqkit_batch_texts",
            "seqkit_queue_depth", "seqkit_generated_tokens"} <= set(families)
    assert _sample(families, "seqkit_requests", "_total", endpoint="health", status="200") >= 1
    assert _sample(families, "seqkit_request_seconds", "_count", endpoint="tag") >= 1
    assert _sample(families, "seqkit_queue_depth", "", model="tagger", endpoint="tag") == 0
    assert _sample(families, "seqkit_generated_tokens", "_total", model="lm") >= 25


def test_micro_batcher_waits_for_no_one_by_default_and_gathers_while_busy():
    """max_wait=0 (the server's default): the first request runs alone; those that arrive while
    it runs become the next call, together."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from seqkit.microbatch import MicroBatcher

    calls: list[list[str]] = []
    release = threading.Event()

    def slow(items: list[str]) -> list[str]:
        calls.append(list(items))
        if len(calls) == 1:
            release.wait(5)  # the model is busy with the first request
        return [item.upper() for item in items]

    async def go():
        batcher = MicroBatcher(slow, executor)
        assert batcher.max_wait == 0  # the default: no timer, a lone request runs at once
        first = asyncio.ensure_future(batcher.submit(["a"]))
        for _ in range(5000):  # at most 5 s for the first call to start
            if calls:
                break
            await asyncio.sleep(0.001)
        assert calls == [["a"]], "the first request never reached the model"
        rest = [asyncio.ensure_future(batcher.submit([x])) for x in "bcd"]
        await asyncio.sleep(0.05)
        release.set()
        answers = [await first] + [await r for r in rest]
        await batcher.close()
        return answers

    with ThreadPoolExecutor(1) as executor:
        answers = asyncio.run(go())
    assert answers == [["A"], ["B"], ["C"], ["D"]]
    assert calls == [["a"], ["b", "c", "d"]]


def test_micro_batcher_slices_isolates_a_failing_request_and_bounds_its_queue():
    from concurrent.futures import ThreadPoolExecutor

    from seqkit.microbatch import MicroBatcher, QueueFull

    calls: list[list[str]] = []

    def shout(items: list[str]) -> list[str]:
        calls.append(list(items))
        if "boom" in items:
            raise ValueError("boom")
        return [item.upper() for item in items]

    async def go():
        batcher = MicroBatcher(shout, executor, max_batch=8, max_wait=0.05)
        answers = await asyncio.gather(batcher.submit(["a", "b"]), batcher.submit(["c"]), batcher.submit(["boom"]),
                                       batcher.submit(["d", "e", "f"]), return_exceptions=True)
        answers += await asyncio.gather(batcher.submit(["p"]), batcher.submit(["q", "r"]))
        big = await MicroBatcher(shout, executor, max_batch=2, max_wait=0).submit(["x", "y", "z"])
        bounded = MicroBatcher(shout, executor, max_batch=8, max_wait=0.05, max_queue=3)
        first = asyncio.ensure_future(bounded.submit(["g", "h"]))
        await asyncio.sleep(0)  # the first request now waits
        with pytest.raises(QueueFull):
            await bounded.submit(["i", "j"])
        await batcher.close()
        return answers, big, await first

    with ThreadPoolExecutor(1) as executor:
        answers, big, first = asyncio.run(go())
    assert answers[:2] == [["A", "B"], ["C"]] and answers[3] == ["D", "E", "F"]
    assert isinstance(answers[2], ValueError)
    # one call for the four requests; it raised, so each ran alone and only "boom" failed
    assert calls[:5] == [["a", "b", "c", "boom", "d", "e", "f"], ["a", "b"], ["c"], ["boom"], ["d", "e", "f"]]
    assert answers[4:] == [["P"], ["Q", "R"]] and calls[5] == ["p", "q", "r"]  # one call, a slice each
    assert big == ["X", "Y", "Z"] and calls[6] == ["x", "y", "z"]  # never split, even past max_batch
    assert first == ["G", "H"]


# -- bad requests -----------------------------------------------------------------------------


def _wav(seconds: float) -> bytes:
    import io

    buffer = io.BytesIO()
    soundfile.write(buffer, _tone(seconds, 8000, 300), 8000, format="WAV")
    return buffer.getvalue()


JSON = {"Content-Type": "application/json"}
BAD = [  # (id, method, path, request options, status, words the error must contain)
    ("bad-json", "POST", "/tag", {"content": b'{"text": ', "headers": JSON}, 400, "not valid JSON"),
    ("not-utf8", "POST", "/tag", {"content": b'{"text": "\xff\xfe"}', "headers": JSON}, 400, "UTF-8"),
    ("nan", "POST", "/generate", {"content": b'{"temperature": NaN}', "headers": JSON}, 400, "NaN is not JSON"),
    ("deep", "POST", "/tag", {"content": b"[" * 200_000, "headers": JSON}, 400, "nested too deeply"),
    ("empty-body", "POST", "/tag", {"content": b"", "headers": JSON}, 400, "empty body"),
    ("array-body", "POST", "/tag", {"json": ["Paris"]}, 422, "expected a JSON object"),
    ("text-not-str", "POST", "/tag", {"json": {"text": 3}}, 422, '"text": expected a string'),
    ("no-text", "POST", "/tag", {"json": {}}, 422, 'give either "text"'),
    ("text-and-texts", "POST", "/tag", {"json": {"text": "a", "texts": ["b"]}}, 422, "not both"),
    ("texts-empty", "POST", "/score", {"json": {"texts": []}}, 422, "empty list"),
    ("texts-not-list", "POST", "/tag", {"json": {"texts": "Paris"}}, 422, "expected a list"),
    ("texts-item", "POST", "/tag", {"json": {"texts": ["a", None]}}, 422, '"texts"[1]: expected a string'),
    ("unknown-field", "POST", "/tag", {"json": {"txt": "a"}}, 422, 'unknown field "txt"'),
    ("text-too-long", "POST", "/tag", {"json": {"text": "a " * 1001}}, 413, "at most 2000"),
    ("too-many-texts", "POST", "/tag", {"json": {"texts": ["a"] * 65}}, 413, "at most 64"),
    ("body-too-large", "POST", "/tag", {"json": {"text": "x" * 300_000}}, 413, "--max-body"),
    ("chunked-too-large", "POST", "/tag", {"content": iter([b'{"text": "' + b"x" * 200_000] * 2), "headers": JSON},
     413, "too large"),
    ("unknown-model", "POST", "/tag", {"json": {"model": "nope", "text": "a"}}, 404, "no model named 'nope'"),
    ("model-not-str", "POST", "/tag", {"json": {"model": 1, "text": "a"}}, 422, "expected a model name"),
    ("tagger-cannot-generate", "POST", "/generate", {"json": {"model": "tagger"}}, 422, "does not generate"),
    ("lm-cannot-embed", "POST", "/embed", {"json": {"model": "lm", "text": "a"}}, 422, "does not embed"),
    ("wrong-content-type", "POST", "/tag", {"content": b"Paris", "headers": {"Content-Type": "text/plain"}}, 415,
     "application/json"),
    ("negative-max-tokens", "POST", "/generate", {"json": {"max_tokens": -1}}, 422, '"max_tokens"'),
    ("huge-max-tokens", "POST", "/generate", {"json": {"max_tokens": 10**30}}, 422, "--max-tokens"),
    ("float-max-tokens", "POST", "/generate", {"json": {"max_tokens": 2.5}}, 422, "expected an integer"),
    ("negative-temperature", "POST", "/generate", {"json": {"temperature": -1}}, 422, '"temperature"'),
    ("temperature-str", "POST", "/generate", {"json": {"temperature": "hot"}}, 422, "expected a number"),
    ("top-p-zero", "POST", "/generate", {"json": {"top_p": 0}}, 422, '"top_p"'),
    ("negative-seed", "POST", "/generate", {"json": {"seed": -5}}, 422, '"seed"'),
    ("prompt-not-str", "POST", "/generate", {"json": {"prompt": ["a"]}}, 422, '"prompt"'),
    ("bad-audio", "POST", "/transcribe", {"content": b"RIFF....WAVEfmt garbage", "headers": {"Content-Type":
                                                                                                 "audio/wav"}},
     422, "cannot read the audio"),
    ("empty-audio", "POST", "/transcribe", {"content": b"", "headers": {"Content-Type": "audio/wav"}}, 422, "no audio"),
    ("audio-too-long", "POST", "/transcribe", {"content": _wav(6.0), "headers": {"Content-Type": "audio/wav"}}, 413,
     "--max-audio-seconds"),
    ("audio-content-type", "POST", "/transcribe", {"json": {"audio": "a.wav"}}, 415, "multipart form"),
    ("multipart-no-audio", "POST", "/transcribe", {"files": {"sound": ("a.wav", b"x", "audio/wav")}}, 422,
     'no file field "audio"'),
    ("bad-beam", "POST", "/transcribe?beam=-1", {"content": _wav(0.5), "headers": {"Content-Type": "audio/wav"}},
     422, '"beam"'),
    ("unknown-option", "POST", "/transcribe?lang=en", {"content": _wav(0.5), "headers": {"Content-Type":
                                                                                             "audio/wav"}},
     422, 'unknown option "lang"'),
    ("unknown-path", "POST", "/tags", {"json": {"text": "a"}}, 404, "no endpoint /tags"),
    ("wrong-method", "GET", "/tag", {}, 405, "use POST"),
    ("post-health", "POST", "/health", {"json": {}}, 405, "method not allowed"),
]


BAD_ROLLS = [  # (id, /generate request options, status, words): the piano-roll model
    ("frames-negative", {"json": {"model": "music", "frames": -1}}, 422, '"frames": -1 is out of range'),
    ("frames-zero", {"json": {"frames": 0}}, 422, '"frames"'),
    ("frames-over-max-frames", {"json": {"model": "music", "frames": 129}}, 422, "--max-frames"),
    ("frames-float", {"json": {"frames": 2.5}}, 422, "expected an integer"),
    ("seconds-over-max-frames", {"json": {"model": "music", "seconds": 1000}}, 422, "--max-frames"),
    ("seconds-zero", {"json": {"seconds": 0}}, 422, '"seconds"'),
    ("frames-and-seconds", {"json": {"frames": 8, "seconds": 2}}, 422, "not both"),
    ("temperature-nan", {"content": b'{"model": "music", "temperature": NaN}', "headers": JSON}, 400,
     "NaN is not JSON"),
    ("temperature-negative", {"json": {"model": "music", "temperature": -0.5}}, 422, '"temperature"'),
    ("temperature-huge", {"json": {"model": "music", "temperature": 1e9}}, 422, '"temperature"'),
    ("seed-negative", {"json": {"model": "music", "seed": -1}}, 422, '"seed"'),
    ("format-unknown", {"json": {"model": "music", "format": "gif"}}, 422, '"format"'),
    ("prompt-for-music", {"json": {"model": "music", "prompt": "a"}}, 422, "does not generate text"),
    ("frames-for-lm", {"json": {"model": "lm", "frames": 8}}, 422, "does not generate piano rolls"),
    ("text-and-roll-fields", {"json": {"prompt": "a", "frames": 8}}, 422, "give the fields of one"),
    ("no-model-no-kind", {"json": {"seed": 1}}, 422, 'several models can generate (lm, music); name one'),
]


def _refused(response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert words in error and "\n" not in error and "Traceback" not in response.text


@pytest.mark.parametrize("method, path, options, status, words", [case[1:] for case in BAD],
                         ids=[case[0] for case in BAD])
def test_bad_request_gets_a_clear_json_4xx(client, method, path, options, status, words):
    _refused(client.request(method, path, **options), status, words)


@needs_music
@pytest.mark.parametrize("options, status, words", [case[1:] for case in BAD_ROLLS], ids=[c[0] for c in BAD_ROLLS])
def test_bad_piano_roll_request_gets_a_clear_json_4xx(client, options, status, words):
    _refused(client.post("/generate", **options), status, words)


def test_what_generate_gives_is_found_by_trying_the_model():
    """A model that streams tokens generates text, even with a generate() of its own (a melody
    model is a language model); one whose generate(frames, seed=) gives a roll that saves a
    picture and MIDI draws piano rolls; anything else does not generate."""
    from torch import nn

    from seqkit.errors import SeqkitError
    from seqkit.serve import _answers, _generates

    class Roll:
        frame_seconds = 0.6

        def save_png(self, path):
            return path

        save_midi = save_png

    class Music(nn.Module):
        def generate(self, frames=None, *, seed=None):
            return Roll()

    class Melody(Music):
        def generate_tokens(self, prompt="", *, max_tokens=100):
            yield from ()

        def score(self, texts):
            return []

    class Split(Melody):
        def generate_tokens(self, prompt="", *, max_tokens=100):
            raise SeqkitError("a split language model cannot generate")

    class Prompted(nn.Module):
        def generate(self, prompt: str) -> str:
            return prompt

    class Arrays(nn.Module):
        def generate(self, frames=32, **options):
            return np.zeros((frames, 88))

    assert _generates(Music()) == ("piano-roll", 0.6) and _answers(Music(), "piano-roll") == ("generate",)
    assert _generates(Melody()) == ("text", None) and _answers(Melody(), "text") == ("generate", "score")
    assert [_generates(m()) for m in (Split, Prompted, Arrays)] == [(None, None)] * 3
    if seqkit_music is not None:  # the real melody model takes the text path first
        from seqkit_music.melody import MelodyModel

        from seqkit.models import LanguageModel

        assert callable(MelodyModel.generate_tokens) and issubclass(MelodyModel, LanguageModel)


def test_the_server_survives_the_bad_requests_without_a_traceback(client, server):
    assert client.get("/health").json()["status"] == "ok"
    assert client.post("/tag", json={"text": SENTENCE}).status_code == 200
    assert "Traceback" not in server.log.read_text()


def test_a_model_that_fails_is_a_json_500_logged_and_the_server_carries_on(runs, caplog):
    """In process (the app on httpx's ASGI transport), so that the model can be broken for real:
    its weights moved to the meta device, tagging raises inside the model."""
    from seqkit.serve import Limits, create_app, load_runs

    served = load_runs([str(runs["tagger"])])
    served["tagger"].model.to("meta")
    app = create_app(served, Limits())

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as c:
            return await c.post("/tag", json={"texts": [SENTENCE, "Paris"]}), await c.get("/health")

    try:
        failed, health = asyncio.run(go())
    finally:
        served["tagger"].executor.shutdown()
    assert failed.status_code == 500 and failed.headers["content-type"] == "application/json"
    assert "failed with RuntimeError" in failed.json()["error"] and "Traceback" not in failed.text
    assert health.status_code == 200
    logged = [r for r in caplog.records if r.name == "seqkit.serve" and r.exc_info]
    assert logged and "meta tensors" in str(logged[0].exc_info[1])


def test_rate_limit_is_per_client_and_max_batch_1_never_batches(servers):
    limited = servers["limited"]
    with httpx.Client(base_url=limited.url, timeout=60) as c:
        codes = [c.post("/tag", json={"text": "Paris"}).status_code for _ in range(6)]
        assert codes[:3] == [200] * 3 and 429 in codes[3:]
        refused = c.post("/tag", json={"text": "Paris"})
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert "too many requests from 127.0.0.1" in refused.json()["error"]
        assert c.get("/health").status_code == 200  # never limited
        # Another client (through a proxy on this host, which uvicorn trusts) has a bucket of its own.
        other = c.post("/tag", json={"text": "Paris"}, headers={"X-Forwarded-For": "203.0.113.9"})
        assert other.status_code == 200

    async def fire():
        async with httpx.AsyncClient(base_url=limited.url, timeout=60) as ac:
            return await asyncio.gather(*(ac.post("/tag", json={"text": SENTENCE},
                                                  headers={"X-Forwarded-For": f"198.51.100.{i}"}) for i in range(16)))

    assert [r.status_code for r in asyncio.run(fire())] == [200] * 16
    with httpx.Client(base_url=limited.url) as c:
        families = _metrics(c)
    labels = {"model": "tagger", "endpoint": "tag"}
    count = _sample(families, "seqkit_batch_requests", "_count", **labels)
    assert count >= 20 and _sample(families, "seqkit_batch_requests", "_bucket", le="1.0", **labels) == count


# -- the command line -------------------------------------------------------------------------


def test_bad_runs_fail_before_serving_with_one_line(runs, tmp_path):
    (tmp_path / "empty").mkdir()
    cases = [
        ([str(tmp_path / "missing")], "no such run folder"),
        ([str(tmp_path / "empty")], "not a seqkit run folder"),
        ([str(runs["tagger"]), f"tagger={runs['lm']}"], "two runs are named 'tagger'"),
        ([f"bad name={runs['lm']}"], "is not a model name"),
    ]
    for args, words in cases:
        result = CliRunner().invoke(cli, ["serve", *args, "--port", "0"])
        assert result.exit_code == 2, result.output
        assert words in result.output and len(result.output.strip().splitlines()) == 1, result.output


def test_a_busy_port_is_one_line(runs, server):
    port = server.url.rsplit(":", 1)[1]
    result = CliRunner().invoke(cli, ["serve", str(runs["lm"]), "--port", port])
    assert result.exit_code == 2 and f"--port {port}: cannot listen there" in result.output


def test_help_names_every_limit():
    result = CliRunner().invoke(cli, ["serve", "--help"])
    for flag in ("--max-batch", "--max-wait-ms", "--max-body", "--max-audio-body", "--max-chars", "--max-texts",
                 "--max-audio-seconds", "--max-tokens", "--max-frames", "--rate-limit", "--rate-burst"):
        assert flag in result.output


# -- the page, in headless Chromium -----------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_the_page_tags_transcribes_streams_and_draws_in_chromium(server, client, models, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
    wav = tmp_path / "try.wav"
    soundfile.write(str(wav), _tone(0.8, 16000, 240), 16000)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.goto(server.url + "/")
            tagger = page.locator('section[data-model="tagger"]')
            tagger.locator("textarea").fill(SENTENCE)
            tagger.locator("button.tag-button").click()
            tagger.locator(".tag-out[data-done]").wait_for()
            marks = tagger.locator("mark.ent")
            shown = [(marks.nth(i).get_attribute("data-type"), marks.nth(i).locator(".text").inner_text())
                     for i in range(marks.count())]
            answer = client.post("/tag", json={"text": SENTENCE}).json()
            assert shown == [(e["type"], e["text"]) for e in answer["entities"]] and len(shown) == 3
            assert tagger.locator(".tag-out").inner_text().replace("\n", "").startswith("Ada Brook")

            lm = page.locator('section[data-model="lm"]')
            lm.locator("input.prompt").fill("the dog")
            lm.locator("input.max-tokens").fill("30")
            lm.locator("input.temperature").fill("0.8")
            lm.locator("input.seed").fill("3")
            lm.locator("button.generate-button").click()
            lm.locator("pre.generated[data-done]").wait_for()
            assert lm.locator("pre.generated span.piece").count() == 30
            want = models["lm"].generate("the dog", max_tokens=30, temperature=0.8, seed=3)
            assert lm.locator("pre.generated").text_content() == "the dog" + want

            asr = page.locator('section[data-model="asr"]')
            asr.locator("input.audio-input").set_input_files(str(wav))
            with page.expect_response(lambda r: "/transcribe" in r.url) as reply:
                asr.locator("button.transcribe-button").click()
            assert reply.value.status == 200
            page.wait_for_function("document.querySelector('section[data-model=asr] .transcript')"
                                   ".textContent !== '\\u2026'")
            assert asr.locator(".transcript").text_content() == models["asr"].transcribe(wav)["text"]

            if seqkit_music is not None:  # a piano-roll model: its picture on the page, its MIDI a link
                music = page.locator('section[data-model="music"]')
                for field, value in (("frames", "64"), ("temperature", "1"), ("seed", "5")):
                    music.locator(f"input.{field}").fill(value)
                music.locator("button.roll-button").click()
                music.locator(".roll-out[data-done]").wait_for()
                picture = music.locator("img.roll")
                src = picture.get_attribute("src")
                assert src.startswith("data:image/png;base64,") and picture.evaluate("i => i.naturalWidth") > 300
                want = client.post("/generate", json={"model": "music", "frames": 64, "temperature": 1, "seed": 5,
                                                      "format": "png"})
                assert base64.b64decode(src.split(",", 1)[1]) == want.content and want.content.startswith(PNG)
                href = music.locator("a.midi-link").get_attribute("href")
                assert base64.b64decode(href.split(",", 1)[1]).startswith(b"MThd")
            assert not errors, errors  # no script errors, nothing the page's CSP blocked
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)
        finally:
            browser.close()


def test_ctrl_c_stops_the_server_cleanly(servers):
    limited = servers["limited"]
    assert limited.stop() == 0
    assert "seqkit serve: stopped" in limited.log.read_text() and "Traceback" not in limited.log.read_text()


def _gone(pid: int, timeout: float = 20) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_workers_share_the_port_and_stop_together(runs, tmp_path):
    """--workers 2: two processes answer the one port (fresh connections reach both), Ctrl-C stops
    both cleanly; a worker that dies takes the other down, and the parent says which."""
    server = Server([str(runs["tagger"]), "--workers", "2", "--rate-limit", "0"], tmp_path / "workers.log").wait()
    try:
        pids = set()
        for _ in range(40):
            with httpx.Client(base_url=server.url, timeout=60) as c:  # a new connection each time
                pids.add(c.get("/health").json()["pid"])
                assert c.post("/tag", json={"text": "Ada Brook lives in Paris"}).json()["tokens"][0] == "Ada"
        assert len(pids) == 2 and server.proc.pid not in pids
    finally:
        assert server.stop() == 0
    log = server.log.read_text()
    assert "seqkit serve: stopped" in log and "Traceback" not in log
    assert all(_gone(pid) for pid in pids)

    server = Server([str(runs["tagger"]), "--workers", "2"], tmp_path / "dies.log").wait()
    try:
        pid = httpx.get(f"{server.url}/health", timeout=60).json()["pid"]
        os.kill(pid, signal.SIGKILL)
        assert server.proc.wait(timeout=60) == 2  # as every seqkit error
    finally:
        server.stop()
    log = server.log.read_text()
    assert re.search(r"error: worker seqkit-serve-\d was killed by SIGKILL; stopped the other workers", log)
    assert "Traceback" not in log
