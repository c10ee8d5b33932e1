"""Token units and vocabularies for language models: characters, words or BPE pieces.

Every line of text becomes its tokens followed by ``<eos>`` (the model predicts the end of a
line); tokens the vocabulary lacks become ``<unk>``. Ids: ``<unk>`` = 0, ``<eos>`` = 1, then
the units by falling training count (ties: first seen first).

Units:
- ``words``: whitespace-separated words. A literal ``<unk>`` in the text (the Penn Treebank has
  them) is the ``<unk>`` token, and a literal ``<eos>`` is ``<eos>``, so PTB's 10k vocabulary
  stays 10k.
- ``chars``: every character, the space between words included as a token of its own. The
  vocabulary stores the space itself; :meth:`LMVocab.tokens` shows it as ``▁`` (U+2581, as
  SentencePiece does) and other whitespace as ``<U+0009>``, so that a token string never
  contains whitespace (n-gram tools split on it).
- ``bpe``: byte-pair-encoding pieces learnt with HF ``tokenizers`` on the training lines
  (Metaspace pre-tokenizer: a piece that starts a word begins with ``▁``).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterable, Literal, Optional, Sequence, Union

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ..errors import DataError, SeqkitError

__all__ = ["EOS", "LMVocab", "UNK", "Units"]

UNK, EOS = "<unk>", "<eos>"
UNK_ID, EOS_ID = 0, 1
SPACE = "\u2581"  # how a space shows in token strings (SentencePiece's convention)
Units = Literal["chars", "words", "bpe"]
UNITS = ("chars", "words", "bpe")
_FORMAT = 1
_META, _BPE = "lm_vocab.json", "tokenizer.json"


def _show(char: str) -> str:
    """A character as a token string without whitespace."""
    if char == " ":
        return SPACE
    return f"<U+{ord(char):04X}>" if char.isspace() else char


def _train_bpe(lines: Sequence[str], size: int, min_count: int) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=UNK))
    # prepend "first": only the start of a line gets a ▁, so "x<unk>y" decodes back unchanged
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=size, min_frequency=min_count, special_tokens=[UNK, EOS],
                                  show_progress=False)
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


def _pieces(tok: Tokenizer) -> list[str]:
    """The token strings of a tokenizer by id."""
    vocab = tok.get_vocab(with_added_tokens=True)
    pieces = [""] * len(vocab)
    for piece, i in vocab.items():
        pieces[i] = piece
    return pieces


class LMVocab:
    """The token units and vocabulary of a language model.

    Args:
        units: ``chars``, ``words`` or ``bpe`` (see the module notes).
        tokens: the token strings by id (``<unk>``, ``<eos>`` first).
        tokenizer: the trained BPE tokenizer (``bpe`` only).
        settings: how it was built (min_count, max_vocab, bpe_size), kept when saved.

    Examples:
        >>> vocab = LMVocab.build(["the cat sat", "the dog"], "words")
        >>> vocab.encode_stream(["the cat", "a dog"]).tolist()   # "a" is unknown
        [2, 3, 1, 0, 5, 1]
        >>> vocab.decode([2, 3, 1])
        'the cat\\n'
    """

    def __init__(self, units: str, tokens: list[str], *, tokenizer: Optional[Tokenizer] = None,
                 settings: Optional[dict] = None) -> None:
        if units not in UNITS:
            raise SeqkitError(f"LM vocabulary: units must be one of {', '.join(UNITS)}, got {units!r}")
        if tokens[:2] != [UNK, EOS]:
            raise SeqkitError(f"LM vocabulary: the first tokens must be {UNK} and {EOS}, got {tokens[:2]}")
        self.units = units
        self.itos = tokens
        self.stoi = {t: i for i, t in enumerate(tokens)}
        self.tokenizer = tokenizer
        self.settings = dict(settings or {})
        self.unk_id, self.eos_id = UNK_ID, EOS_ID
        self._char_table: Optional[torch.Tensor] = None  # code point -> id, built on first use

    # -- building -------------------------------------------------------------------------------

    @classmethod
    def build(cls, lines: Iterable[str], units: str, *, min_count: int = 1, max_vocab: int = 0,
              bpe_size: int = 8000) -> "LMVocab":
        """Learn a vocabulary from the training lines.

        ``min_count``: rarer words/characters become ``<unk>`` (for bpe: the least count of a
        pair to merge). ``max_vocab``: at most this many tokens, ``<unk>`` and ``<eos>``
        included, keeping the most frequent (0: no cap; words and chars). ``bpe_size``: the
        size of the BPE vocabulary, specials included (smaller if the text runs out of merges).
        """
        if units not in UNITS:
            raise SeqkitError(f"LM vocabulary: units must be one of {', '.join(UNITS)}, got {units!r}")
        if min_count < 1:
            raise SeqkitError(f"LM vocabulary: min_count must be at least 1, got {min_count}")
        if max_vocab != 0 and max_vocab < 3:
            raise SeqkitError(f"LM vocabulary: max_vocab must be 0 (no cap) or at least 3, got {max_vocab}")
        lines = list(lines)
        settings = {"min_count": min_count, "max_vocab": max_vocab}
        if units == "bpe":
            if bpe_size < 3:
                raise SeqkitError(f"LM vocabulary: bpe_size must be at least 3, got {bpe_size}")
            tok = _train_bpe(lines, bpe_size, min_count)
            return cls(units, _pieces(tok), tokenizer=tok, settings={**settings, "bpe_size": bpe_size})
        counts: Counter[str] = Counter()
        for line in lines:
            counts.update(line.split() if units == "words" else line)
        if units == "words":
            counts.pop(UNK, None)
            counts.pop(EOS, None)
        kept = [t for t, c in counts.most_common() if c >= min_count]  # stable: ties keep first-seen order
        if max_vocab:
            kept = kept[: max_vocab - 2]
        return cls(units, [UNK, EOS, *kept], settings=settings)

    def __len__(self) -> int:
        return len(self.itos)

    def __repr__(self) -> str:
        return f"LMVocab(units={self.units!r}, size={len(self)})"

    # -- text to ids ----------------------------------------------------------------------------

    def encode(self, line: str) -> list[int]:
        """The ids of one line, without ``<eos>``."""
        if self.units == "bpe":
            assert self.tokenizer is not None
            return self.tokenizer.encode(line).ids
        get = self.stoi.get
        if self.units == "words":
            return [get(w, UNK_ID) for w in line.split()]
        return [get(c, UNK_ID) for c in line]

    def encode_stream(self, lines: Sequence[str]) -> torch.Tensor:
        """All lines as one LongTensor (L,), each followed by ``<eos>``: the stream a language
        model reads."""
        lines = list(lines)
        if self.units == "chars":
            return self._encode_chars(lines)
        ids: list[int] = []
        if self.units == "bpe":
            assert self.tokenizer is not None
            for encoding in self.tokenizer.encode_batch_fast(lines):
                ids.extend(encoding.ids)
                ids.append(EOS_ID)
        else:
            get = self.stoi.get
            for line in lines:
                ids.extend([get(w, UNK_ID) for w in line.split()])
                ids.append(EOS_ID)
        return torch.tensor(ids, dtype=torch.long)

    def _encode_chars(self, lines: list[str]) -> torch.Tensor:
        # vectorised: the code points of the whole stream (UTF-32) index a dense table from code
        # point to id; 5M characters take ~0.1 s where a Python loop takes seconds
        if self._char_table is None:
            chars = [(ord(t), i) for i, t in enumerate(self.itos) if i > EOS_ID and len(t) == 1]
            top = max((c for c, _ in chars), default=0) + 1  # code points >= top are unknown
            table = torch.full((top + 1,), UNK_ID, dtype=torch.long)
            table[[c for c, _ in chars]] = torch.tensor([i for _, i in chars], dtype=torch.long)
            self._char_table = table
        table = self._char_table
        text = "".join(line + "\n" for line in lines)  # each newline's id is overwritten by <eos>
        if not text:
            return torch.zeros(0, dtype=torch.long)
        points = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32)  # (L,)
        ids = table[points.clamp(max=len(table) - 1).long()]
        ends = torch.tensor([len(line) + 1 for line in lines], dtype=torch.long).cumsum(0) - 1
        ids[ends] = EOS_ID  # not where a "\n" is: a line may hold one (it is a character then)
        return ids

    # -- ids to text ----------------------------------------------------------------------------

    def decode(self, ids: Union[Sequence[int], torch.Tensor]) -> str:
        """The text of ids: words joined by spaces, characters joined, BPE pieces through the
        tokenizer's decoder; every ``<eos>`` is a newline and ``<unk>`` reads ``<unk>``."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        lines: list[list[int]] = [[]]
        for i in ids:
            if i == EOS_ID:
                lines.append([])
            else:
                lines[-1].append(i)
        if self.units == "bpe":
            assert self.tokenizer is not None
            texts = self.tokenizer.decode_batch(lines, skip_special_tokens=False)
        else:
            sep = " " if self.units == "words" else ""
            texts = [sep.join(self.itos[i] for i in line) for line in lines]
        return "\n".join(texts)

    def tokens(self, line: str) -> list[str]:
        """The unit strings of a line as the model sees them (no ``<eos>``), unknown ones as
        ``<unk>``: the input of an n-gram baseline (one token per id, none with whitespace)."""
        if self.units == "bpe":
            assert self.tokenizer is not None
            return self.tokenizer.encode(line).tokens
        if self.units == "words":
            return [w if w in self.stoi else UNK for w in line.split()]
        return [_show(c) if c in self.stoi else UNK for c in line]

    def counts(self, lines: Iterable[str]) -> dict[str, int]:
        """What a total NLL over ``lines`` is divided by.

        ``tokens``: the ids of :meth:`encode_stream` (one ``<eos>`` per line included): per-token
        perplexity. ``words``: whitespace words plus one per line for the end of the line (the
        PTB convention, where it equals the token count): per-word perplexity. ``chars``:
        characters plus one newline per line: bits per character.
        """
        lines = list(lines)
        return {"tokens": int(self.encode_stream(lines).numel()),
                "words": sum(len(line.split()) + 1 for line in lines),
                "chars": sum(len(line) + 1 for line in lines)}

    # -- persistence ----------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """Write ``lm_vocab.json`` (and ``tokenizer.json`` for bpe) into ``folder``, e.g. a run's
        ``vocab/``; each file atomically, ``lm_vocab.json`` last, so its presence means complete."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.tokenizer is not None:
            (folder / _BPE).write_text(self.tokenizer.to_str(), encoding="utf-8")
        meta = {"format": _FORMAT, "units": self.units, "settings": self.settings,
                "tokens": self.itos if self.tokenizer is None else None}
        (folder / _META).write_text(json.dumps(meta, ensure_ascii=False, indent=0), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "LMVocab":
        folder = Path(folder)
        try:
            meta = json.loads((folder / _META).read_text(encoding="utf-8"))
            if meta.get("format") != _FORMAT:
                raise DataError(f"{folder / _META}: vocabulary format {meta.get('format')!r}, this seqkit "
                                f"reads format {_FORMAT}")
            if meta["units"] == "bpe":
                tok = Tokenizer.from_file(str(folder / _BPE))
                return cls("bpe", _pieces(tok), tokenizer=tok, settings=meta["settings"])
            return cls(meta["units"], list(meta["tokens"]), settings=meta["settings"])
        except (OSError, ValueError, KeyError, TypeError, SeqkitError) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(f"{folder}: not a readable LM vocabulary ({exc})") from None
