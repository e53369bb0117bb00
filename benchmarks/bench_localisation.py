"""Do tile maps find the region a slide's label comes from? Tile AUC of every map method on held-out cohorts.

Cohorts with a known region in every class-1 slide: ``rare`` and ``broad`` from ``bench_representation.py`` (a
region of 3-20% / 5-30% of the tissue whose tissue type differs between the classes, per-slide stain shifts,
4x stronger on broad) and ``region`` (``synthetic_region_cohort``: a discriminative disc beside a decoy disc in
every slide, a fixed direction of the raw features). Per cohort the paper's recipe (5 random tiles per view)
and the window recipe are trained with SimCLR and the slides embedded as ``giga-ssl embed`` does; linear probes
are fit on every slide. Each class-1 slide's tiles are then scored for class 1, and the AUC of its scores
against its region mask is averaged over those slides (0.5 = chance). Rows (probe: the recommended standardised
one, C=10, unless named; every map but IG, occlusion and the baselines adds up exactly to the probe's score of
the slide's embedding as ``embed`` made it, from its views, unless ``one pass``):

- ``tiles (the default)``: ``giga-ssl heatmap`` (``--method tiles``): each tile's own embedding plus an equal
  share of the views' context; ``tiles, paper probe`` / ``std C=0.01``: the same under other probes;
- ``embedding (views | one pass)``: ``--method embedding`` (site shares) with each ``--slide-embedding``;
  ``(16x views)``: views drawn as embed draws them, 16 per tile on average (not the probe's own);
- ``IG (views | one pass)``: ``--method integrated-gradients``; ``IG (single tiles)``: IG of the log-odds of
  the mean of the tiles' own embeddings;
- ``occlusion`` (``--occlusion``: slow): drop of the log-odds without each tile's 3x3 neighbourhood;
- ``hybrid, tiles`` / ``hybrid, embedding``: the hybrid probe (window recipe + ``--concat-mean-pool``), its
  window half by each method (16-tile windows) plus its mean-pool half on each tile's own feature;
  ``hybrid mean-pool half``: the latter alone;
- ``ABMIL attention`` and ``x instance`` (their product with each tile's class-1 logit: the slide's logit is
  their sum plus the bias); ``raw-feature probe``: the mean-pooling probe applied to each tile's feature;
- ``oracle tile probe``: a logistic regression fit on the mapped slides' own tile embeddings against their
  masks (in-sample): how well the encoder's tile embeddings could separate the region at all.

The second table: each probe's slide AUC (3-fold CV) and the share of slides whose log-odds from the mean of
their tiles' own embeddings (no context term) have the sign of the probe's prediction.

    python benchmarks/bench_localisation.py             # the table: 3 cohorts x 120 slides, ~3-4 min on 1 core
    python benchmarks/bench_localisation.py --quick     # smoke test
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pandas as pd
import torch
from bench_representation import CohortSettings, Recipe, embed, make_cohort, train_recipe
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from table import text_table

from giga_ssl_hf.contracts.tile_features import TileArrays
from giga_ssl_hf.evaluation.mil import MILBaseline
from giga_ssl_hf.evaluation.mil_recipe import MILRecipe
from giga_ssl_hf.evaluation.probe import evaluate_embeddings
from giga_ssl_hf.evaluation.saved_probe import SavedProbe, fit_saved_probe
from giga_ssl_hf.features.pooling import mean_pool, standardise_over_slides
from giga_ssl_hf.features.synthetic_features import synthetic_region_cohort
from giga_ssl_hf.inference.hybrid_scores import HybridProbe
from giga_ssl_hf.inference.input_attributions import integrated_gradient_scores
from giga_ssl_hf.inference.own_tiles import own_tile_scores, single_tile_views
from giga_ssl_hf.inference.tile_scores import embedding_scores, occlusion_scores, tile_contributions
from giga_ssl_hf.inference.views import slide_views

COHORTS = ("rare", "broad", "region")


def cohort(name: str, args) -> tuple[datasets.Dataset, datasets.Dataset, pd.Series, dict]:
    """(augmented, exhaustive, labels as strings, region mask per slide)."""
    if name == "region":
        augmented, exhaustive, labels, masks = synthetic_region_cohort(
            n_slides=args.slides, feature_dim=args.feature_dim, seed=args.seed
        )
        return augmented, exhaustive, pd.Series({k: str(v) for k, v in labels.items()}), masks
    masks: dict = {}
    settings = CohortSettings(
        n_slides=args.slides, feature_dim=args.feature_dim, min_tiles=args.min_tiles, max_tiles=args.max_tiles,
        seed=args.seed,
    )  # fmt: skip
    augmented, exhaustive, labels = make_cohort(name, settings, masks)
    return augmented, exhaustive, labels, masks


def abmil_maps(exhaustive, ids, labels: pd.Series, seed: int):
    """A gated-attention MIL trained on every slide: per Dataset row, ``(attention, attention x logit)``."""
    arrays = TileArrays.from_dataset(exhaustive)
    patches = np.asarray(exhaustive.data.column("patch_size_level0").to_numpy(), dtype=np.float64)
    baseline = MILBaseline("abmil", arrays, patches, MILRecipe(seed=seed), np.arange(len(ids)))
    model = baseline.fit(np.arange(len(ids)), np.array([int(labels[s]) for s in ids]), 2)

    def maps(row: int) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            tiles = model.embed(torch.from_numpy(np.asarray(arrays.row(row)[0], dtype=np.float32)))
            pool = model.pool
            attention = torch.softmax(pool.score(pool.value(tiles) * pool.gate(tiles)).squeeze(1), dim=0)
            logits = model.classifier(tiles)
        return attention.numpy(), (attention * (logits[:, 1] - logits[:, 0])).numpy()

    return maps


@dataclass
class Fitted:
    """One cohort's trained encoders, probes and baselines."""

    paper: object
    window: object
    probes: dict
    abmil: object
    hybrid: HybridProbe


