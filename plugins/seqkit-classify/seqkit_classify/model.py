"""The classification task: words -> embeddings -> the shared encoder -> a pooling head -> classes.

Heads pool the encoder's outputs over time: ``mean``, ``max``, ``last`` (the last real step of a
forward encoder, with the first step of the backward half when there is one) or ``attention``:
additive (Bahdanau-style) attention, ``score_t = v . tanh(W h_t)``, softmax over the real steps,
with ``heads`` independent attention distributions concatenated (structured self-attention,
Lin et al. 2017). Single-label classification uses a softmax; ``multi_label`` one sigmoid a class.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import seqkit
from seqkit.tasks import (
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

from .data import TASK, Examples
from .export_runtime import char_ngrams, pad_ngrams

PAD, UNK = "<pad>", "<unk>"
_TOKEN = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def tokenize(text: str, lowercase: bool = True) -> list[str]:
    """Words and punctuation marks (MR is already tokenised; this also splits raw text)."""
    return _TOKEN.findall(text.lower() if lowercase else text)


# -- vocabulary --------------------------------------------------------------------------------


@dataclass
class Vocab:
    tokens: list[str]  # index -> token; 0 is <pad>, 1 is <unk>
    labels: list[str]
    lowercase: bool = True
    subwords: Optional[list[int]] = None  # [buckets, low, high]: hashed character n-grams of each word

    def __post_init__(self) -> None:
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.label_index = {label: i for i, label in enumerate(self.labels)}

    def grams(self, toks: list[str]) -> Optional[list[tuple[int, ...]]]:
        """Each token's hashed character n-gram ids (None without subwords); unseen words get them too."""
        return [char_ngrams(t, *self.subwords) for t in toks] if self.subwords else None

    @classmethod
    def build(cls, data: Examples, min_count: int, max_vocab: int, lowercase: bool,
              subwords: Optional[list[int]] = None) -> "Vocab":
        counts = Counter(t for text in data.texts for t in tokenize(text, lowercase))
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_vocab:
            words = words[:max_vocab]
        labels = sorted({lab for item in data.labels for lab in (item if isinstance(item, list) else [item])})
        return cls([PAD, UNK, *words], labels, lowercase, subwords)

    def encode(self, text: str) -> tuple[list[str], list[int]]:
        toks = tokenize(text, self.lowercase) or [UNK]
        return toks, [self.index.get(t, 1) for t in toks]

    def save(self, folder: Path) -> None:
        (folder / "classify_vocab.json").write_text(json.dumps(
            {"tokens": self.tokens, "labels": self.labels, "lowercase": self.lowercase, "subwords": self.subwords},
            ensure_ascii=False),
            encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "Vocab":
        raw = json.loads((folder / "classify_vocab.json").read_text(encoding="utf-8"))
        return cls(raw["tokens"], raw["labels"], raw["lowercase"], raw.get("subwords"))


# -- batches -----------------------------------------------------------------------------------


@dataclass
class Batch:
    ids: Tensor  # (N, L)
    lengths: Tensor  # (N,)
    targets: Optional[Tensor]  # (N,) class indices, or (N, C) 0/1 when multi-label
    grams: Optional[Tensor] = None  # (N, L, K) character n-gram ids of each token, 0-padded (task.subwords)

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.ids.to(device), self.lengths, None if self.targets is None else self.targets.to(device),
                     None if self.grams is None else self.grams.to(device))

    @property
    def num_items(self) -> int:
        return int(self.lengths.sum())

    def __len__(self) -> int:
        return len(self.lengths)


def make_batch(ids: list[list[int]], targets: Optional[list], grams: Optional[list] = None) -> Batch:
    lengths = torch.tensor([len(x) for x in ids])
    padded = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)
    for row, seq in enumerate(ids):
        padded[row, : len(seq)] = torch.tensor(seq)
    return Batch(padded, lengths, None if targets is None else torch.tensor(targets),
                 None if grams is None else torch.from_numpy(pad_ngrams(grams, padded.size(1))))


# -- heads -------------------------------------------------------------------------------------


@dataclass
class PoolingOptions:
    pool: Literal["attention", "mean", "max", "last"] = "attention"
    heads: int = seqkit.bounded(1, ge=1)  # attention distributions, concatenated (structured self-attention)
    attention_size: int = seqkit.bounded(64, ge=1)  # width of the tanh layer that scores each step
    dropout: float = seqkit.bounded(0.0, ge=0, lt=1)  # on the pooled vector
    multi_label: bool = False  # one sigmoid per class instead of a softmax over them


