"""The language-modelling task: token embeddings -> shared encoder -> next-token softmax.

Trained by truncated backpropagation through time over one continuous token stream cut into
``N`` parallel streams (the recipe's ``train.batch_size``); the recurrent state is carried from
one batch to the next (detached), reset at each epoch's start, and kept in the ``last``
checkpoint, so an interrupted run resumes exactly.  With ``encoder.directions: split`` the model
is an ELMo-style bidirectional LM: the forward half predicts the next token, the backward half
the previous one, each with its own loss (the reported loss is their mean); its chunks start
from a zero state.

Shape legend: N streams (batch), L chunk length, E embedding, H hidden (one direction), V vocabulary.
"""

from __future__ import annotations

import functools
import json
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Literal, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..data.lm import TextCorpus, read_text
from ..errors import RecipeError, SeqkitError
from ..features.lm_vocab import LMVocab
from ..recipe import Recipe, bounded
from ..regularize import embedding_dropout, locked_dropout
from ..sampling import sample_steps
from ..tasks import (
    ModelOutput,
    Prepared,
    Task,
    build_encoder,
    head_class,
    load_splits,
    persist_vocab,
    read_vocab,
    seed_everything,
    text_inputs,
)

__all__ = ["LMBatch", "LanguageModel", "LanguageModelTask", "LanguageModelOptions", "stream_batches"]

IGNORE = -100


@dataclass
class LanguageModelOptions:
    """Options of the ``language-model`` task."""

    bptt: int = bounded(70, ge=2)  # tokens per training chunk (truncated backpropagation through time)
    random_bptt: bool = True  # vary the chunk length as AWD-LSTM does (bptt, or bptt/2 with p 0.05; +- N(0, 5))
    eval_streams: int = bounded(10, ge=1)  # parallel streams the valid/test text is cut into (1: one unbroken stream)
    baseline: Literal["none", "kenlm"] = "none"  # kenlm: modified Kneser-Ney n-gram on the same tokens, reported beside
    baseline_order: int = bounded(5, ge=1)


@dataclass
class LMBatch:
    inputs: Tensor  # (N, L) token ids
    targets: Tensor  # (N, L) the next token of each input
    previous: Optional[Tensor] = None  # (N, L) the token before each input (IGNORE where none); bi-LM only

    def to(self, device: torch.device) -> "LMBatch":
        move = (lambda t: None if t is None else t.to(device, non_blocking=True))
        return LMBatch(move(self.inputs), move(self.targets), move(self.previous))

    @property
    def num_items(self) -> int:
        return self.targets.numel()

    def __len__(self) -> int:
        return self.inputs.size(0)


def batchify(stream: Tensor, streams: int) -> Tensor:
    """Cut a 1-D token stream into ``streams`` equal rows (the tail that does not fit is dropped): (N, T)."""
    streams = max(1, min(streams, stream.numel() - 1))
    width = stream.numel() // streams
    return stream[: width * streams].view(streams, width)


def chunk_lengths(total: int, bptt: int, rng: Optional[random.Random]) -> list[int]:
    """Lengths of the consecutive chunks that cover ``total`` positions: all ``bptt``, or (with an
    ``rng``) AWD-LSTM's varied lengths."""
    out, pos = [], 0
    while pos < total:
        length = bptt
        if rng is not None:
            base = bptt if rng.random() < 0.95 else bptt / 2
            length = max(5, int(rng.gauss(base, 5)))
        length = min(length, total - pos)
        out.append(length)
        pos += length
    return out


def stream_batches(data: Tensor, bptt: int, *, rng: Optional[random.Random] = None,
                   previous: bool = False) -> list[LMBatch]:
    """Consecutive chunks of ``data`` (N, T): inputs ``data[:, i:i+L]``, targets shifted by one."""
    batches, pos = [], 0
    for length in chunk_lengths(data.size(1) - 1, bptt, rng):
        inputs, targets = data[:, pos: pos + length], data[:, pos + 1: pos + 1 + length]
        prev = None
        if previous:
            prev = data[:, max(pos - 1, 0): pos - 1 + length] if pos > 0 else F.pad(data[:, : length - 1], (1, 0),
                                                                                    value=IGNORE)
        batches.append(LMBatch(inputs, targets, prev))
        pos += length
    return batches


