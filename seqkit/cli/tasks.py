"""The built-in tasks' own commands: ``seqkit tag``, ``seqkit transcribe`` and ``seqkit generate``.

They are added to the command line by ``seqkit/default_plugins/tasks.py`` through
``register_commands``, as a plugin's commands are.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from ..errors import SeqkitError
from ..fsio import write_text_atomic
from ..tasks import not_a

__all__ = ["generate_cmd", "tag_cmd", "transcribe_cmd", "tune_decoder_cmd"]


@click.command("tag")
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.argument("texts", nargs=-1)
@click.option("--input", "input_file", type=click.File("r", encoding="utf-8"),
              help="Read one text per line from a file ('-' for stdin).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per text.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
def tag_cmd(run: Path, texts: tuple[str, ...], input_file, as_json: bool, batch_size: int) -> None:
    """Tag TEXTS with the model in RUN: entities with types and character offsets."""
    from .. import load

    lines = list(texts)
    if input_file is not None:
        try:
            lines += [line.rstrip("\n") for line in input_file]
        except UnicodeDecodeError as exc:
            raise SeqkitError(f"{input_file.name}: not UTF-8 text (byte {exc.start}); convert it to UTF-8") from None
    if not lines:
        raise SeqkitError("nothing to tag: give texts as arguments or --input FILE")
    model = load(run)
    if not hasattr(model, "tag"):
        raise not_a(model, "tag text", run)
    for text, result in zip(lines, model.tag(lines, batch_size=batch_size)):
        if as_json:
            click.echo(json.dumps({"text": text, **result}, ensure_ascii=False))
            continue
        click.echo(text)
        for ent in result["entities"]:
            click.echo(f"  {ent['type']}\t{ent['start']}-{ent['end']}\t{ent['text']}")


class _SomeFailed(SeqkitError):
    """Some files could not be transcribed (each was reported); the rest were."""

    exit_code = 1


@click.command("transcribe")
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--beam", default=0, show_default=True, type=click.IntRange(min=0),
              help="Beam width of the CTC beam search (0: greedy).")
@click.option("--lm/--no-lm", "use_lm", default=None,
              help="With --beam: search with the run's decoder language model (decoder.json; the default when "
                   "the run has one) or without it.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
              help="Files per forward pass.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda[:N], mps or auto.")
@click.option("--stream", is_flag=True,
              help="Read raw 16-bit little-endian mono PCM at the model's rate from stdin as it arrives "
                   "(e.g. from `arecord -f S16_LE -r 16000 -c 1`) and print the partial transcript each time it "
                   "changes; needs a forward-only model (recipes/ctc/synth-speech-streaming.yaml).")
@click.option("--chunk-ms", default=100, show_default=True, type=click.IntRange(min=1),
              help="With --stream: milliseconds of audio read per step.")
def transcribe_cmd(run: Path, files: tuple[Path, ...], beam: int, use_lm, as_json: bool, batch_size: int,
                   device: str, stream: bool, chunk_ms: int) -> None:
    """Transcribe audio FILES (WAV/FLAC/OGG, any sample rate) with the model in RUN.

    Prints one line per file: path, seconds of audio, seconds taken (features, network and
    decoding) and the text.  Unreadable files are reported on stderr and the rest carry on;
    the exit status is 1 if any file failed.  With --stream, reads audio from stdin instead
    and prints each new partial transcript on a line of its own (the last line is the final
    transcript); a summary of the time from each chunk's arrival to its text goes to stderr.
    """
    from .. import load

    if stream:
        if files:
            raise SeqkitError("--stream reads audio from stdin; give no files with it")
        _transcribe_stream(load(run, device=device), run, chunk_ms, as_json)
        return
    if not files:
        raise SeqkitError("nothing to transcribe: give audio files after the run folder")
    model = load(run, device=device)
    if not hasattr(model, "transcribe"):
        raise not_a(model, "transcribe speech", run)
    started = time.perf_counter()
    results = model.transcribe([str(f) for f in files], beam=beam, lm=use_lm, batch_size=batch_size, errors="skip")
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


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected numbers separated by commas, got {text!r}") from None


@click.command("tune-decoder")
@click.argument("run", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--lm", "lm_spec", required=True,
              help="kenlm (a word n-gram of the recipe's dataset text, every valid/test/extra sentence removed, "
                   "built into RUN/lm), a KenLM file (.arpa/.bin), or a seqkit language-model run folder "
                   "(word units).")
@click.option("--order", default=4, show_default=True, type=click.IntRange(2, 6), help="n-gram order of --lm kenlm.")
@click.option("--beam", default=0, type=click.IntRange(min=0),
              help="Beam width of the search with the LM, kept with the run [default: the recipe's "
                   "head.lm_beam_size, else head.beam_size].")
@click.option("--tune-beam", default=0, type=click.IntRange(min=0),
              help="Beam width while tuning; narrower is faster [default: --beam].")
@click.option("--weights", default="0.25,0.5,1,1.5,2,3", show_default=True, help="lm_weight values to try.")
@click.option("--word-scores", default="-2,-1,0,1,2", show_default=True, help="word_score values to try.")
@click.option("--sil-scores", default="0", show_default=True,
              help="sil_score values to try (added per word separator; negative: fewer, longer words).")
@click.option("--rescore", is_flag=True, help="LSTM LM: rescore the n-best list of a search without LM.")
@click.option("--nbest", default=16, show_default=True, type=click.IntRange(min=1), help="With --rescore.")
def tune_decoder_cmd(run: Path, lm_spec: str, order: int, beam: int, tune_beam: int, weights: str,
                     word_scores: str, sil_scores: str, rescore: bool, nbest: int) -> None:
    """Grid-search the language-model weight and word score of RUN's CTC beam search on its
    validation split, and keep the best in RUN/decoder.json (then `seqkit transcribe --beam` and
    `seqkit evaluate` use the language model)."""
    from .. import load
    from ..models.speech import tune_decoder

    model = load(run)
    if not hasattr(model, "transcribe"):
        raise not_a(model, "transcribe speech", run)
    rows = tune_decoder(model, run, lm_spec, order=order, beam=beam, tune_beam=tune_beam, weights=_floats(weights),
                        word_scores=_floats(word_scores), sil_scores=_floats(sil_scores), rescore=rescore,
                        nbest=nbest, log=lambda m: click.echo(m, err=True))
    best = model.decoder_lm
    click.echo(f"{'lm_weight':>9} {'word_score':>10} {'sil_score':>9} {'CER':>7} {'WER':>7} {'s':>6}")
    for row in rows:
        point = (row["lm_weight"], row["word_score"], row["sil_score"])
        mark = " *" if point == (best.weight, best.word_score, best.sil_score) else ""
        click.echo(f"{row['lm_weight']:>9g} {row['word_score']:>10g} {row['sil_score']:>9g} {row['cer']:>7.2f} "
                   f"{row['wer']:>7.2f} {row['seconds']:>6.1f}{mark}")
    click.echo(f"kept in {run / 'decoder.json'}: {best.describe()}, beam {model.lm_beam}")


def _transcribe_stream(model, run: Path, chunk_ms: int, as_json: bool) -> None:
    import numpy as np

    if not hasattr(model, "stream"):
        raise not_a(model, "transcribe speech", run)
    session = model.stream()
    step = session.sample_rate * chunk_ms // 1000 * 2  # bytes of s16le per chunk
    source = sys.stdin.buffer
    latencies, text, seconds, carry = [], "", 0.0, b""
    while True:
        data = source.read(step)
        last = not data
        data, carry = carry + data, b""
        if len(data) % 2:  # an odd byte waits for its pair
            data, carry = data[:-1], data[-1:]
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        seconds += samples.size / session.sample_rate
        started = time.perf_counter()
        new = session.feed(samples, last=last)
        latencies.append(time.perf_counter() - started)
        if new != text or last:
            text = new
            line = json.dumps({"time_s": round(seconds, 3), "text": text, "final": last}, ensure_ascii=False) \
                if as_json else text
            click.echo(line)
            sys.stdout.flush()
        if last:
            break
    ms = sorted(1000 * t for t in latencies)
    print(f"{seconds:.1f} s of audio in {len(ms)} chunks of {chunk_ms} ms; from a chunk's arrival to its text: "
          f"median {ms[len(ms) // 2]:.1f} ms, p99 {ms[min(len(ms) - 1, int(len(ms) * 0.99))]:.1f} ms, "
          f"max {ms[-1]:.1f} ms", file=sys.stderr)


@click.command("generate")
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.option("--prompt", default="", help="Text to continue (default: start a new line).")
@click.option("--prime", type=click.Path(dir_okay=False, path_type=Path),
              help="Music to continue: a MIDI file (music models).")
@click.option("--max-tokens", "--frames", "--events", "steps", type=click.IntRange(min=0), default=None,
              help="Steps to sample: tokens, melody events or piano-roll frames (default: 100 tokens; "
                   "music: the model's default).")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Music to sample, in seconds at the model's tempo (instead of --frames).")
@click.option("--temperature", default=1.0, show_default=True, help="Softmax temperature (0: always the most likely).")
@click.option("--top-k", default=0, show_default=True, help="Sample among the k most likely tokens (0: all).")
@click.option("--top-p", default=1.0, show_default=True, help="Nucleus: the smallest set of probability p (1: all).")
@click.option("--seed", type=int, default=None, help="Same seed, same output (default: a random seed).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the sample to a file (text; a .mid file for music models).")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), help="Music: a piano-roll picture.")
@click.option("--wav", type=click.Path(dir_okay=False, path_type=Path),
              help="Music: an audio preview (needs fluidsynth and a General MIDI soundfont).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda[:N], mps or auto.")
def generate_cmd(run: Path, prompt: str, prime: Path | None, steps: int | None, seconds: float | None,
                 temperature: float, top_k: int, top_p: float, seed: int | None, out: Path | None,
                 png: Path | None, wav: Path | None, device: str) -> None:
    """Sample from the generating model in RUN: stream text from a language model to stdout,
    or write music (MIDI, a piano-roll picture, a WAV preview) from a music model.

    The rate (tokens/s or frames/s) goes to stderr at the end. A model that writes files (music)
    implements ``generate_files``; see docs/plugins.md."""
    from .. import load

    model = load(run, device=device)
    if hasattr(model, "generate_files"):
        started = time.perf_counter()
        lines = model.generate_files(out=out, png=png, wav=wav, steps=steps, seconds=seconds, prime=prime,
                                     prompt=prompt, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        for line in lines:
            click.echo(line, err=True)
        print(f"generated in {time.perf_counter() - started:.2f} s", file=sys.stderr)
        return
    if not hasattr(model, "generate_tokens"):
        raise not_a(model, "generate", run)
    for flag, value in (("--prime", prime), ("--seconds", seconds), ("--png", png), ("--wav", wav)):
        if value is not None:
            raise SeqkitError(f"{flag}: {run} is a text model (task {model.recipe.task.name}); {flag} is for "
                              "music models")
    tokens = model.generate_tokens(prompt, max_tokens=100 if steps is None else steps, temperature=temperature,
                                   top_k=top_k, top_p=top_p, seed=seed)
    started = time.perf_counter()
    pieces = [prompt]
    click.echo(prompt, nl=False)
    count = 0
    for text in tokens:  # errors (a bi-LM, bad settings) surface at the first token
        click.echo(text, nl=False)
        sys.stdout.flush()
        pieces.append(text)
        count += 1
    click.echo("")
    wall = time.perf_counter() - started
    if out is not None:
        write_text_atomic(out, "".join(pieces) + "\n")
        print(f"text: {out}", file=sys.stderr)
    print(f"{count} tokens in {wall:.2f} s ({count / max(wall, 1e-9):.0f} tokens/s)", file=sys.stderr)
