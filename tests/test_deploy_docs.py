"""docs/deploying.md stays true: every code block on it is run, in order, in a folder whose
``runs/`` holds tiny runs of the tasks it names (``msra`` a tagger, ``kjv`` a language model,
``asr`` a speech model, ``asr-stream`` a forward-only one). Python blocks run in a fresh
interpreter each; bash blocks line by line, ``seqkit serve`` started in the background on a free
port (the page's 8000 is rewritten to it; a later one replaces it) and stopped at the end. ``pip install`` lines are not
run: installing is what CI did before the tests."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import soundfile

from tests.test_serve import _tone, _train_lm, _train_speech, _train_tagger

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "deploying.md"

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="the page's examples use curl")


def _blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"^```(\w+)\n(.*?)^```", text, flags=re.M | re.S)


def _commands(block: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("deploying")
    runs = tmp / "runs"
    runs.mkdir()
    _train_tagger(tmp).rename(runs / "msra")
    _train_lm(tmp).rename(runs / "kjv")
    _train_speech(tmp).rename(runs / "asr")
    _train_speech(tmp, "asr-stream", ("encoder.bidirectional=false", "encoder.directions=forward",
                                      "features.normalize=global")).rename(runs / "asr-stream")
    soundfile.write(str(tmp / "a.wav"), _tone(1.0, 16000, 220), 16000)
    soundfile.write(str(tmp / "a.flac"), _tone(0.8, 22050, 300), 22050)
    return tmp


def test_every_block_of_the_deploying_page_runs(folder):
    blocks = _blocks(PAGE.read_text(encoding="utf-8"))
    assert len(blocks) >= 10
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = None
    try:
        for k, (lang, code) in enumerate(blocks):
            where = f"docs/deploying.md block {k + 1} ({lang})"
            if lang == "python":
                done = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True,
                                      text=True, timeout=300)
                assert done.returncode == 0, f"{where}:\n{code}\n{done.stderr[-2000:]}"
                continue
            assert lang == "bash", where
            for line in _commands(code):
                if line.startswith("pip install"):
                    continue
                line = line.replace("8000", port)
                if line.startswith("seqkit serve"):
                    if server is not None:  # a later `seqkit serve` on the page replaces the running one
                        server.send_signal(signal.SIGINT)
                        assert server.wait(timeout=30) == 0, f"{where}: the previous seqkit serve did not stop"
                    server = subprocess.Popen(["bash", "-c", f"exec {line} --rate-limit 0"], cwd=folder, env=env,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    _wait(server, port, where)
                    continue
                done = subprocess.run(["bash", "-c", f"set -o pipefail; {line}"], cwd=folder, env=env,
                                      capture_output=True, text=True, timeout=300)
                assert done.returncode == 0, f"{where}: {line}\n{done.stderr[-2000:]}"
                assert '"error"' not in done.stdout, f"{where}: {line}\n{done.stdout[:2000]}"
        assert server is not None, "the page never starts seqkit serve"
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)


def _wait(server: subprocess.Popen, port: str, where: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"{where}: seqkit serve exited: {server.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"{where}: seqkit serve did not answer /health within 60 s")
