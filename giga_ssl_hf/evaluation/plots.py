"""PNG plots of linear-probe results: ROC curves per split with their mean, and few-shot curves."""

from __future__ import annotations

import re
from itertools import groupby
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from giga_ssl_hf.evaluation.results import ProbeResult  # noqa: E402
from giga_ssl_hf.evaluation.train_sizes import FULL  # noqa: E402
from giga_ssl_hf.inference.heatmap_plot import save_figure  # noqa: E402

FPR_GRID = np.linspace(0, 1, 501)


def roc_on_grid(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """TPR on :data:`FPR_GRID`; for several classes the macro average of the one-vs-rest curves.

    A common grid lets curves of different splits (and classes) be averaged point by point.
    """
    per_class = (
        [(y_true == 1, scores)]
        if scores.ndim == 1
        else [(y_true == c, scores[:, c]) for c in range(scores.shape[1])]
    )
    curves = []
    for positive, score in per_class:
        fpr, tpr, _ = roc_curve(positive, score)
        curve = np.interp(FPR_GRID, fpr, tpr)
        curve[0] = 0.0  # several points sit at FPR 0; the curve starts at the origin
        curves.append(curve)
    return np.mean(curves, axis=0)


def plot_roc(result: ProbeResult, path: str | Path) -> Path:
    """Each split's ROC curve, their mean curve and a ±1 std band."""
    curves = np.array([roc_on_grid(s.y_true, s.scores) for s in result.splits])
    mean, std = curves.mean(axis=0), curves.std(axis=0)
    fig, ax = plt.subplots(figsize=(6, 6))
    for split, curve in zip(result.splits, curves):
        ax.plot(FPR_GRID, curve, lw=0.8, alpha=0.45, label=f"{split.name} (AUC {split.auc:.3f})")
    ax.fill_between(
        FPR_GRID,
        np.clip(mean - std, 0, 1),
        np.clip(mean + std, 0, 1),
        color="C0",
        alpha=0.15,
        label="± 1 std",
    )
    ax.plot(FPR_GRID, mean, color="C0", lw=2.5, label=f"mean (AUC {result.mean:.3f} ± {result.std:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    subsample = "" if result.train_size == FULL else f", training subsample {result.train_size}"
    kind = (
        f", positive class {result.classes[1]}"
        if len(result.classes) == 2
        else f", macro one-vs-rest over {len(result.classes)} classes"
    )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=f"ROC: {result.task}, splits: {result.split_set}{subsample}\n"
        f"{len(result.splits)} splits, ~{result.mean_n_train:.0f} training slides{kind}",
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="x-small", ncol=1 if len(result.splits) <= 10 else 2)
    return _save(fig, path)


def plot_few_shot(results: list[ProbeResult], path: str | Path, title: str) -> Path:
    """Mean AUC (± std, clipped to [0, 1]) against the mean number of training slides.

    One line per task; per (task, split folder) when split folders are themselves run at several
    training sizes, so that points from unrelated split folders are not joined. Points are named
    (split folder or training size) when the plot shows one task; across tasks that would be clutter.
    """
    per_folder = any(
        len({r.train_size for r in group}) > 1 for _, group in _by(results, ("task", "split_set"))
    )
    several_tasks = len({r.task for r in results}) > 1
    groups = _by(results, ("task", "split_set") if per_folder else ("task",))
    fig, ax = plt.subplots(figsize=(7, 5))
    for key, group in groups:
        group = sorted(group, key=lambda r: r.mean_n_train)
        x = np.array([r.mean_n_train for r in group])
        mean, std = np.array([r.mean for r in group]), np.array([r.std for r in group])
        yerr = [mean - np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1) - mean]
        label = " / ".join(key if several_tasks else key[1:]) or key[0]
        line = ax.errorbar(x, mean, yerr=yerr, marker="o", capsize=3, label=label)
        if several_tasks:
            continue
        for r, xi in zip(group, x):
            name = (
                r.train_size
                if per_folder
                else r.split_set + ("" if r.train_size == FULL else f" @ {r.train_size}")
            )
            ax.annotate(
                name,
                (xi, r.mean),
                textcoords="offset points",
                xytext=(5, -12),
                fontsize="small",
                color=line[0].get_color(),
            )
    ax.set_xscale("log")
    # Plain numbers at 1-2-5 steps read better than 6x10^1-style log ticks.
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(
        xlabel="training slides (mean over splits, log scale)",
        ylabel="AUC (mean ± std over splits)",
        title=title,
    )
    ax.set_ylim(top=min(ax.get_ylim()[1], 1.005))
    ax.grid(alpha=0.3, which="both")
    if len(groups) > 1:
        legend_title = " / ".join(["task"] * several_tasks + ["split folder"] * per_folder)
        ax.legend(fontsize="small", loc="lower right", title=legend_title, title_fontsize="small")
    return _save(fig, path)


def plot_all(results: list[ProbeResult], out_dir: str | Path) -> list[Path]:
    """ROC plot of every result; few-shot curve per task with several sizes, and across tasks."""
    out_dir = Path(out_dir)
    written = [
        plot_roc(r, out_dir / f"roc_{_slug(r.task)}_{_slug(r.split_set)}_{_slug(r.train_size)}.png")
        for r in results
    ]
    for task, group in _by(results, ("task",)):
        if len(group) > 1:
            written.append(
                plot_few_shot(
                    group, out_dir / f"fewshot_{_slug(task[0])}.png", f"Few-shot linear probe: {task[0]}"
                )
            )
    if len({r.task for r in results}) > 1 and len(results) > len({r.task for r in results}):
        written.append(
            plot_few_shot(results, out_dir / "fewshot_all_tasks.png", "Few-shot linear probe: all tasks")
        )
    return written


def _by(results: list[ProbeResult], keys: tuple[str, ...]) -> list[tuple[tuple[str, ...], list[ProbeResult]]]:
    def key(r):
        return tuple(getattr(r, k) for k in keys)

    return [(k, list(g)) for k, g in groupby(sorted(results, key=key), key=key)]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("%", "pct"))


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    return save_figure(fig, Path(path), dpi=120)
