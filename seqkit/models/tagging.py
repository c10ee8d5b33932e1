"""The tagging model: token features -> shared encoder -> tagging head, plus its data plumbing.

Shape legend: N batch, L length, E embedding features.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from ..data.conll import read_conll
from ..errors import SeqkitError
from ..export_runtime import tokens_with_offsets
from ..features.text import PAD_ID, TextVocab, TokenEmbedder
from ..heads.scheme import detect_scheme
from ..heads.tagger import IGNORE
from ..metrics.spans import span_scores, spans
from ..recipe import Recipe
from ..tasks import (
    ModelOutput,
    Prepared,
    Task,
    build_encoder,
    check_batch_size,
    epoch_order,
    head_class,
    length_groups,
    load_splits,
    persist_vocab,
    read_vocab,
    seed_everything,
    text_inputs,
)

__all__ = ["TagBatch", "TaggingModel", "TaggingTask", "make_batches", "normalise_tags"]


@dataclass
class TagBatch:
    tokens: Tensor  # (N, L) ids
    bigrams: Optional[Tensor]  # (N, L) ids
    lengths: Tensor  # (N,)
    tags: Optional[Tensor]  # (N, L) tag ids, IGNORE at padding
    index: list[int]  # position of each row in the caller's list
    lexicon: Optional[Tensor] = None  # (N, L, W) word-feature ids (features.lexicon: 4 columns, segmenter: 1)

    def to(self, device: torch.device) -> "TagBatch":
        move = (lambda t: None if t is None else t.to(device, non_blocking=True))
        return TagBatch(move(self.tokens), move(self.bigrams), self.lengths, move(self.tags), self.index,
                        move(self.lexicon))

    @property
    def num_items(self) -> int:
        return int(self.lengths.sum())

    def __len__(self) -> int:
        return len(self.index)


def _pad(rows: Sequence[Sequence[int]], value: int) -> Tensor:
    if not rows:
        return torch.zeros(0, 0, dtype=torch.long)
    return pad_sequence([torch.tensor(r, dtype=torch.long) for r in rows], batch_first=True, padding_value=value)


def collate(ids: Sequence[list[int]], bigrams: Optional[Sequence[list[int]]],
            tags: Optional[Sequence[list[int]]], index: list[int],
            lexicon: Optional[Sequence[list[list[int]]]] = None) -> TagBatch:
    lex = None
    if lexicon is not None:
        lex = pad_sequence([torch.tensor(r, dtype=torch.long).view(len(r), -1) for r in lexicon], batch_first=True)
    return TagBatch(
        _pad(ids, PAD_ID),
        None if bigrams is None else _pad(bigrams, PAD_ID),
        torch.tensor([len(r) for r in ids], dtype=torch.long),
        None if tags is None else _pad(tags, IGNORE),
        index,
        lex,
    )


def make_batches(
    ids: Sequence[list[int]],
    bigrams: Optional[Sequence[list[int]]],
    tags: Optional[Sequence[list[int]]],
    batch_size: int,
    *,
    lexicon: Optional[Sequence[list[list[int]]]] = None,
    seed: Optional[int] = None,
    shortest_first: bool = False,
) -> list[TagBatch]:
    """Batches of similar length (little padding); shuffled deterministically when ``seed`` is
    set, unless ``shortest_first`` (SortaGrad)."""
    groups = length_groups([len(r) for r in ids], batch_size, seed, shortest_first=shortest_first)
    pick = lambda seq, g: None if seq is None else [seq[i] for i in g]  # noqa: E731
    return [collate(pick(ids, g), pick(bigrams, g), pick(tags, g), g, pick(lexicon, g)) for g in groups]


def normalise_tags(tags: Sequence[str], scheme: str, source: Optional[str] = None) -> list[str]:
    """Re-encode a tag sequence through its spans (read in ``source``, default ``scheme``) so it
    obeys ``scheme``: repairs ill-formed sequences (the CRF needs valid gold) and converts BIO to
    BIOES or back without changing a span."""
    out = ["O"] * len(tags)
    for kind, start, end in spans(tags, source or scheme):
        if scheme == "BIOES" and end - start == 1:
            out[start] = f"S-{kind}"
            continue
        out[start] = f"B-{kind}"
        for i in range(start + 1, end):
            out[i] = f"I-{kind}"
        if scheme == "BIOES":
            out[end - 1] = f"E-{kind}"
    return out


def in_scheme(sentences: Sequence[tuple[list[str], list[str]]], scheme: str) -> list[tuple[list[str], list[str]]]:
    """Held-out sentences with their gold tags in ``scheme``: converted span by span when the
    file is written in the other scheme (a BIO file scored by a BIOES model), else as written."""
    written = detect_scheme(t for _, tags in sentences for t in tags)
    if written == scheme:
        return list(sentences)
    return [(words, normalise_tags(tags, scheme, written)) for words, tags in sentences]


class TaggingModel(nn.Module):
    """Token features, the shared encoder and a tagging head, ready to train or to tag text."""

    monitor, mode = "f1", "max"

    def __init__(self, recipe: Recipe, vocab: TextVocab, head_cls: Any, scheme: str) -> None:
        super().__init__()
        self.recipe = recipe
        self.vocab = vocab
        self.scheme = scheme
        self.embed = TokenEmbedder(vocab, recipe.features)
        self.encoder = build_encoder(recipe, self.embed.output_size)
        self.head = head_cls(self.encoder.output_size, vocab.labels, crf=recipe.head.crf, scheme=scheme,
                             dropout=recipe.head.dropout)

    def features(self, batch: TagBatch) -> Tensor:
        x = self.embed(batch.tokens, batch.bigrams, batch.lexicon)  # (N, L, E)
        out, _ = self.encoder(x, batch.lengths)  # (N, L, D*H)
        return out

    def forward(self, batch: TagBatch, state: None = None) -> ModelOutput:
        """The mean training loss of a batch (per token; CRF negative log-likelihood or cross-entropy)."""
        return ModelOutput(self.head.loss(self.features(batch), batch.lengths.to(batch.tokens.device), batch.tags))

    def embedding_tokens(self) -> tuple[nn.Embedding, list[str]]:
        """The token embedding and its vocabulary (for ``encoder.init_from``)."""
        vocab = self.vocab.tokens.get_vocab()
        tokens = [""] * len(vocab)
        for token, i in vocab.items():
            tokens[i] = token
        return self.embed.tokens, tokens

    def export_spec(self) -> Any:
        """What ``seqkit export`` writes: ids (N, L, 1 or 2: tokens, bigrams) and lengths (N,) in,
        emissions (N, L, C) out; the runtime tokenises and decodes (CRF Viterbi or argmax)."""
        from ..export import ExportGraph, ExportSpec, random_lengths

        vocab = self.vocab
        if self.embed.lexicon is not None:
            options = (("lexicon", vocab.lexicon), ("segmenter", vocab.segmenter))
            used = ", ".join(f"features.{k}: {v}" for k, v in options if v)
            raise SeqkitError(f"export: this tagger reads word features ({used}), which the exported runtime "
                              "does not compute yet; export a tagger without them")
        columns = 2 if self.embed.bigrams is not None else 1

        class Graph(ExportGraph):
            def forward(self, ids: Tensor, lengths: Tensor) -> tuple[Tensor]:
                x = self.model.embed(ids[..., 0], ids[..., 1] if columns == 2 else None)
                out, _ = self.encoder(x, lengths)
                return (self.model.head.emissions(out),)

        sizes = [self.embed.tokens.num_embeddings] + ([self.embed.bigrams.num_embeddings] if columns == 2 else [])

        def sample(gen: torch.Generator) -> dict[str, Tensor]:
            n, longest = int(torch.randint(2, 9, (1,), generator=gen)), int(torch.randint(2, 40, (1,), generator=gen))
            ids = torch.stack([torch.randint(2, size, (n, longest), generator=gen) for size in sizes], -1)
            return {"ids": ids, "lengths": random_lengths(gen, n, longest)}

        tokens = [""] * vocab.tokens.get_vocab_size()
        for token, i in vocab.tokens.get_vocab().items():
            tokens[i] = token
        info: dict[str, Any] = {"labels": vocab.labels, "scheme": self.scheme, "tokenize": vocab.tokenize,
                                "lowercase": vocab.lowercase, "tokens": tokens, "bigrams": None, "crf": None}
        if vocab.bigrams is not None:
            info["bigrams"] = [""] * vocab.bigrams.get_vocab_size()
            for token, i in vocab.bigrams.get_vocab().items():
                info["bigrams"][i] = token
        crf = self.head.crf
        if crf is not None:
            info["crf"] = {k: getattr(crf, k).tolist() for k in
                           ("transitions", "start", "end", "allowed", "allowed_start", "allowed_end")}
        gen = torch.Generator().manual_seed(1)
        example = sample(gen)
        return ExportSpec(build=functools.partial(Graph, self), inputs=example, outputs=["emissions"],
                          dynamic={"ids": {0: "batch", 1: "length"}, "lengths": {0: "batch"}},
                          sample=sample, files={"tagger.json": info})

    def predict(self, batch: TagBatch) -> list[list[str]]:
        paths = self.head.decode(self.features(batch), batch.lengths.to(batch.tokens.device))
        labels = self.vocab.labels
        return [[labels[i] for i in path] for path in paths]

    def evaluate(self, batches: Iterable[TagBatch]) -> dict[str, Any]:
        gold, pred = [], []
        for batch in batches:
            assert batch.tags is not None
            pred += self.predict(batch)
            for row, n in zip(batch.tags.tolist(), batch.lengths.tolist()):
                gold.append([self.vocab.labels[i] for i in row[:n]])
        return span_scores(gold, pred, self.scheme)

    def encode_corpus(self, sentences: Sequence[tuple[list[str], list[str]]], where: str = ""):
        """Token ids, bigram ids (or None), tag ids and word-list ids (or None) of sentences."""
        ids, big = self.vocab.encode([words for words, _ in sentences])
        tags = [self.vocab.encode_tags(t, where) for _, t in sentences]
        return ids, big, tags, self.vocab.lexicon_ids([words for words, _ in sentences])

    @torch.inference_mode()
    def tag(self, texts: Union[str, Sequence[Union[str, Sequence[str]]]], *,
            batch_size: int = 64) -> Union[dict[str, Any], list[dict[str, Any]]]:
        """Tag raw strings (tokenised as in training) or pre-tokenised lists.

        Returns one dict per input: ``tokens``, ``tags`` and ``entities`` (``type``, ``text``,
        ``start``, ``end``); offsets count characters of a raw string (end exclusive) and
        tokens of a pre-tokenised input. One string in, one dict out.
        """
        texts, single = text_inputs(texts, "tag", tokens=True)
        check_batch_size(batch_size)
        results = self._tag(texts, batch_size)
        return results[0] if single else results

    def _tag(self, texts: list[Union[str, Sequence[str]]], batch_size: int) -> list[dict[str, Any]]:
        self.eval()
        device = next(self.parameters()).device
        token_lists, offsets = [], []
        for text in texts:
            toks, offs = self._tokens(text)
            token_lists.append(toks)
            offsets.append(offs)
        tags: list[list[str]] = [[] for _ in texts]
        live = [i for i, toks in enumerate(token_lists) if toks]  # empty input: nothing to run
        ids, big = self.vocab.encode([token_lists[i] for i in live])
        lex = self.vocab.lexicon_ids([token_lists[i] for i in live])
        for batch in make_batches(ids, big, None, batch_size, lexicon=lex):
            for row, path in zip(batch.index, self.predict(batch.to(device))):
                tags[live[row]] = path
        results = []
        for text, toks, offs, tag_seq in zip(texts, token_lists, offsets, tags):
            entities = []
            for kind, start, end in spans(tag_seq, self.scheme):
                a, b = offs[start][0], offs[end - 1][1]
                surface = text[a:b] if isinstance(text, str) else " ".join(toks[start:end])
                entities.append({"type": kind, "text": surface, "start": a, "end": b})
            results.append({"tokens": toks, "tags": tag_seq, "entities": entities})
        return results

    def _tokens(self, text: Union[str, Sequence[str]]) -> tuple[list[str], list[tuple[int, int]]]:
        """Tokens of a raw string (as in training) with their character offsets, or of a
        pre-tokenised input with their positions."""
        if isinstance(text, str):
            return tokens_with_offsets(text, self.vocab.tokenize)
        toks = [str(t) for t in text]
        return toks, [(i, i + 1) for i in range(len(toks))]

    @torch.inference_mode()
    def embed_texts(self, texts: Union[str, Sequence[Union[str, Sequence[str]]]], *,
                    batch_size: int = 64) -> Union[dict[str, Any], list[dict[str, Any]]]:
        """The encoder's output at each token, tokenised as :meth:`tag` does: ``tokens`` and
        ``vectors`` (T, D*H) per input (T may be 0). One string in, one dict out."""
        texts, single = text_inputs(texts, "embed", tokens=True)
        check_batch_size(batch_size)
        self.eval()
        device = next(self.parameters()).device
        token_lists = [self._tokens(text)[0] for text in texts]
        width = self.encoder.output_size
        results = [{"tokens": toks, "vectors": torch.zeros(0, width)} for toks in token_lists]
        live = [i for i, toks in enumerate(token_lists) if toks]
        ids, big = self.vocab.encode([token_lists[i] for i in live])
        lex = self.vocab.lexicon_ids([token_lists[i] for i in live])
        for batch in make_batches(ids, big, None, batch_size, lexicon=lex):
            out = self.features(batch.to(device))  # (N, L, D*H)
            for row, (k, n) in enumerate(zip(batch.index, batch.lengths.tolist())):
                results[live[k]]["vectors"] = out[row, :n].float().cpu()
        return results[0] if single else results


# -- the task ---------------------------------------------------------------------------------


def _scheme(recipe: Recipe, tags: Iterable[str]) -> str:
    return recipe.head.scheme if recipe.head.scheme != "auto" else detect_scheme(tags)


def _chunk(sentences, max_length: int):
    """Split training sentences longer than ``max_length`` at span boundaries."""
    out = []
    for words, tags in sentences:
        start = 0
        while len(words) - start > max_length:
            cut = start + max_length
            while cut > start + 1 and tags[cut][:2] in ("I-", "E-"):
                cut -= 1  # never cut inside an entity
            out.append((words[start:cut], tags[start:cut]))
            start = cut
        out.append((words[start:], tags[start:]))
    return out


def _prepare(recipe: Recipe, run_dir: Optional[Path], *, log=print) -> Prepared:
    """Data, vocabulary (built once, kept in ``run_dir/vocab``), model and batches of a recipe."""
    splits = load_splits(recipe)
    train = splits["train"].sentences
    if not train:
        raise SeqkitError(f"{splits['train'].path}: no training sentences")
    scheme = _scheme(recipe, (t for _, tags in train for t in tags))
    written = detect_scheme(t for _, tags in train for t in tags)  # the scheme the file uses
    fixed = [(w, normalise_tags(t, scheme, written)) for w, t in train]
    repaired = sum(1 for _, tags in train if normalise_tags(tags, written) != list(tags))
    if recipe.train.max_length > 0:
        fixed = _chunk(fixed, recipe.train.max_length)
    vocab = persist_vocab(run_dir, "vocab.json", lambda: TextVocab.build(fixed, recipe.features, recipe.data.tokenize),
                          TextVocab.load, TextVocab.save)
    log(
        f"data: {len(fixed)} train / {len(splits['valid'].sentences)} valid / "
        f"{len(splits['test'].sentences)} test sentences; scheme {scheme}"
        + (f" (converted from the files' {written})" if written != scheme else "") + "; "
        f"{vocab.tokens.get_vocab_size()} tokens"
        + (f", {vocab.bigrams.get_vocab_size()} bigrams" if vocab.bigrams is not None else "")
        + f"; {len(vocab.labels)} tags; {repaired} ill-formed tag sequences repaired; "
        f"{splits['train'].skipped_empty} empty sentences skipped"
    )
    seed_everything(recipe.train.seed)
    model = TaggingModel(recipe, vocab, head_class(recipe), scheme)
    cfg = recipe.train
    ids, big, tags, lex = model.encode_corpus(fixed, f"{splits['train'].path}: ")
    held = {}
    for name in ("valid", "test"):
        corpus = splits[name]
        sentences = in_scheme(corpus.sentences, scheme)
        if sentences:
            h_ids, h_big, h_tags, h_lex = model.encode_corpus(sentences, f"{corpus.path}: ")
            held[name] = make_batches(h_ids, h_big, h_tags, cfg.eval_batch_size, lexicon=h_lex)
        else:
            held[name] = None
    return Prepared(
        model,
        lambda epoch: make_batches(ids, big, tags, cfg.batch_size, lexicon=lex, **epoch_order(cfg, epoch)),
        held["valid"],
        held["test"],
    )


class TaggingTask(Task):
    """Sequence tagging (named entities): span precision, recall and F1 per entity type.

    A loaded model offers ``tag(texts)``; ``seqkit tag RUN TEXT...`` prints entities."""

    default_head = "tagger"
    default_dataset = "conll"
    default_features = "tokens"
    monitor, mode = "f1", "max"
    summary = ("f1", "precision", "recall")

    def check(self, recipe: Recipe) -> None:
        if recipe.features.kind != "tokens":
            raise SeqkitError(f"{recipe.source}: features.kind: tagging reads text; use tokens "
                              f"(got {recipe.features.kind!r})")

    def prepare(self, recipe: Recipe, run_dir: Optional[Path], *, log=print) -> Prepared:
        return _prepare(recipe, run_dir, log=log)

    def build_model(self, recipe: Recipe, run_dir: Path) -> TaggingModel:
        vocab = read_vocab(run_dir / "vocab", TextVocab.load, marker="vocab.json")
        return TaggingModel(recipe, vocab, head_class(recipe), _scheme(recipe, vocab.labels))

    def evaluate_data(self, model: nn.Module, data: Optional[Path], *, batch_size: int = 128) -> dict[str, Any]:
        assert isinstance(model, TaggingModel)
        return _evaluate_data(model, data, batch_size=batch_size)

    def format_metrics(self, metrics: dict[str, Any]) -> str:
        if "per_type" not in metrics:
            return super().format_metrics(metrics)
        lines = [f"{'type':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
        for kind, row in sorted(metrics["per_type"].items()):
            lines.append(f"{kind:<10}{row['precision']:>10.2f}{row['recall']:>10.2f}{row['f1']:>10.2f}"
                         f"{row['support']:>9}")
        lines.append(f"{'micro':<10}{metrics['precision']:>10.2f}{metrics['recall']:>10.2f}{metrics['f1']:>10.2f}"
                     f"{metrics.get('gold_spans', ''):>9}")
        return "\n".join(lines)

    def format_notes(self, metrics: dict[str, Any]) -> list[str]:
        return [f"{metrics['sentences']} sentences from {metrics['data']}"] if "sentences" in metrics else []


def _evaluate_data(model: TaggingModel, data: Optional[Path], *, batch_size: int = 128) -> dict[str, Any]:
    """Span metrics on a CoNLL file, or on the recipe's test split; gold tags unseen in training count."""
    corpus = read_conll(data) if data is not None else load_splits(model.recipe, ["test"])["test"]
    if not corpus.sentences:
        raise SeqkitError(f"{corpus.path}: no sentences to evaluate")
    results = model.tag([words for words, _ in corpus.sentences], batch_size=batch_size)
    gold = [tags for _, tags in in_scheme(corpus.sentences, model.scheme)]
    metrics = span_scores(gold, [r["tags"] for r in results], model.scheme)
    return {**metrics, "sentences": len(corpus.sentences), "data": str(corpus.path)}
