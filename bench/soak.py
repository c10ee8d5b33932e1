"""Crash-consistency soak: SIGKILL a tiny training run at random moments many times, resuming
after each, and check that the finished run equals an uninterrupted one bit for bit.

    python bench/soak.py --kills 200 --seed 1

Prints the number of kills survived and whether the result was identical (exit 1 if not).
The test suite runs the same loop with 20 kills (tests/test_crash.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.test_crash import command, kill_and_resume, outcome  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    env = {**os.environ, "SEQKIT_LOAD_PLUGINS": "0"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        started = time.monotonic()
        subprocess.run(command(tmp_path / "whole"), check=True, capture_output=True, env=env)
        took = time.monotonic() - started
        began = time.monotonic()
        try:
            counts = kill_and_resume(tmp_path, kills=args.kills, seed=args.seed, window=(0.35 * took, 0.95 * took),
                                     reference=outcome(tmp_path / "whole"))
        except AssertionError as exc:
            print(f"FAILED: {exc}")
            sys.exit(1)
    print(f"uninterrupted run {took:.1f} s; {counts['kills']} SIGKILLs over {counts['starts']} starts in "
          f"{counts['runs']} runs, {time.monotonic() - began:.0f} s; every finished run identical to the "
          "uninterrupted one")


if __name__ == "__main__":
    main()