def tiles_alone_embeddings(model, exhaustive) -> np.ndarray:
    """`(N, E)` every slide's tiles-alone embedding: the mean of its tiles' own embeddings, L2-normalised."""
    arrays = TileArrays.from_dataset(exhaustive)
    patch = int(exhaustive[0]["patch_size_level0"])
    result = []
    for row in range(len(exhaustive)):
        features, coords = arrays.row(row)
        shares = tile_contributions(model, np.asarray(features, np.float32), coords, patch,
                                    views=single_tile_views(len(coords)))  # fmt: skip
        mean = shares.mean(axis=0)
        result.append(mean / np.linalg.norm(mean))
    return np.array(result)


def sign_agreement(probe: SavedProbe, views: np.ndarray, alone: np.ndarray) -> float:
    """Share of slides whose log-odds from the tiles-alone embedding have the sign of the probe's prediction."""
    return float(np.mean(np.sign(probe.log_odds(alone, "1")) == np.sign(probe.log_odds(views, "1"))))


def fit_cohort(name: str, exhaustive, augmented_dir: Path, labels: pd.Series, tmp: Path, args):
    """Train both recipes, embed, fit the probes; returns ``(Fitted, slide ids, slide AUC rows)``."""
    ids, means = mean_pool(exhaustive)
    train_args = SimpleNamespace(hidden_dim=args.hidden_dim, batch_size=args.batch_size, steps=args.steps,
                                 seed=args.seed, n_views=args.n_views)  # fmt: skip
    paper, _ = train_recipe(Recipe("paper", "random", 5), augmented_dir, tmp / name / "paper", train_args)
    window, _ = train_recipe(Recipe("window", "window", 16), augmented_dir, tmp / name / "window", train_args)
    _, paper_embeddings = embed(paper, exhaustive, "random", 5, train_args)
    _, window_embeddings = embed(window, exhaustive, "window", 16, train_args)
    mean, std = means.mean(axis=0, dtype=np.float64), means.std(axis=0, dtype=np.float64)
    hybrid = np.concatenate([window_embeddings, standardise_over_slides(means, mean, std)], axis=1)
    recorded = {"concat_mean_pool": True, "mean_pool_mean": mean.tolist(), "mean_pool_std": std.tolist()}
    alone = {
        "paper": tiles_alone_embeddings(paper, exhaustive),
        "window": tiles_alone_embeddings(window, exhaustive),
    }
    alone["hybrid"] = np.concatenate([alone["window"], hybrid[:, args.hidden_dim :]], axis=1)
    sources = {  # name: (vectors, tiles-alone vectors, standardize, C)
        "paper": (paper_embeddings, alone["paper"], True, None),
        "paper, paper probe": (paper_embeddings, alone["paper"], False, None),
        "paper, std C=0.01": (paper_embeddings, alone["paper"], True, 0.01),
        "hybrid": (hybrid, alone["hybrid"], True, None), "mean-pool": (means, means, True, None),
    }  # fmt: skip
    probes, slide_rows = {}, []
    for key, (vectors, alone_vectors, standardize, C) in sources.items():
        probes[key] = fit_saved_probe(
            ids, vectors, labels, standardize=standardize, C=C, embeddings_metadata=recorded
        )
        result = evaluate_embeddings((ids, vectors), labels, folds=3, standardize=standardize, C=C)[-1]
        slide_rows.append({"cohort": name, "probe": key, "slide AUC (3-fold)": result.mean,
                           "sign, tiles alone": sign_agreement(probes[key], vectors, alone_vectors)})  # fmt: skip
    abmil = abmil_maps(exhaustive, ids, labels, args.seed)
    hybrid_probe = HybridProbe.split(probes["hybrid"], args.hidden_dim)
    return Fitted(paper, window, probes, abmil, hybrid_probe), ids, slide_rows


