"""``seqkit transcribe``: speech to text with a trained CTC model."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from ..errors import SeqkitError
from . import cli


class _SomeFailed(SeqkitError):
    """Some files could not be transcribed (each was reported); the rest were."""

    exit_code = 1


@cli.command("transcribe")
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--beam", default=0, show_default=True, help="Beam width of the CTC beam search (0: greedy).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file.")
@click.option("--batch-size", default=8, show_default=True, help="Files per forward pass.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda[:N], mps or auto.")
def transcribe_cmd(run: Path, files: tuple[Path, ...], beam: int, as_json: bool, batch_size: int,
                   device: str) -> None:
    """Transcribe audio FILES (WAV/FLAC/OGG, any sample rate) with the model in RUN.

    Prints one line per file: path, seconds of audio, seconds taken (features, network and
    decoding) and the text.  Unreadable files are reported on stderr and the rest carry on;
    the exit status is 1 if any file failed.
    """
    from .. import load

    if not files:
        raise SeqkitError("nothing to transcribe: give audio files after the run folder")
    model = load(run, device=device)
    if not hasattr(model, "transcribe"):
        raise SeqkitError(f"{run}: this model does not transcribe speech (it is a {type(model).__name__})")
    started = time.perf_counter()
    results = model.transcribe([str(f) for f in files], beam=beam, batch_size=batch_size, errors="skip")
    wall = time.perf_counter() - started
    failed = 0
    for result in results:
        if result["text"] is None:
            failed += 1
            click.echo(f"error: {result['error']}", err=True)
            if as_json:
                click.echo(json.dumps(result, ensure_ascii=False))
            continue
        if as_json:
            click.echo(json.dumps(result, ensure_ascii=False))
        else:
            click.echo(f"{result['audio']}\t{result['duration_s']:.2f}s\t{result['time_s']:.3f}s\t{result['text']}")
    audio = sum(r["duration_s"] for r in results)
    done = len(results) - failed
    rtf = f"; real-time factor {wall / audio:.3f}" if audio > 0 else ""
    print(f"{done} file(s), {audio:.1f} s of audio in {wall:.2f} s{rtf}"
          + (f"; {failed} could not be read" if failed else ""), file=sys.stderr)
    if failed:
        raise _SomeFailed(f"{failed} of {len(results)} file(s) could not be transcribed (see above)")