class LanguageModel(nn.Module):
    """Token embeddings, the shared encoder and a next-token head: train it, ``generate`` text,
    ``score`` texts, or (a bidirectional ``split`` model) ``embed`` them."""

    def __init__(self, recipe: Recipe, vocab: LMVocab, head_cls: Any) -> None:
        super().__init__()
        f = recipe.features
        self.recipe = recipe
        self.vocab = vocab
        self.embed = nn.Embedding(len(vocab), f.embedding_dim)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.encoder = build_encoder(recipe, f.embedding_dim)
        self.split = self.encoder.directions == "split"
        h = recipe.encoder.hidden_size
        options = {k: getattr(recipe.head, k) for k in ("tie_weights", "dropout") if hasattr(recipe.head, k)}
        self.head = head_cls(h, len(vocab), f.embedding_dim, **options)

    # -- training ---------------------------------------------------------------------------

    def _embed(self, ids: Tensor) -> Tensor:
        f = self.recipe.features
        x = embedding_dropout(self.embed, ids, f.embedding_dropout, self.training)  # (N, L, E)
        return locked_dropout(x, f.dropout, self.training, batch_first=True)

    def forward(self, batch: LMBatch, state: Optional[tuple[Tensor, ...]] = None) -> ModelOutput:
        """Mean next-token cross-entropy (nats per token) of a chunk; the state to carry on
        (None for a split bi-LM, whose chunks start afresh)."""
        out, new_state = self.encoder(self._embed(batch.inputs), None, None if self.split else state)
        losses = self._losses(out, batch)
        count = sum(n for _, n in losses)
        loss = sum(total for total, _ in losses) / count
        return ModelOutput(loss, None if self.split else new_state, count=count)

    def _losses(self, out: Tensor, batch: LMBatch) -> list[tuple[Tensor, int]]:
        """(summed NLL, predicted tokens) per direction."""
        h = self.encoder.hidden_size
        weight = self.embed.weight
        if not self.split:
            logits = self.head(out, weight)  # (N, L, V)
            return [(F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), reduction="sum"),
                     batch.targets.numel())]
        assert batch.previous is not None
        result = []
        for half, target in ((out[..., :h], batch.targets), (out[..., h:], batch.previous)):
            logits = self.head(half, weight)  # (N, L, V)
            nll = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE, reduction="sum")
            result.append((nll, int((target != IGNORE).sum())))
        return result

    def evaluate(self, batches: Iterable[LMBatch]) -> dict[str, float]:
        """Per-token loss (nats) and perplexity, the state carried through the batches in order."""
        totals, counts, state = [0.0, 0.0], [0, 0], None
        for batch in batches:
            out, state = self.encoder(self._embed(batch.inputs), None, None if self.split else state)
            for k, (nll, count) in enumerate(self._losses(out, batch)):
                totals[k] += float(nll)
                counts[k] += count
        directions = 2 if self.split else 1
        losses = [totals[k] / max(counts[k], 1) for k in range(directions)]
        metrics = {"loss": sum(losses) / directions, "nll_sum": totals[0], "tokens": counts[0]}
        metrics["ppl"] = math.exp(min(metrics["loss"], 50.0))
        if self.split:
            metrics.update(ppl_forward=math.exp(min(losses[0], 50.0)), ppl_backward=math.exp(min(losses[1], 50.0)))
        return metrics

    def embedding_tokens(self) -> tuple[nn.Embedding, list[str]]:
        """The token embedding and its vocabulary (for ``encoder.init_from``)."""
        return self.embed, list(self.vocab.itos)

    # -- applications -----------------------------------------------------------------------

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def step(self, ids: Tensor, state: Optional[tuple[Tensor, ...]]) -> tuple[Tensor, tuple[Tensor, ...]]:
        """One step of a forward model: ids (N,) -> next-token logits (N, V) and the new state."""
        out, state = self.encoder(self.embed(ids).unsqueeze(1), None, state)  # (N, 1, H)
        return self.head(out[:, 0], self.embed.weight), state

    @torch.inference_mode()
    def generate_tokens(self, prompt: str = "", *, max_tokens: int = 100, temperature: float = 1.0, top_k: int = 0,
                        top_p: float = 1.0, seed: Optional[int] = None, stop_at_eos: bool = False) -> Iterator[str]:
        """Yield the text of each sampled token as it comes (``<eos>`` as a newline).

        The prompt is read after a line break (``<eos>``), as the model saw lines in training.
        Same seed, same text; sampling uses a random generator of its own."""
        if self.split:
            raise SeqkitError("a bidirectional (split) language model cannot generate: its backward half needs "
                              "the text that comes later; train one with encoder.directions: forward")
        if max_tokens < 0:
            raise SeqkitError(f"max_tokens must be >= 0, got {max_tokens}")
        self.eval()
        device = self._device()
        ids = [self.vocab.eos_id] + (self.vocab.encode(prompt) if prompt else [])
        state = None
        if len(ids) > 1:  # read the prompt in one call
            _, state = self.encoder(self.embed(torch.tensor([ids[:-1]], device=device)), None, None)
        first = torch.tensor([ids[-1]], device=device)
        stop = self.vocab.eos_id if stop_at_eos else None
        steps = sample_steps(self.step, first, state, max_tokens, temperature=temperature, top_k=top_k,
                             top_p=top_p, seed=seed, stop=stop)
        yield from token_texts(self.vocab, (int(t) for t in steps), line_start=len(ids) == 1)

    def generate(self, prompt: str = "", **options: Any) -> str:
        """The prompt's continuation as one string (see :meth:`generate_tokens` for the options)."""
        return "".join(self.generate_tokens(prompt, **options))

    @torch.inference_mode()
    def score(self, texts: Union[str, Sequence[str]]) -> Union[dict[str, Any], list[dict[str, Any]]]:
        """Log-probability (natural log) of each text and its perplexity per token, each text read
        from a fresh state after a line break and ending with ``<eos>``."""
        items, single = text_inputs(texts, "score")
        self.eval()
        device, results = self._device(), []
        for text in items:
            ids = [self.vocab.eos_id] + self.vocab.encode(text) + [self.vocab.eos_id]
            data = torch.tensor([ids], device=device)
            batch = LMBatch(data[:, :-1], data[:, 1:], F.pad(data[:, :-2], (1, 0), value=IGNORE))
            out, _ = self.encoder(self.embed(batch.inputs), None, None)
            nll, count = self._losses(out, batch)[0]
            results.append({"text": text, "logprob": -float(nll), "tokens": count,
                            "ppl": math.exp(min(float(nll) / count, 50.0))})
        return results[0] if single else results

    @torch.inference_mode()
    def embed_texts(self, texts: Union[str, Sequence[str]]) -> Union[dict[str, Any], list[dict[str, Any]]]:
        """Per-token contextual vectors of a split bi-LM (the top layer, forward and backward
        halves side by side): ``tokens`` and ``vectors`` (T, 2H)."""
        if not self.split:
            raise SeqkitError("embed needs a bidirectional language model (encoder.directions: split); this one "
                              "reads left to right only — use score or generate")
        items, single = text_inputs(texts, "embed")
        self.eval()
        results = []
        for text in items:
            ids = self.vocab.encode(text)
            x = torch.tensor([[self.vocab.eos_id, *ids, self.vocab.eos_id]], device=self._device())
            out, _ = self.encoder(self.embed(x), None, None)  # (1, T + 2, 2H)
            results.append({"tokens": [self.vocab.itos[i] for i in ids], "vectors": out[0, 1:-1].cpu()})
        return results[0] if single else results

    embed_text = embed_texts  # seqkit.load(run).embed_text(...) reads naturally too

    def stream(self) -> Any:
        """A streaming session (:class:`seqkit.streaming.LMStream`): ``feed(text)`` returns the
        text's log-probability given everything read before, ``generate_tokens(...)`` continues
        it; the recurrent state is carried between calls."""
        from ..streaming import LMStream

        return LMStream(self)

    def export_spec(self) -> Any:
        """What ``seqkit export`` writes. A forward model: ids (N, L), lengths (N,) and the carried
        state (``state0``, ``state1``: (num_layers, N, H)) in; logits (N, L, V) and the state
        after each row's last token out. A split bi-LM: ids and lengths in, its top layer's
        vectors (N, L, 2H) out."""
        from ..export import ExportGraph, ExportSpec, random_lengths, state_inputs

        enc = self.encoder
        states = enc._num_states

        class Graph(ExportGraph):
            def forward(self, ids: Tensor, lengths: Tensor, state0: Optional[Tensor] = None,
                        state1: Optional[Tensor] = None) -> tuple[Tensor, ...]:
                state = tuple(s for s in (state0, state1) if s is not None) or None
                out, final = self.encoder(self.model.embed(ids), lengths, state)
                if self.model.split:
                    return (out,)
                return (self.model.head(out, self.model.embed.weight), *final)

        def sample(gen: torch.Generator) -> dict[str, Tensor]:
            n, longest = int(torch.randint(2, 6, (1,), generator=gen)), int(torch.randint(2, 30, (1,), generator=gen))
            inputs = {"ids": torch.randint(0, len(self.vocab), (n, longest), generator=gen),
                      "lengths": random_lengths(gen, n, longest)}
            return inputs if self.split else {**inputs, **state_inputs(gen, enc, n)}

        example = sample(torch.Generator().manual_seed(1))
        dynamic: dict[str, dict[int, str]] = {"ids": {0: "batch", 1: "length"}, "lengths": {0: "batch"}}
        dynamic.update({f"state{k}": {1: "batch"} for k in range(states) if not self.split})
        outputs = ["vectors"] if self.split else ["logits", *(f"new_state{k}" for k in range(states))]
        info = {"units": self.vocab.units, "itos": list(self.vocab.itos), "split": self.split,
                "layers": enc.num_layers, "hidden": enc.hidden_size, "num_states": states}
        files: dict[str, Any] = {"lm.json": info}
        if self.vocab.tokenizer is not None:
            files["tokenizer.json"] = json.loads(self.vocab.tokenizer.to_str())
        # "runtime": a subclass's task (melodies) reads the same way
        return ExportSpec(build=functools.partial(Graph, self), inputs=example, outputs=outputs, dynamic=dynamic,
                          sample=sample, files=files, manifest={"runtime": "language-model"})