def slide_methods(fitted: Fitted, slide: str, features, coords, patch: int, args) -> dict:
    """Every map of one slide, as zero-argument callables (timed one by one)."""
    paper, probes, grid = fitted.paper, fitted.probes, coords // patch
    views = slide_views(len(coords), grid, slide, "random", args.n_views, 5, args.seed)
    many = slide_views(len(coords), grid, slide, "random", 16 * len(coords) // 5, 5, args.seed)
    alone = single_tile_views(len(coords))
    hybrid = fitted.hybrid
    windows = slide_views(len(coords), grid, slide, "window", args.n_views, 16, args.seed)

    def scored(scorer, probe_name: str, slide_embedding=views, model=paper, probe=None):
        probe = probe or probes[probe_name]
        return lambda: scorer(model, features, coords, patch, probe, "1", views=slide_embedding)

    def hybrid_scores(scorer):  # the window half with its own views, plus the mean-pool half
        encoder_half = scored(scorer, "", windows, fitted.window, hybrid.encoder_half)
        return lambda: encoder_half() + hybrid.mean_pool_scores(features, "1")

    def gradients(slide_embedding):
        return lambda: integrated_gradient_scores(paper, features, coords, patch, probes["paper"], "1",
                                                  views=slide_embedding)[0]  # fmt: skip

    methods = {
        "tiles (the default)": scored(own_tile_scores, "paper"),
        "embedding (views)": scored(embedding_scores, "paper"),
        "embedding (one pass)": scored(embedding_scores, "paper", None),
        "embedding (16x views)": scored(embedding_scores, "paper", many),
        "IG (views)": gradients(views), "IG (one pass)": gradients(None), "IG (single tiles)": gradients(alone),
        "tiles, paper probe": scored(own_tile_scores, "paper, paper probe"),
        "tiles, std C=0.01": scored(own_tile_scores, "paper, std C=0.01"),
        "hybrid, tiles": hybrid_scores(own_tile_scores), "hybrid, embedding": hybrid_scores(embedding_scores),
        "hybrid mean-pool half": lambda: hybrid.mean_pool_scores(features, "1"),
        "raw-feature probe": lambda: probes["mean-pool"].log_odds(features, "1"),
    }  # fmt: skip
    if args.occlusion:
        methods["occlusion"] = lambda: occlusion_scores(paper, features, coords, patch, probes["paper"], "1")
    return methods


def run_cohort(name: str, args, tmp: Path) -> tuple[list[dict], list[dict]]:
    augmented, exhaustive, labels, masks = cohort(name, args)
    augmented.save_to_disk(str(tmp / name / "augmented"))
    fitted, ids, slide_aucs = fit_cohort(name, exhaustive, tmp / name / "augmented", labels, tmp, args)
    arrays = TileArrays.from_dataset(exhaustive)
    patch = int(exhaustive[0]["patch_size_level0"])
    mapped = [row for row, slide in enumerate(ids) if labels[slide] == "1"][: args.maps]
    tiles = {row: np.asarray(arrays.row(row)[0], dtype=np.float32) for row in mapped}
    alone = {
        row: tile_contributions(fitted.paper, tiles[row], arrays.row(row)[1], patch,
                                views=single_tile_views(len(tiles[row])))
        for row in mapped
    }  # fmt: skip
    oracle = LogisticRegression(C=10, max_iter=2000, class_weight="balanced").fit(
        np.concatenate([alone[row] for row in mapped]), np.concatenate([masks[ids[row]] for row in mapped])
    )
    results: dict[str, list[tuple[float, float]]] = {}
    for row in mapped:
        methods = slide_methods(fitted, ids[row], tiles[row], arrays.row(row)[1], patch, args)
        methods |= {"ABMIL attention": lambda row=row: fitted.abmil(row)[0],
                    "ABMIL attention x instance": lambda row=row: fitted.abmil(row)[1],
                    "oracle tile probe": lambda row=row: oracle.decision_function(alone[row])}  # fmt: skip
        for method, score in methods.items():
            began = time.perf_counter()
            scores = score()
            seconds = time.perf_counter() - began
            results.setdefault(method, []).append((roc_auc_score(masks[ids[row]], scores), seconds))
    rows = [
        {"cohort": name, "method": method, "tile AUC": float(np.mean([a for a, _ in values])),
         "worst slide": float(np.min([a for a, _ in values])), "s / slide": float(np.mean([s for _, s in values]))}
        for method, values in results.items()
    ]  # fmt: skip
    return rows, slide_aucs


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: small cohorts, a few steps")
    parser.add_argument("--cohorts", nargs="+", choices=COHORTS, default=list(COHORTS))
    parser.add_argument("--slides", type=int, default=120, help="slides per cohort, half of class 1")
    parser.add_argument("--maps", type=int, default=20, help="class-1 slides mapped per cohort")
    parser.add_argument("--steps", type=int, default=100, help="SimCLR steps per recipe")
    parser.add_argument("--batch-size", type=int, default=32, help="slides per SimCLR batch")
    parser.add_argument("--hidden-dim", type=int, default=64, help="slide embedding dimension")
    parser.add_argument("--feature-dim", type=int, default=32, help="tile feature dimension")
    parser.add_argument("--min-tiles", type=int, default=200, help="tiles per slide, at least (rare, broad)")
    parser.add_argument("--max-tiles", type=int, default=600, help="tiles per slide, at most (rare, broad)")
    parser.add_argument("--n-views", type=int, default=32, help="views per slide embedding")
    parser.add_argument("--occlusion", action="store_true", help="also occlusion at radius 1 (slow)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.slides, args.maps, args.steps, args.batch_size, args.n_views = 16, 2, 3, 8, 4
        args.min_tiles, args.max_tiles = 60, 120
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.disable(logging.WARNING)
    datasets.disable_progress_bars()
    began = time.perf_counter()
    rows, slide_aucs = [], []
    with tempfile.TemporaryDirectory(prefix="bench_localisation_") as tmp:
        for name in args.cohorts:
            cohort_rows, cohort_aucs = run_cohort(name, args, Path(tmp))
            rows += cohort_rows
            slide_aucs += cohort_aucs
    text = "\n\n".join([
        f"tile AUC against the region mask, mean (and worst) over {args.maps} class-1 slides per cohort",
        text_table(rows, [("cohort", "<7"), ("method", "<27"), ("tile AUC", ">8.3f"), ("worst slide", ">11.3f"),
                          ("s / slide", ">9.3f")]),
        "slide AUC of each probe (3-fold CV) and share of slides whose tiles-alone log-odds have the sign of "
        "the probe's prediction",
        text_table(slide_aucs, [("cohort", "<7"), ("probe", "<18"), ("slide AUC (3-fold)", ">18.3f"),
                                ("sign, tiles alone", ">17.3f")]),
        f"total {time.perf_counter() - began:.0f} s",
    ])  # fmt: skip
    print(text)
    return text


if __name__ == "__main__":
    main()
