"""seqkit-classify: text classification on seqkit's shared encoder, added as a plugin through the
public task API only (``seqkit.tasks``): the ``classification`` task, the ``pooling`` head (mean,
max, last or additive attention), the ``table`` (TSV/CSV/JSONL) and ``mr`` (Movie Review, 10 fixed
folds) datasets, and the ``classify`` and ``classify-cv`` commands."""

from __future__ import annotations

import seqkit

from .data import TASK, mr_provider, table_provider
from .model import ClassifyTask, PoolingClassifier

__version__ = "0.1.0"


@seqkit.hookimpl
def register_tasks(register):
    register(TASK, ClassifyTask)


@seqkit.hookimpl
def register_heads(register):
    register("pooling", PoolingClassifier)


@seqkit.hookimpl
def register_datasets(register):
    register("table", table_provider)
    register("mr", mr_provider)


@seqkit.hookimpl
def register_commands(cli):
    from .cli import classify_cmd, cv_cmd

    cli.add_command(classify_cmd)
    cli.add_command(cv_cmd)