class PoolingClassifier(nn.Module):
    """Pool the encoder outputs ``(N, L, H)`` over the real steps, then score the classes."""

    Config = PoolingOptions
    task = TASK

    def __init__(self, input_size: int, classes: int, *, pool: str = "attention", heads: int = 1,
                 attention_size: int = 64, dropout: float = 0.0, directions: int = 1) -> None:
        super().__init__()
        self.pool, self.heads, self.directions = pool, heads, directions
        if pool == "attention":
            self.score = nn.Sequential(nn.Linear(input_size, attention_size), nn.Tanh(),
                                       nn.Linear(attention_size, heads, bias=False))
        width = input_size * (heads if pool == "attention" else 1)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(width, classes)

    def forward(self, h: Tensor, lengths: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """Logits ``(N, C)`` and the attention weights ``(N, heads, L)`` (None for other pools)."""
        mask = torch.arange(h.size(1), device=h.device) < lengths.to(h.device).unsqueeze(1)  # (N, L)
        weights = None
        if self.pool == "attention":
            scores = self.score(h).masked_fill(~mask.unsqueeze(-1), float("-inf"))  # (N, L, heads)
            weights = scores.softmax(dim=1).transpose(1, 2)  # (N, heads, L)
            pooled = (weights @ h).flatten(1)  # (N, heads * H)
        elif self.pool == "mean":
            pooled = (h * mask.unsqueeze(-1)).sum(1) / lengths.to(h.device).unsqueeze(1)
        elif self.pool == "max":
            pooled = h.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
        else:  # last: the forward half's last real step (and the backward half's first step)
            last = h[torch.arange(h.size(0), device=h.device), lengths.to(h.device) - 1]
            if self.directions == 2:
                half = h.size(-1) // 2
                last = torch.cat([last[:, :half], h[:, 0, half:]], dim=-1)
            pooled = last
        return self.out(self.drop(pooled)), weights


# -- the model ---------------------------------------------------------------------------------


class Classifier(nn.Module):
    """Word embeddings, the shared encoder and a pooling head; ``classify(texts)`` for apps."""

    def __init__(self, recipe: Any, vocab: Vocab) -> None:
        super().__init__()
        self.recipe, self.vocab = recipe, vocab
        opts = recipe.task
        self.multi_label = recipe.head.multi_label
        self.embed = nn.Embedding(len(vocab.tokens), opts.embedding_dim, padding_idx=0)
        # fastText-style subwords: a word's vector is the mean of its own row and its n-grams' rows
        self.grams = nn.Embedding(vocab.subwords[0] + 1, opts.embedding_dim, padding_idx=0) if vocab.subwords else None
        self.embed_drop = nn.Dropout(opts.embedding_dropout)
        self.word_dropout = opts.word_dropout
        self.encoder = build_encoder(recipe, opts.embedding_dim)
        h = recipe.head
        self.head = head_class(recipe)(self.encoder.output_size, len(vocab.labels), pool=h.pool, heads=h.heads,
                                       attention_size=h.attention_size, dropout=h.dropout,
                                       directions=2 if self.encoder.bidirectional else 1)

    def embedding_tokens(self) -> tuple[nn.Embedding, list[str]]:
        """For ``encoder.init_from``: the token embedding and its tokens (a seqkit LM's rows are copied)."""
        return self.embed, self.vocab.tokens

    def embed_tokens(self, ids: Tensor, grams: Optional[Tensor]) -> Tensor:
        """(N, L, E): each token's row, averaged with its character n-grams' rows when there are any."""
        vectors = self.embed(ids)
        if self.grams is None:
            return vectors
        count = 1 + (grams > 0).sum(-1, keepdim=True)  # (N, L, 1)
        return (vectors + self.grams(grams).sum(-2)) / count

    def logits(self, batch: Batch) -> tuple[Tensor, Optional[Tensor]]:
        ids = batch.ids
        if self.training and self.word_dropout > 0:  # words (not padding) become <unk> (id 1) at random;
            # their n-grams stay, as an unseen test word's do
            ids = ids.masked_fill((torch.rand(ids.shape, device=ids.device) < self.word_dropout) & (ids > 1), 1)
        out, _ = self.encoder(self.embed_drop(self.embed_tokens(ids, batch.grams)), batch.lengths)
        return self.head(out, batch.lengths)

    def forward(self, batch: Batch, state=None) -> ModelOutput:
        logits, _ = self.logits(batch)
        if self.multi_label:
            loss = F.binary_cross_entropy_with_logits(logits, batch.targets.float())
        else:
            loss = F.cross_entropy(logits, batch.targets)
        return ModelOutput(loss, count=len(batch))  # a mean per text

    @torch.inference_mode()
    def evaluate(self, batches) -> dict[str, float]:
        was = self.training
        self.eval()
        right = total = 0
        loss = 0.0
        for batch in batches:
            batch = batch.to(next(self.parameters()).device)
            logits, _ = self.logits(batch)
            if self.multi_label:
                loss += float(F.binary_cross_entropy_with_logits(logits, batch.targets.float(), reduction="sum"))
                right += int(((logits > 0) == batch.targets.bool()).all(1).sum())
            else:
                loss += float(F.cross_entropy(logits, batch.targets, reduction="sum"))
                right += int((logits.argmax(-1) == batch.targets).sum())
            total += len(batch)
        self.train(was)
        return {"accuracy": 100.0 * right / max(total, 1), "loss": loss / max(total, 1)}

    @torch.inference_mode()
    def predict(self, texts: list[str], *, batch_size: int = 64):
        """For each batch of ``texts``: the texts, their tokens, the class probabilities ``(n, C)``
        and the attention weights averaged over heads ``(n, L)`` (None for other pools)."""
        check_batch_size(batch_size)
        self.eval()
        device = next(self.parameters()).device
        for start in range(0, len(texts), batch_size):
            chunk = texts[start: start + batch_size]
            encoded = [self.vocab.encode(t) for t in chunk]
            grams = [self.vocab.grams(t) for t, _ in encoded] if self.vocab.subwords else None
            logits, weights = self.logits(make_batch([ids for _, ids in encoded], None, grams).to(device))
            probs = logits.sigmoid() if self.multi_label else logits.softmax(-1)
            yield chunk, [toks for toks, _ in encoded], probs.cpu(), None if weights is None else weights.mean(1).cpu()

    def probabilities(self, texts, *, batch_size: int = 64) -> Tensor:
        """The class probabilities ``(N, C)`` of ``texts``, unrounded (columns: ``vocab.labels``)."""
        items, _ = text_inputs(texts, "probabilities")
        parts = [probs for _, _, probs, _ in self.predict(items, batch_size=batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0, len(self.vocab.labels))

    def decide(self, probs: Tensor) -> list[Any]:
        """Each row's label: the most probable class, or (multi-label) every class above 0.5."""
        if self.multi_label:
            return [[lab for lab, v in zip(self.vocab.labels, row) if v > 0.5] for row in probs.tolist()]
        return [self.vocab.labels[i] for i in probs.argmax(-1).tolist()]

    def classify(self, texts, *, batch_size: int = 64, members: Sequence["Classifier"] = ()):
        """The class of each text with the probability of every class, the tokens and (attention
        heads) their attention weights averaged over heads. One string in, one dict out.
        ``members``: other classifiers with the same classes (a seed ensemble); the probabilities are
        then the mean of this model's and theirs, the tokens and attention this model's."""
        items, single = text_inputs(texts, "classify")
        if members:
            from .ensemble import check_members

            check_members([self, *members], ["this model", *(f"member {i + 1}" for i in range(len(members)))])
        results = []
        for chunk, tokens, probs, weights in self.predict(items, batch_size=batch_size):
            if members:
                probs = torch.stack([probs, *(m.probabilities(chunk, batch_size=batch_size) for m in members)]).mean(0)
            for row, (text, toks, label) in enumerate(zip(chunk, tokens, self.decide(probs))):
                p = {lab: round(float(probs[row, i]), 4) for i, lab in enumerate(self.vocab.labels)}
                result = {"text": text, "label": label, "probs": p, "tokens": toks}
                if weights is not None:
                    result["attention"] = [round(float(w), 4) for w in weights[row][: len(toks)]]
                if members:
                    result["members"] = 1 + len(members)
                results.append(result)
        return results[0] if single else results

    def export_spec(self) -> Any:
        """What ``seqkit export`` writes: ids (N, L), lengths (N,) and, with ``task.subwords``, the
        n-gram ids (N, L, K) in; class probabilities (N, C) and, with attention pooling, the weights
        (N, heads, L) out; this plugin's export_runtime.py tokenises, hashes and labels with numpy."""
        from seqkit.export import ExportGraph, ExportSpec, random_lengths

        class Graph(ExportGraph):
            def forward(self, ids: Tensor, lengths: Tensor) -> tuple[Tensor, ...]:
                return self.run(self.model.embed(ids), lengths)

            def run(self, vectors: Tensor, lengths: Tensor) -> tuple[Tensor, ...]:
                out, _ = self.encoder(vectors, lengths)
                logits, weights = self.model.head(out, lengths)
                probs = logits.sigmoid() if self.model.multi_label else logits.softmax(-1)
                return (probs,) if weights is None else (probs, weights)

        class SubwordGraph(Graph):
            def forward(self, ids: Tensor, lengths: Tensor, grams: Tensor) -> tuple[Tensor, ...]:
                return self.run(self.model.embed_tokens(ids, grams), lengths)

        def sample(gen: torch.Generator) -> dict[str, Tensor]:
            n, longest = int(torch.randint(2, 9, (1,), generator=gen)), int(torch.randint(2, 40, (1,), generator=gen))
            inputs = {"ids": torch.randint(0, len(self.vocab.tokens), (n, longest), generator=gen),
                      "lengths": random_lengths(gen, n, longest)}
            if self.vocab.subwords:  # some ids are 0: fewer n-grams than the widest token
                inputs["grams"] = torch.randint(0, self.vocab.subwords[0] + 1, (n, longest, 7), generator=gen)
            return inputs

        info = {"tokens": self.vocab.tokens, "labels": self.vocab.labels, "lowercase": self.vocab.lowercase,
                "multi_label": self.multi_label, "subwords": self.vocab.subwords}
        outputs = ["probs"] + (["attention"] if self.head.pool == "attention" else [])
        dynamic = {"ids": {0: "batch", 1: "length"}, "lengths": {0: "batch"}}
        if self.vocab.subwords:
            dynamic["grams"] = {0: "batch", 1: "length", 2: "grams"}
        return ExportSpec(build=functools.partial(SubwordGraph if self.vocab.subwords else Graph, self),
                          inputs=sample(torch.Generator().manual_seed(1)), outputs=outputs, dynamic=dynamic,
                          sample=sample,
                          files={"classify.json": info, "classify_runtime.py": Path(__file__).with_name(
                              "export_runtime.py")},
                          manifest={"runtime_module": "classify_runtime.py"})


# -- batching ----------------------------------------------------------------------------------


def encode_split(vocab: Vocab, data: Examples, multi_label: bool) -> tuple[list[list[int]], list, Optional[list]]:
    """Each text's word ids, its target and (``task.subwords``) each word's n-gram ids."""
    encoded = [vocab.encode(t) for t in data.texts]
    ids = [seq for _, seq in encoded]
    grams = [vocab.grams(toks) for toks, _ in encoded] if vocab.subwords else None
    targets = []
    for i, item in enumerate(data.labels):
        names = item if isinstance(item, list) else [item]
        unknown = [n for n in names if n not in vocab.label_index]
        if unknown:
            raise seqkit.DataError(f"{data.path}: row {i + 1}: label {unknown[0]!r} was not seen in training "
                                   f"(known: {', '.join(vocab.labels)})")
        if multi_label:
            row = [0] * len(vocab.labels)
            for n in names:
                row[vocab.label_index[n]] = 1
            targets.append(row)
        else:
            if len(names) != 1:
                raise seqkit.DataError(f"{data.path}: row {i + 1}: {len(names)} labels; set head.multi_label: true")
            targets.append(vocab.label_index[names[0]])
    return ids, targets, grams


def batches(ids, targets, grams, size: int, **order) -> list[Batch]:
    groups = length_groups([len(x) for x in ids], size, **order)
    return [make_batch([ids[i] for i in g], [targets[i] for i in g], None if grams is None else [grams[i] for i in g])
            for g in groups]


# -- the task ----------------------------------------------------------------------------------


@dataclass
class ClassifyOptions:
    embedding_dim: int = seqkit.bounded(128, ge=1)
    embedding_dropout: float = seqkit.bounded(0.0, ge=0, lt=1)  # on the embedded words
    word_dropout: float = seqkit.bounded(0.0, ge=0, lt=1)  # in training, words become <unk> with this probability
    min_count: int = seqkit.bounded(1, ge=1)  # rarer training words become <unk>
    subwords: int = seqkit.bounded(0, ge=0)  # hash buckets for each word's character n-grams (fastText); 0: off
    subword_min: int = seqkit.bounded(3, ge=1)  # shortest n-gram, counting the < > word boundaries
    subword_max: int = seqkit.bounded(5, ge=1)  # longest n-gram
    max_vocab: int = seqkit.bounded(0, ge=0)  # 0: no cap
    lowercase: bool = True
    baseline: Literal["none", "tfidf-lr"] = "none"  # also fit TF-IDF uni+bigram logistic regression


class ClassifyTask(Task):
    """Text classification: accuracy (and, with ``task.baseline: tfidf-lr``, the baseline's)."""

    Config = ClassifyOptions
    default_head = "pooling"
    default_dataset = "table"
    default_features = None
    monitor, mode = "accuracy", "max"
    summary = ("accuracy", "baseline_accuracy")

    def prepare(self, recipe, run_dir, *, log) -> Prepared:
        splits = load_splits(recipe)
        train = splits["train"]
        if not len(train):
            raise seqkit.DataError(f"{train.path}: no training examples")
        opts = recipe.task
        if opts.subword_min > opts.subword_max:
            raise seqkit.RecipeError(f"task.subword_min ({opts.subword_min}) is above task.subword_max "
                                     f"({opts.subword_max}); make it smaller or equal")
        subwords = [opts.subwords, opts.subword_min, opts.subword_max] if opts.subwords else None
        vocab = persist_vocab(run_dir, "classify_vocab.json",
                              lambda: Vocab.build(train, opts.min_count, opts.max_vocab, opts.lowercase, subwords),
                              Vocab.load, Vocab.save)
        multi = recipe.head.multi_label
        seed_everything(recipe.train.seed)
        model = Classifier(recipe, vocab)
        encoded = encode_split(vocab, train, multi)
        held = {}
        for name in ("valid", "test"):
            data = splits[name]
            held[name] = batches(*encode_split(vocab, data, multi), recipe.train.eval_batch_size) if len(data) else None
        log(f"data: {len(train)} train / {len(splits['valid'])} valid / {len(splits['test'])} test examples; "
            f"{len(vocab.tokens)} words; classes {', '.join(vocab.labels)}")
        cfg = recipe.train

        def final_eval(best: nn.Module) -> dict[str, Any]:
            metrics = best.evaluate(held["test"]) if held["test"] else {}
            if opts.baseline == "tfidf-lr" and len(splits["test"]):
                from .baseline import tfidf_logistic_regression

                acc = tfidf_logistic_regression(train.texts + splits["valid"].texts,
                                                train.labels + splits["valid"].labels, splits["test"].texts,
                                                splits["test"].labels)
                metrics.update(baseline="tfidf-uni+bigram-logistic-regression", baseline_accuracy=acc)
                log(f"baseline: TF-IDF uni+bigram logistic regression, test accuracy {acc:.2f}")
            return metrics

        return Prepared(model, lambda epoch: batches(*encoded, cfg.batch_size, **epoch_order(cfg, epoch)),
                        held["valid"], held["test"], final_eval)

    def build_model(self, recipe, run_dir: Path) -> Classifier:
        return Classifier(recipe, read_vocab(run_dir / "vocab", Vocab.load, marker="classify_vocab.json"))

    def evaluate_data(self, model, data: Optional[Path], *, batch_size: int) -> dict[str, Any]:
        from .data import TableConfig, read_table

        if data is None:
            examples = load_splits(model.recipe, ["test"])["test"]
        else:
            config = model.recipe.data if isinstance(model.recipe.data, TableConfig) else TableConfig()
            examples = read_table(Path(data), config)
        if not len(examples):
            raise seqkit.DataError(f"{examples.path}: no examples to evaluate")
        encoded = encode_split(model.vocab, examples, model.multi_label)
        return {**model.evaluate(batches(*encoded, batch_size)), "examples": len(examples),
                "data": examples.path}