def token_texts(vocab: LMVocab, ids: Iterable[int], *, line_start: bool = True) -> Iterator[str]:
    """The text of each token as it comes, so that joined they read as ``vocab.decode`` would:
    words separated by spaces, BPE pieces through their word-start marks, ``<eos>`` a newline."""
    for i in ids:
        if i == vocab.eos_id:
            line_start = True
            yield "\n"
            continue
        piece = vocab.itos[i]
        if vocab.units == "words":
            text = piece if line_start else " " + piece
        elif vocab.units == "bpe":
            text = piece.replace("\u2581", " ")
            text = text.lstrip(" ") if line_start else text
        else:
            text = piece
        line_start = False
        yield text


# -- the task ---------------------------------------------------------------------------------


class LanguageModelTask(Task):
    """Language modelling: perplexity per token and per word, bits per character; generation.

    A loaded model offers ``generate``, ``score`` and (bi-LM) ``embed_texts``; ``seqkit generate
    RUN --prompt ...`` streams text."""

    Config = LanguageModelOptions
    # the model class it builds; a task that reuses this machinery for other tokens (a plugin's
    # melody task) subclasses the task and sets its own LanguageModel subclass here
    model_class: ClassVar[type[LanguageModel]] = LanguageModel
    default_head = "lm"
    default_dataset = "text"
    default_features = "lm-tokens"
    monitor, mode = "ppl", "min"
    summary = ("ppl", "ppl_word", "bpc", "baseline_ppl", "loss")

    def check(self, recipe: Recipe) -> None:
        src = recipe.source
        if recipe.encoder.direction_mode == "bidirectional":
            raise RecipeError(f"{src}: encoder.directions: a language model must never see the token it predicts; "
                              "use forward, or split (ELMo-style: each direction stacks only on itself)")
        if recipe.features.kind != "lm-tokens":
            raise RecipeError(f"{src}: features.kind: a language model reads lm-tokens (got {recipe.features.kind!r})")
        if recipe.task.bptt < 2:
            raise RecipeError(f"{src}: task.bptt: expected at least 2 tokens per chunk, got {recipe.task.bptt}")
        if recipe.task.baseline == "kenlm":
            from ..ngram import require_kenlm

            try:
                require_kenlm()
            except SeqkitError as exc:
                raise RecipeError(f"{src}: task.baseline: {exc} (or set task.baseline: none)") from None

    def prepare(self, recipe: Recipe, run_dir: Optional[Path], *, log: Callable[[str], None] = print) -> Prepared:
        splits = load_splits(recipe)
        train = splits["train"]
        if not train.lines:
            raise SeqkitError(f"{train.path}: no training text")
        f = recipe.features
        vocab = persist_vocab(run_dir, "lm_vocab.json",
                              lambda: LMVocab.build(train.lines, f.units, min_count=f.min_count,
                                                    max_vocab=f.max_vocab, bpe_size=f.bpe_size),
                              LMVocab.load, LMVocab.save)
        opts, cfg = recipe.task, recipe.train
        seed_everything(cfg.seed)
        model = self.model_class(recipe, vocab, head_class(recipe))
        stream = batchify(vocab.encode_stream(train.lines), cfg.batch_size)  # (N, T)
        held = {name: batchify(vocab.encode_stream(splits[name].lines), opts.eval_streams)
                for name in ("valid", "test") if splits.get(name) is not None and splits[name].lines}
        log(f"data: {stream.numel()} train / " + " / ".join(f"{t.numel()} {k}" for k, t in held.items())
            + f" tokens ({vocab.units}); vocabulary {len(vocab)}; {stream.size(0)} streams of {stream.size(1)}")
        split = model.split
        evaluation = {k: stream_batches(t, opts.bptt, previous=split) for k, t in held.items()}

        def train_batches(epoch: int) -> list[LMBatch]:
            rng = random.Random(cfg.seed * 1000 + epoch) if opts.random_bptt else None
            return stream_batches(stream, opts.bptt, rng=rng, previous=split)

        def final_eval(trained: nn.Module) -> dict[str, Any]:
            assert isinstance(trained, LanguageModel)
            return _report(trained, evaluation.get("test"), splits, recipe, run_dir, log)

        return Prepared(model, train_batches, evaluation.get("valid"), evaluation.get("test"), final_eval=final_eval)

    def build_model(self, recipe: Recipe, run_dir: Path) -> LanguageModel:
        vocab = read_vocab(run_dir / "vocab", LMVocab.load, marker="lm_vocab.json")
        return self.model_class(recipe, vocab, head_class(recipe))

    def evaluate_data(self, model: nn.Module, data: Optional[Path], *, batch_size: int = 128) -> dict[str, Any]:
        assert isinstance(model, LanguageModel)
        recipe = model.recipe
        if data is None:
            corpus = load_splits(recipe, ["test"])["test"]
        else:
            if not Path(data).is_file():
                raise SeqkitError(f"{data}: file not found")
            corpus = TextCorpus(read_text(Path(data)), str(data))
        if not corpus.lines:
            raise SeqkitError(f"{corpus.path}: no text to evaluate")
        with torch.inference_mode():
            return {**_text_metrics(model, corpus.lines), "data": str(corpus.path)}

    def format_metrics(self, metrics: dict[str, Any]) -> str:
        lines = [super().format_metrics({k: v for k, v in metrics.items() if k != "baseline"})]
        if isinstance(metrics.get("baseline"), dict):
            b = metrics["baseline"]
            lines.append(f"baseline: {b.get('name', 'n-gram')} perplexity {b.get('ppl', float('nan')):.4g}")
        return "\n".join(lines)


