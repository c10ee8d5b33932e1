"""Word-list features for character taggers: which dictionary words start, continue or end at
each character, by the word's kind (person, place, organisation, any word).

Chinese NER gains from knowing where words are (the Lattice LSTM and SoftLexicon line of work);
this is the cheap form of that idea: no word embeddings, only, for each character and each kind
of word, four bits: some word of that kind Begins here, has it in the Middle, Ends here, or is
this Single character. The four bits make one id (0-15) per kind, embedded like a token.

The ``jieba`` word list (jieba's ``dict.txt``: 349,046 words with a frequency and a part-of-speech
tag; ``nr``/``nrt``/``nrfg`` person names, ``ns`` places, ``nt`` organisations) is the default;
any file of ``word [frequency] [tag]`` lines works (words without a tag count only as words).

A word list only says which words *could* be there. ``segment`` adds what a segmenter decides is
there (the "softword" feature of Zhang & Yang 2018): jieba's part-of-speech segmentation, whose HMM
also proposes person and place names that no dictionary lists. Each character gets one more id
column: its place in its segmented word (B/M/E/S) and that word's kind, 16 ids in all.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

from ..errors import SeqkitError

__all__ = ["KINDS", "SEGMENTERS", "Lexicon", "load_lexicon", "segment_features"]

KINDS = ("word", "person", "place", "organization")  # one id column each, in this order
_TAG_KIND = {"nr": 1, "nrt": 1, "nrfg": 1, "ns": 2, "nt": 3}
B, M, E, S = 1, 2, 4, 8
SEGMENTERS = ("jieba",)


class Lexicon:
    """Words (up to ``max_len`` characters) with the kinds they are (bit set over KINDS)."""

    def __init__(self, words: dict[str, int], name: str, max_len: int = 10) -> None:
        self.words = words
        self.name = name
        self.max_len = max_len

    def features(self, chars: Sequence[str]) -> list[list[int]]:
        """(L, len(KINDS)) ids: for each character and kind, the B/M/E/S bits of the words of that
        kind that cover it."""
        n = len(chars)
        out = [[0] * len(KINDS) for _ in range(n)]
        text = "".join(c if len(c) == 1 else "\0" for c in chars)  # a multi-character token matches nothing
        for i in range(n):
            for length in range(1, min(self.max_len, n - i) + 1):
                kinds = self.words.get(text[i:i + length])
                if not kinds:
                    continue
                for k in range(len(KINDS)):
                    if not kinds >> k & 1:
                        continue
                    if length == 1:
                        out[i][k] |= S
                        continue
                    out[i][k] |= B
                    out[i + length - 1][k] |= E
                    for j in range(i + 1, i + length - 1):
                        out[j][k] |= M
        return out


@functools.lru_cache(maxsize=4)
def load_lexicon(spec: str, max_len: int = 10) -> Lexicon:
    """``jieba`` (the word list inside the jieba package) or a file of ``word [freq] [tag]`` lines."""
    if spec == "jieba":
        try:
            import jieba
        except ImportError:
            raise SeqkitError("features.lexicon: jieba needs the jieba package (pip install jieba); or give a "
                              "word-list file") from None
        path = Path(jieba.__file__).with_name("dict.txt")
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise SeqkitError(f"features.lexicon: {spec}: no such word-list file (one `word [freq] [tag]` a line), "
                              "and not `jieba`")
    words: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if not fields or len(fields[0]) > max_len:
                continue
            kind = _TAG_KIND.get(fields[2]) if len(fields) > 2 else None
            words[fields[0]] = words.get(fields[0], 0) | 1 | (1 << kind if kind else 0)
    if not words:
        raise SeqkitError(f"features.lexicon: {path} holds no words")
    return Lexicon(words, spec, max_len)


def segment_features(chars: Sequence[str], segmenter: str = "jieba") -> list[int]:
    """One id per character (0-15): 4 * its place in the segmenter's word (0 begin, 1 middle, 2 end,
    3 single) + the word's kind (the index in KINDS: any word, person, place, organisation)."""
    if segmenter not in SEGMENTERS:
        raise SeqkitError(f"features.segmenter: {segmenter!r} is not a segmenter; known: {', '.join(SEGMENTERS)}")
    starts, text = [], ""
    for c in chars:  # tokens are characters, but NFKC can make a few of them longer ("㎡" -> "m2")
        starts.append(len(text))
        text += c
    per_char = [0] * len(text)
    at = 0
    for word, flag in _jieba_posseg()(text):
        kind = _TAG_KIND.get(flag, 0)
        n = len(word)
        for j in range(n):
            place = 3 if n == 1 else 0 if j == 0 else 2 if j == n - 1 else 1
            per_char[at + j] = 4 * place + kind
        at += n
    return [per_char[s] if s < len(per_char) else 0 for s in starts]  # an empty last token: 0


@functools.lru_cache(maxsize=1)
def _jieba_posseg():
    try:
        import logging

        import jieba
        import jieba.posseg
    except ImportError:
        raise SeqkitError("features.segmenter: jieba needs the jieba package (pip install jieba)") from None
    jieba.setLogLevel(logging.WARNING)  # not "Building prefix dict..." on every run
    return lambda text: [(p.word, p.flag) for p in jieba.posseg.cut(text, HMM=True)]
