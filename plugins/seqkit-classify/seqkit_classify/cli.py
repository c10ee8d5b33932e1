"""``seqkit classify`` (classes, probabilities and an attention picture) and ``seqkit classify-cv``
(k-fold cross-validation: one ordinary run per fold, then the mean and spread)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import click

import seqkit
from seqkit.tasks import not_a, write_json


@click.command("classify")
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.argument("texts", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per text.")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path),
              help="Draw the texts with each token shaded by its attention weight (attention heads).")
def classify_cmd(run: Path, texts: tuple[str, ...], as_json: bool, png: Path | None) -> None:
    """Classify TEXTS with the model in RUN: the class and the probability of each class."""
    model = seqkit.load(run)
    if not hasattr(model, "classify"):
        raise not_a(model, "classify text", run)
    results = model.classify(list(texts))
    for result in results:
        if as_json:
            click.echo(json.dumps(result, ensure_ascii=False))
        else:
            probs = "  ".join(f"{label} {p:.3f}" for label, p in result["probs"].items())
            click.echo(f"{result['label']}\t{probs}\t{result['text']}")
    if png is not None:
        if not all("attention" in r for r in results):
            raise seqkit.SeqkitError(f"--png: the model in {run} pools with {model.recipe.head.pool!r}; "
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


@click.command("classify-cv")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="A folder of runs, fold-0 ... fold-K, and cv.json with the summary.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key (repeatable).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def cv_cmd(recipe: Path, out: Path, overrides: tuple[str, ...], no_progress: bool) -> None:
    """K-fold cross-validation of RECIPE: one run per fold (``--set data.fold=K``), then the mean
    and standard deviation of the test accuracy (and of the baseline's, when the recipe asks for
    it). Folds already finished are kept; an interrupted fold resumes."""
    base = seqkit.Recipe.load(recipe, list(overrides))
    folds = getattr(base.data, "folds", None)
    if not isinstance(folds, int) or not hasattr(base.data, "fold"):
        raise seqkit.RecipeError(f"{recipe}: data.dataset {base.data.dataset!r} has no folds; classify-cv needs a "
                                 "dataset with data.folds and data.fold (e.g. mr)")
    rows = []
    for fold in range(folds):
        run = out / f"fold-{fold}"
        done = run / "metrics.json"
        if done.is_file():
            metrics = json.loads(done.read_text(encoding="utf-8"))
            click.echo(f"fold {fold}: done earlier", err=True)
        else:
            click.echo(f"fold {fold} of {folds}: {run}", err=True)
            resume = (run / "checkpoints" / "last.safetensors").is_file()
            metrics = seqkit.run_recipe(seqkit.Recipe.load(recipe, [*overrides, f"data.fold={fold}"]), run,
                                        resume=resume, progress=not no_progress)
        rows.append({"fold": fold, "accuracy": metrics.get("accuracy"),
                     "baseline_accuracy": metrics.get("baseline_accuracy"), "epochs": metrics.get("epochs"),
                     "wall_time_s": metrics.get("wall_time_s")})
        click.echo(f"fold {fold}: accuracy {metrics.get('accuracy', float('nan')):.2f}"
                   + (f", baseline {metrics['baseline_accuracy']:.2f}" if "baseline_accuracy" in metrics else ""),
                   err=True)
    summary = {"folds": folds, "runs": rows}
    for key in ("accuracy", "baseline_accuracy"):
        values = [r[key] for r in rows if r[key] is not None]
        if values:
            summary[key] = round(statistics.mean(values), 2)
            summary[f"{key}_std"] = round(statistics.stdev(values), 2) if len(values) > 1 else 0.0
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "cv.json", summary)
    click.echo(json.dumps({k: v for k, v in summary.items() if k != "runs"}))
