"""seqkit-digits: name the largest digit of a string of digits, a task added from outside seqkit."""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Literal

import click
import torch
from torch import nn
from torch.nn import functional as F

import seqkit
from seqkit.tasks import ModelOutput, Prepared, Task, build_encoder, head_class, load_splits, seed_everything

DIGITS = "0123456789"


# -- a dataset provider with options of its own ------------------------------------------------

@dataclass
class DigitsConfig:
    train: int = seqkit.bounded(2000, ge=1)  # strings per split (a value out of range: one clear error)
    valid: int = seqkit.bounded(200, ge=1)
    test: int = seqkit.bounded(200, ge=1)
    min_length: int = seqkit.bounded(3, ge=1)
    max_length: int = 12
    seed: int = 0


def digits_provider(config: DigitsConfig, *, base):
    if not 1 <= config.min_length <= config.max_length:
        raise seqkit.RecipeError("data: need 1 <= min_length <= max_length")
    rng = random.Random(config.seed)

    def split(count):
        return ["".join(rng.choice(DIGITS) for _ in range(rng.randint(config.min_length, config.max_length)))
                for _ in range(count)]

    return {"train": split(config.train), "valid": split(config.valid), "test": split(config.test)}


digits_provider.Config = DigitsConfig
digits_provider.task = "largest-digit"


# -- a head with options of its own ------------------------------------------------------------

@dataclass
class PooledConfig:
    pool: Literal["mean", "max"] = "max"


class Pooled(nn.Module):
    """Pool the encoder output over time, then score the classes."""

    Config = PooledConfig
    task = "largest-digit"

    def __init__(self, input_size, classes, pool="max"):
        super().__init__()
        self.pool = pool
        self.out = nn.Linear(input_size, classes)

    def forward(self, features, mask):  # (N, L, F), (N, L)
        if self.pool == "max":
            pooled = features.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
        else:
            pooled = (features * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return self.out(pooled)  # (N, C)


# -- the model: loss in forward, metrics in evaluate, an app method ----------------------------

@dataclass
class Batch:
    ids: torch.Tensor  # (N, L)
    lengths: torch.Tensor  # (N,)
    labels: torch.Tensor  # (N,)

    def to(self, device):
        return Batch(self.ids.to(device), self.lengths, self.labels.to(device))

    @property
    def num_items(self):
        return int(self.lengths.sum())

    def __len__(self):
        return len(self.labels)


def make_batch(strings):
    ids = torch.zeros(len(strings), max(len(s) for s in strings), dtype=torch.long)
    for row, text in enumerate(strings):
        ids[row, : len(text)] = torch.tensor([DIGITS.index(c) + 1 for c in text])
    labels = torch.tensor([int(max(s)) for s in strings])
    return Batch(ids, torch.tensor([len(s) for s in strings]), labels)


class DigitsModel(nn.Module):
    def __init__(self, recipe):
        super().__init__()
        self.recipe = recipe
        self.embed = nn.Embedding(len(DIGITS) + 1, 16, padding_idx=0)
        self.encoder = build_encoder(recipe, 16)
        self.head = head_class(recipe)(self.encoder.output_size, len(DIGITS), pool=recipe.head.pool)

    def logits(self, batch):
        out, _ = self.encoder(self.embed(batch.ids), batch.lengths)
        mask = torch.arange(batch.ids.size(1), device=out.device) < batch.lengths.to(out.device).unsqueeze(1)
        return self.head(out, mask)

    def forward(self, batch, state=None):
        # count: the loss is a mean per string (data-parallel training weighs shares by it)
        return ModelOutput(F.cross_entropy(self.logits(batch), batch.labels), count=len(batch))

    def evaluate(self, batches):
        right = total = 0
        for batch in batches:
            right += int((self.logits(batch).argmax(-1) == batch.labels).sum())
            total += len(batch)
        return {"accuracy": 100.0 * right / max(total, 1)}

    def export_spec(self):
        # seqkit export RUN: digit ids and lengths in, class logits out (lengths stay graph inputs)
        from seqkit.export import ExportGraph, ExportSpec, random_lengths

        class Graph(ExportGraph):
            def forward(self, ids, lengths):
                out, _ = self.encoder(self.model.embed(ids), lengths)
                mask = torch.arange(ids.size(1), device=out.device) < lengths.unsqueeze(1)
                return (self.model.head(out, mask),)

        def sample(gen):  # random batches of random lengths, for the check against this model
            n, longest = (int(torch.randint(low, high, (1,), generator=gen)) for low, high in ((2, 9), (2, 20)))
            ids = torch.randint(1, 11, (n, longest), generator=gen)
            return {"ids": ids, "lengths": random_lengths(gen, n, longest)}

        return ExportSpec(build=functools.partial(Graph, self), inputs=sample(torch.Generator().manual_seed(0)),
                          outputs=["logits"],
                          dynamic={"ids": {0: "batch", 1: "length"}, "lengths": {0: "batch"}}, sample=sample)

    @torch.inference_mode()
    def predict(self, strings):
        """The largest digit of each string, as the model sees it."""
        self.eval()
        return [int(i) for i in self.logits(make_batch(list(strings))).argmax(-1)]


# -- the task ----------------------------------------------------------------------------------

@dataclass
class LargestDigitConfig:
    shuffle: bool = True  # shuffle the training strings each epoch


class LargestDigit(Task):
    Config = LargestDigitConfig
    default_head = "pooled"
    default_dataset = "digits"
    monitor, mode = "accuracy", "max"
    summary = ("accuracy",)

    def prepare(self, recipe, run_dir, *, log):
        splits = load_splits(recipe)
        seed_everything(recipe.train.seed)
        model = DigitsModel(recipe)
        size = recipe.train.batch_size

        def train_batches(epoch):
            strings = list(splits["train"])
            if recipe.task.shuffle:
                random.Random(recipe.train.seed * 1000 + epoch).shuffle(strings)
            return [make_batch(strings[i: i + size]) for i in range(0, len(strings), size)]

        held = {k: [make_batch(splits[k][i: i + size]) for i in range(0, len(splits[k]), size)]
                for k in ("valid", "test")}
        log(f"data: {len(splits['train'])} train strings")
        return Prepared(model, train_batches, held["valid"], held["test"])

    def build_model(self, recipe, run_dir):
        return DigitsModel(recipe)

    def evaluate_data(self, model, data, *, batch_size):
        strings = load_splits(model.recipe)["test"] if data is None else data.read_text().split()
        batches = [make_batch(strings[i: i + batch_size]) for i in range(0, len(strings), batch_size)]
        return {**model.evaluate(batches), "strings": len(strings)}


# -- a command ---------------------------------------------------------------------------------

@click.command("digits-predict")
@click.argument("run")
@click.argument("strings", nargs=-1, required=True)
def predict_cmd(run, strings):
    """Print the largest digit of each of STRINGS, as the model in RUN sees it."""
    for text, digit in zip(strings, seqkit.load(run).predict(strings)):
        click.echo(f"{text}\t{digit}")


# -- registration ------------------------------------------------------------------------------

@seqkit.hookimpl
def register_tasks(register):
    register("largest-digit", LargestDigit)


@seqkit.hookimpl
def register_heads(register):
    register("pooled", Pooled)


@seqkit.hookimpl
def register_datasets(register):
    register("digits", digits_provider)


@seqkit.hookimpl
def register_commands(cli):
    cli.add_command(predict_cmd)
