"""Transcription speed: real-time factor of a trained CTC model on CPU.

    python bench/transcribe.py runs/asr                    # 1 thread, batch 1, greedy: the README's RTF
    python bench/transcribe.py runs/asr --beam 64            # with the run's decoder LM (decoder.json), if any
    python bench/transcribe.py runs/asr --beam 64 --no-lm    # the lexicon beam search alone
    python bench/transcribe.py runs/asr --beam 16 --threads 2
    python bench/transcribe.py runs/asr --data my_manifest.jsonl --json out.json

Audio is read before timing starts; each utterance is then timed alone (batch 1) from the
waveform to the text: log-mel features, conv front-end, encoder, CTC head and decoding.  The
real-time factor is processing seconds per second of audio (lower is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import seqkit
from seqkit.data.speech import read_manifest
from seqkit.features.audio import read_audio
from seqkit.models.speech import load_splits


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python bench/transcribe.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder of a transcription recipe")
    parser.add_argument("--data", type=Path, help="JSONL manifest to time (default: the run's test split)")
    parser.add_argument("--limit", type=int, default=100, help="utterances to time (default 100)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--beam", type=int, default=0, help="beam width (default 0: greedy)")
    parser.add_argument("--no-lm", action="store_true", help="beam search without the run's decoder LM")
    parser.add_argument("--warmup", type=int, default=3, help="untimed utterances first")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    asr = seqkit.load(args.run)
    corpus = read_manifest(args.data) if args.data else load_splits(asr.recipe)["test"]
    utts = corpus.utterances[: args.limit]
    waves = [read_audio(u.audio, asr.sample_rate) for u in utts]
    use_lm = False if args.no_lm else None
    lm = asr.decoder_lm.describe() if args.beam and asr.decoder_lm is not None and not args.no_lm else None
    for wave in waves[: args.warmup]:
        asr.transcribe(wave, sample_rate=asr.sample_rate, beam=args.beam, lm=use_lm)
    times, seconds = [], []
    for wave in waves:
        started = time.perf_counter()
        asr.transcribe(wave, sample_rate=asr.sample_rate, beam=args.beam, lm=use_lm)
        times.append(time.perf_counter() - started)
        seconds.append(wave.numel() / asr.sample_rate)
    result = {
        "run": str(args.run), "data": corpus.path, "utterances": len(waves), "audio_s": round(sum(seconds), 1),
        "threads": torch.get_num_threads(), "batch": 1, "beam": args.beam, "lm": lm,
        "rtf": round(sum(times) / sum(seconds), 4),
        "rtf_median": round(statistics.median(t / s for t, s in zip(times, seconds, strict=True)), 4),
        "ms_per_utterance_median": round(1000 * statistics.median(times), 1),
        "torch": torch.__version__,
    }
    print(f"{result['utterances']} utterances, {result['audio_s']} s of audio, {result['threads']} thread(s), "
          f"batch 1, {'beam ' + str(args.beam) if args.beam else 'greedy'}{' + ' + lm if lm else ''}: "
          f"real-time factor {result['rtf']} "
          f"(median per utterance {result['rtf_median']}, {result['ms_per_utterance_median']} ms)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