def _text_metrics(model: LanguageModel, lines: Sequence[str]) -> dict[str, Any]:
    """Perplexity per token and per word, and bits per character, of text read as one stream per
    ``task.eval_streams`` streams."""
    opts = model.recipe.task
    data = batchify(model.vocab.encode_stream(list(lines)), opts.eval_streams)
    device = model._device()
    model.eval()
    metrics = model.evaluate(b.to(device) for b in stream_batches(data, opts.bptt, previous=model.split))
    counts = model.vocab.counts(lines)
    # the streams leave out the last token of each row and the tail that does not fit; scale the
    # word and character counts by the share of tokens actually predicted
    share = metrics["tokens"] / max(counts["tokens"], 1)
    nll = metrics["nll_sum"]
    metrics["ppl_word"] = math.exp(min(nll / max(counts["words"] * share, 1e-9), 50.0))
    metrics["bpc"] = nll / math.log(2) / max(counts["chars"] * share, 1e-9)
    return metrics


def _report(model: LanguageModel, test: Optional[list[LMBatch]], splits: dict[str, TextCorpus], recipe: Recipe,
            run_dir: Optional[Path], log: Callable[[str], None]) -> dict[str, Any]:
    """Test metrics of the best model, and the n-gram baseline on the same tokens."""
    out: dict[str, Any] = {}
    with torch.no_grad():
        if splits.get("test") is not None and splits["test"].lines:
            out.update(_text_metrics(model, splits["test"].lines))
    if recipe.task.baseline == "kenlm" and run_dir is not None:
        out["baseline"] = _kenlm_baseline(model.vocab, splits, recipe, run_dir, log)
        if "ppl" in out["baseline"]:
            out["baseline_ppl"] = out["baseline"]["ppl"]
            out["vs_baseline"] = round(100.0 * (out["ppl"] / out["baseline_ppl"] - 1.0), 2)
    return out


def _kenlm_baseline(vocab: LMVocab, splits: dict[str, TextCorpus], recipe: Recipe, run_dir: Path,
                    log: Callable[[str], None]) -> dict[str, Any]:
    """Modified Kneser-Ney on exactly the model's tokens (rare words already <unk>); a failure is
    recorded, never fatal: the trained model is the run's result."""
    from ..ngram import kn_baseline

    order = recipe.task.baseline_order
    log(f"baseline: KenLM modified Kneser-Ney {order}-gram on the same tokens")
    try:
        scores = kn_baseline((vocab.tokens(line) for line in splits["train"].lines),
                             {"test": [vocab.tokens(line) for line in splits["test"].lines]},
                             order=order, workdir=run_dir / "baseline", log=log)
    except SeqkitError as exc:
        print(f"warning: the n-gram baseline failed: {exc}", file=sys.stderr)
        return {"name": f"kenlm-{order}gram", "error": str(exc)}
    test = scores["test"]
    return {"name": f"kenlm-{order}gram-mkn", "ppl": test["perplexity"], "tokens": test["tokens"],
            "oov": test.get("oov", 0)}
