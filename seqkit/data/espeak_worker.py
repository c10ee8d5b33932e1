"""Render a chunk of espeak-ng utterances in one process, through libespeak-ng.

Run as a script by :mod:`seqkit.data.speech` (``python espeak_worker.py``), never imported: it
loads only the standard library, so it starts in a few milliseconds (measured: the espeak-ng
program took ~29 ms an utterance, ~22 ms of it starting up; the library ~6 ms).  It reads JSON
lines on stdin, ``{"voice", "speed", "pitch", "gap", "said", "wav"}`` (``voice`` with its
``+variant``), writes each utterance as a
16-bit mono WAV file at espeak-ng's own rate, and answers one line per utterance: ``ok`` or
``error: ...``.  espeak-ng keeps state from one utterance to the next, so the caller gives every
fixed chunk of utterances a fresh process: a chunk's audio is then the same however the work
is spread or resumed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import sys
import wave

_SYNCHRONOUS = 2  # AUDIO_OUTPUT_SYNCHRONOUS: espeak_Synth returns when the audio is done
_RATE, _PITCH, _WORDGAP = 1, 3, 7  # espeak_PARAMETER
_POS_CHARACTER = 1
_FLAGS = 0x1000  # espeakCHARS_AUTO | espeakENDPAUSE (a pause at the end, like the espeak-ng program's
# output; the samples are not identical to the program's, which is why the cache format changed)
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def main() -> int:
    try:
        lib = ctypes.CDLL("libespeak-ng.so.1")  # Debian's; searching (find_library) runs ldconfig
    except OSError:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("espeak-ng") or "libespeak-ng.so")
        except OSError as exc:
            print(f"error: cannot load libespeak-ng ({exc}); install it with `sudo apt-get install espeak-ng`",
                  flush=True)
            return 1
    rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, None, 0)
    if rate <= 0:
        print(f"error: espeak_Initialize failed ({rate}); is espeak-ng-data installed?", flush=True)
        return 1
    pieces: list[bytes] = []

    def collect(samples, count, events):  # type: ignore[no-untyped-def]
        if count > 0 and samples:
            pieces.append(ctypes.string_at(samples, count * 2))
        return 0

    callback = _CALLBACK(collect)  # kept referenced for the life of the process
    lib.espeak_SetSynthCallback(callback)
    for line in sys.stdin:
        row = json.loads(line)
        if lib.espeak_SetVoiceByName(row["voice"].encode()) != 0:
            print(f"error: espeak-ng has no voice {row['voice']!r}", flush=True)
            continue
        for parameter, key in ((_RATE, "speed"), (_PITCH, "pitch"), (_WORDGAP, "gap")):
            lib.espeak_SetParameter(parameter, int(row[key]), 0)
        text = row["said"].encode()
        pieces.clear()
        status = lib.espeak_Synth(text, len(text) + 1, 0, _POS_CHARACTER, 0, _FLAGS, None, None)
        lib.espeak_Synchronize()
        if status != 0:
            print(f"error: espeak_Synth failed ({status})", flush=True)
            continue
        with wave.open(row["wav"], "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(rate)
            out.writeframes(b"".join(pieces))
        print("ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
