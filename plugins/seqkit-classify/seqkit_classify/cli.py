"""``seqkit classify`` (classes, probabilities and an attention picture) and ``seqkit classify-cv``
(k-fold cross-validation: one ordinary run per fold, then the mean and spread)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import click

import seqkit
from seqkit.tasks import load_splits, write_json

from .ensemble import accuracy, check_members, ensemble_probabilities


@click.command("classify")
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.argument("texts", nargs=-1, required=True)
@click.option("--with", "others", multiple=True, type=click.Path(file_okay=False, path_type=Path), metavar="RUN",
              help="Another run with the same classes (repeatable): the probabilities of all runs are "
                   "averaged, a seed ensemble. Tokens and attention come from RUN.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per text.")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path),
              help="Draw the texts with each token shaded by its attention weight (attention heads).")
def classify_cmd(run: Path, texts: tuple[str, ...], others: tuple[Path, ...], as_json: bool,
                 png: Path | None) -> None:
    """Classify TEXTS with the model in RUN: the class and the probability of each class."""
    runs = [run, *others]
    models = [seqkit.load(r) for r in runs]
    check_members(models, runs)
    results = models[0].classify(list(texts), members=models[1:])
    for result in results:
        if as_json:
            click.echo(json.dumps(result, ensure_ascii=False))
        else:
            probs = "  ".join(f"{label} {p:.3f}" for label, p in result["probs"].items())
            click.echo(f"{result['label']}\t{probs}\t{result['text']}")
    if png is not None:
        if not all("attention" in r for r in results):
            raise seqkit.SeqkitError(f"--png: the model in {run} pools with {models[0].recipe.head.pool!r}; "
                                     "the picture needs head.pool: attention")
        draw_attention(results, png)
        click.echo(f"attention picture: {png}", err=True)


def draw_attention(results: list[dict], path: Path) -> None:
    """Each text on its own line, each token on a background as dark as its attention weight
    (relative to the text's largest), with the predicted class and its probability at the left."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    char_w, line_h = 0.0105, 1.0
    width = max(sum(len(t) + 1 for t in r["tokens"]) for r in results) * char_w + 0.25
    fig = plt.figure(figsize=(max(6.0, 1.0 + 10.0 * width), 0.55 * len(results) + 0.4))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(len(results) * line_h + 0.2, -0.2)
    ax.axis("off")
    for row, result in enumerate(results):
        y = row * line_h + 0.5
        label = result["label"] if isinstance(result["label"], str) else ",".join(result["label"])
        ax.text(0.005, y, f"{label} {max(result['probs'].values()):.2f}", va="center", ha="left",
                family="monospace", fontsize=9, color="#333333")
        x, top = 0.22, max(result["attention"]) or 1.0
        for token, weight in zip(result["tokens"], result["attention"]):
            shade = weight / top
            ax.text(x, y, token, va="center", ha="left", family="monospace", fontsize=11,
                    color="white" if shade > 0.6 else "black",
                    bbox={"boxstyle": "square,pad=0.15", "linewidth": 0,
                          "facecolor": (0.80 * (1 - shade) + 0.05, 0.85 * (1 - shade) + 0.15, 1.0 - 0.45 * shade)})
            x += (len(token) + 1) * char_w
    fig.savefig(path, dpi=150)
    plt.close(fig)


def parse_seeds(ctx, param, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        seeds = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected whole numbers separated by commas, e.g. 1,2,3") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise click.BadParameter(f"{value!r}: expected one or more different seeds, e.g. 1,2,3")
    return seeds


def train_fold(recipe: Path, overrides: list[str], run: Path, no_progress: bool) -> dict:
    """One fold's run: its metrics.json when finished earlier, else trained (resumed if interrupted)."""
    done = run / "metrics.json"
    if done.is_file():
        click.echo(f"{run.name}: done earlier", err=True)
        return json.loads(done.read_text(encoding="utf-8"))
    click.echo(f"{run.name}: training {run}", err=True)
    resume = (run / "checkpoints" / "last.safetensors").is_file()
    return seqkit.run_recipe(seqkit.Recipe.load(recipe, overrides), run, resume=resume, progress=not no_progress)


def fold_ensemble(runs: list[Path]) -> float:
    """Test accuracy of the members' averaged probabilities on their fold's test split."""
    models = [seqkit.load(r) for r in runs]
    check_members(models, runs)
    test = load_splits(models[0].recipe, ["test"])["test"]
    probs = ensemble_probabilities(models, list(test.texts))
    return accuracy(models[0].decide(probs), list(test.labels), models[0].vocab.labels)


@click.command("classify-cv")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="A folder of runs, fold-0 ... fold-K (fold-K-seed-S with --seeds), and cv.json with the summary.")
@click.option("--seeds", callback=parse_seeds, metavar="S1,S2,...",
              help="Train each fold once per seed (train.seed) and also score their seed ensemble: the "
                   "mean of their class probabilities (ensemble_accuracy in cv.json).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key (repeatable).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def cv_cmd(recipe: Path, out: Path, seeds: list[int] | None, overrides: tuple[str, ...], no_progress: bool) -> None:
    """K-fold cross-validation of RECIPE: one run per fold (``--set data.fold=K``), then the mean
    and standard deviation of the test accuracy (and of the baseline's, when the recipe asks for
    it). With --seeds, one run per fold and seed, and the seed ensemble's accuracy. Folds already
    finished are kept; an interrupted fold resumes."""
    base = seqkit.Recipe.load(recipe, list(overrides))
    folds = getattr(base.data, "folds", None)
    if not isinstance(folds, int) or not hasattr(base.data, "fold"):
        raise seqkit.RecipeError(f"{recipe}: data.dataset {base.data.dataset!r} has no folds; classify-cv needs a "
                                 "dataset with data.folds and data.fold (e.g. mr)")
    rows = []
    for fold in range(folds):
        if seeds is None:
            runs = {None: out / f"fold-{fold}"}
        else:
            runs = {seed: out / f"fold-{fold}-seed-{seed}" for seed in seeds}
        metrics = {seed: train_fold(recipe, [*overrides, f"data.fold={fold}",
                                             *([] if seed is None else [f"train.seed={seed}"])], run, no_progress)
                   for seed, run in runs.items()}
        first = next(iter(metrics.values()))
        scores = [m.get("accuracy") for m in metrics.values() if m.get("accuracy") is not None]
        row = {"fold": fold, "accuracy": statistics.mean(scores) if scores else None,
               "baseline_accuracy": first.get("baseline_accuracy"), "epochs": first.get("epochs"),
               "wall_time_s": round(sum(m.get("wall_time_s") or 0 for m in metrics.values()), 1)}
        line = f"fold {fold}: accuracy {row['accuracy'] if row['accuracy'] is not None else float('nan'):.2f}"
        if seeds is not None:
            row["seeds"] = {str(seed): m.get("accuracy") for seed, m in metrics.items()}
            row["ensemble_accuracy"] = fold_ensemble(list(runs.values()))
            line += f" (mean of {len(seeds)} seeds), seed ensemble {row['ensemble_accuracy']:.2f}"
        if row["baseline_accuracy"] is not None:
            line += f", baseline {row['baseline_accuracy']:.2f}"
        click.echo(line, err=True)
        rows.append(row)
    summary = {"folds": folds, **({"seeds": seeds} if seeds else {}), "runs": rows}
    for key in ("accuracy", "ensemble_accuracy", "baseline_accuracy"):
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            summary[key] = round(statistics.mean(values), 2)
            summary[f"{key}_std"] = round(statistics.stdev(values), 2) if len(values) > 1 else 0.0
    best = "ensemble_accuracy" if seeds else "accuracy"
    paired = [round(r[best] - r["baseline_accuracy"], 6) for r in rows
              if r.get(best) is not None and r["baseline_accuracy"] is not None]
    if paired:  # the same folds: a paired comparison is tighter than the two spreads
        summary["vs_baseline"] = {"compared": best, "mean_difference": round(statistics.mean(paired), 2),
                                  "standard_error": round(statistics.stdev(paired) / len(paired) ** 0.5, 2)
                                  if len(paired) > 1 else None,
                                  "folds_better": sum(d > 0 for d in paired), "folds_worse": sum(d < 0 for d in paired),
                                  "folds_level": sum(d == 0 for d in paired)}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "cv.json", summary)
    click.echo(json.dumps({k: v for k, v in summary.items() if k != "runs"}))
