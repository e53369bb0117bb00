"""Reporting linear-probe results: the stdout table, ``metrics.json``, ``metrics.csv`` and the plots."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from giga_ssl_hf.evaluation.results import ProbeResult
from giga_ssl_hf.files import atomic_file, write_json

logger = logging.getLogger(__name__)


def format_auc(result: ProbeResult) -> str:
    return f"{result.mean:.3f} ± {result.std:.3f}"


def _has_baselines(results: list[ProbeResult]) -> bool:
    return len({r.embedding for r in results}) > 1


def summary_frame(results: list[ProbeResult]) -> pd.DataFrame:
    """One row per task, split folder and training size (the content of ``metrics.csv``); with baselines in
    the results, an ``embedding`` column says which embeddings each row probed."""
    with_embedding = _has_baselines(results)
    return pd.DataFrame(
        [
            {
                **({"embedding": r.embedding} if with_embedding else {}),
                "task": r.task,
                "split_set": r.split_set,
                "train_size": r.train_size,
                "n_splits": len(r.splits),
                "n_train": r.mean_n_train,
                "n_test": sum(s.n_test for s in r.splits) / len(r.splits),
                "auc_mean": r.mean,
                "auc_std": r.std,
                **{f"n_dropped_{reason}": len(ids) for reason, ids in r.dropped.items()},
            }
            for r in results
        ]
    )


def format_table(results: list[ProbeResult]) -> str:
    """Plain-text table of mean ± std AUC per task, split folder and training size."""
    frame = summary_frame(results)
    frame["n_train"] = frame["n_train"].round().astype(int)
    frame["n_test"] = frame["n_test"].round().astype(int)
    frame["AUC"] = [format_auc(r) for r in results]
    dropped = [c for c in frame.columns if c.startswith("n_dropped_")]
    frame["dropped"] = frame[dropped].sum(axis=1) if dropped else 0
    columns = ["task", "split_set", "train_size", "n_splits", "n_train", "n_test", "dropped", "AUC"]
    if _has_baselines(results):
        columns.insert(1, "embedding")
    return (
        frame[columns]
        .rename(columns={"split_set": "splits", "train_size": "train size"})
        .to_string(index=False)
    )


def metrics_dict(results: list[ProbeResult], config: dict | None = None) -> dict:
    """Nested ``{task: {split folder: {...dropped IDs, train sizes: {size: AUCs}}}}`` for ``metrics.json``; a
    baseline's results (e.g. mean pooling) go, nested the same way, under ``baselines: {name: {task: ...}}``."""
    tasks: dict = {}
    baselines: dict = {}
    main = results[0].embedding if results else None
    for r in results:
        entry = r.to_dict()
        by_task = tasks if r.embedding == main else baselines.setdefault(r.embedding, {})
        split_set = by_task.setdefault(r.task, {}).setdefault(
            r.split_set,
            {
                "classes": r.classes,
                "n_dropped": entry["n_dropped"],
                "ids_dropped": r.dropped,
                "train_sizes": {},
            },
        )
        split_set["train_sizes"][r.train_size] = {k: entry[k] for k in ("auc_mean", "auc_std", "splits")}
    return {"config": config or {}, "tasks": tasks, **({"baselines": baselines} if baselines else {})}


def write_outputs(
    results: list[ProbeResult], out_dir: str | Path, config: dict | None = None, plots: bool = True
) -> list[Path]:
    """Write ``metrics.json``, ``metrics.csv`` and (unless ``plots=False``) the PNG plots; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / "metrics.json", out_dir / "metrics.csv"
    write_json(json_path, metrics_dict(results, config), sort_keys=False)
    with atomic_file(csv_path) as handle:
        summary_frame(results).to_csv(handle, index=False)
    written = [json_path, csv_path]
    if plots:
        from giga_ssl_hf.evaluation.plots import plot_all

        # Plots show the evaluated embeddings; baselines are in the table, metrics.json and metrics.csv.
        written += plot_all([r for r in results if r.embedding == results[0].embedding], out_dir)
    logger.info("wrote %d files to %s", len(written), out_dir)
    return written
