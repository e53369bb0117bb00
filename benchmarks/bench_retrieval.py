"""Similar-slide search: leave-one-out retrieval accuracy of Giga-SSL recipes beside mean pooling.

The three cohorts of ``bench_representation.py`` (rare region, broad region + stain, architecture only; its
generator and training code), the paper's recipe and window views trained with SimCLR, the hybrid (window +
``--concat-mean-pool``), and mean pooling. Each slide queries all the others by cosine similarity (itself
left out, as ``giga-ssl evaluate --retrieval`` does: ``retrieval_accuracy``); reported: top-1 accuracy (the
nearest slide's label) and majority vote of the 5 nearest. Mean pooling twice: L2-normalised mean tile features
(``evaluate --baseline mean-pool``) and standardised over the slides (the hybrid's half). Chance: 0.5.

    python benchmarks/bench_retrieval.py            # 3 cohorts x 400 slides, ~3 min on 2 idle cores
    python benchmarks/bench_retrieval.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
from bench_representation import SIGNALS, CohortSettings, Recipe, embed, make_cohort, train_recipe
from table import text_table

from giga_ssl_hf.evaluation.retrieval import MAJORITY_K, retrieval_accuracy
from giga_ssl_hf.features.pooling import mean_pool, standardise_over_slides

RECIPES = (Recipe("paper", "random", 5), Recipe("window", "window", 16))


def cohort_rows(signal: str, args, tmp: Path) -> list[dict]:
    """Retrieval accuracy of every embedding of one cohort."""
    settings = CohortSettings(n_slides=args.slides, seed=args.seed)
    if args.quick:
        settings.min_tiles, settings.max_tiles = 60, 120
    augmented, exhaustive, labels = make_cohort(signal, settings)
    augmented.save_to_disk(str(tmp / signal / "augmented"))
    ids, means = mean_pool(exhaustive)
    train_args = SimpleNamespace(hidden_dim=args.hidden_dim, batch_size=args.batch_size, steps=args.steps,
                                 seed=args.seed, n_views=args.n_views)  # fmt: skip
    vectors = {}
    for recipe in RECIPES:
        model, _ = train_recipe(recipe, tmp / signal / "augmented", tmp / signal / recipe.name, train_args)
        _, vectors[recipe.name] = embed(model, exhaustive, recipe.tile_sampling, recipe.n_tiles, train_args)
    standardised = standardise_over_slides(means)
    vectors["hybrid"] = np.concatenate([vectors["window"], standardised], axis=1)
    vectors["mean-pool"] = means / np.linalg.norm(means, axis=1, keepdims=True)
    vectors["mean-pool, standardised"] = standardised
    rows = []
    for name, embeddings in vectors.items():
        accuracy = retrieval_accuracy(ids, embeddings, labels)
        rows.append({"cohort": signal, "embedding": name, "top-1": accuracy["top1"],
                     f"majority@{MAJORITY_K}": accuracy[f"majority_at_{MAJORITY_K}"]})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 40 small slides, a few steps")
    parser.add_argument("--signals", nargs="+", choices=SIGNALS, default=list(SIGNALS), help="cohorts to run")
    parser.add_argument("--slides", type=int, default=400, help="slides per cohort")
    parser.add_argument("--steps", type=int, default=100, help="SimCLR steps per recipe")
    parser.add_argument("--batch-size", type=int, default=64, help="slides per SimCLR batch")
    parser.add_argument("--hidden-dim", type=int, default=64, help="slide embedding dimension")
    parser.add_argument("--n-views", type=int, default=32, help="views averaged per embedding")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.slides, args.steps, args.batch_size, args.n_views = 40, 4, 8, 4
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.disable(logging.WARNING)
    datasets.disable_progress_bars()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_retrieval_") as tmp:
        rows = [row for signal in args.signals for row in cohort_rows(signal, args, Path(tmp))]
    columns = [
        ("cohort", "<12"),
        ("embedding", "<23"),
        ("top-1", ">6.3f"),
        (f"majority@{MAJORITY_K}", ">10.3f"),
    ]
    text = (
        f"leave-one-out retrieval (cosine), {args.slides} slides per cohort, half of each class\n\n"
        f"{text_table(rows, columns)}\n\ntotal {time.perf_counter() - began:.0f} s"
    )
    print(text)
    return text


if __name__ == "__main__":
    main()
