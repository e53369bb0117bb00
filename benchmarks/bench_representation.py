"""What do slide embeddings capture? Linear-probe AUC of Giga-SSL recipes beside honest baselines.

A synthetic cohort generator (written for this benchmark) makes tile features in the package's schema: slides
of 200-1200 tissue tiles on a grid (a blob of tissue), several tissue types laid out in patches, each type a
prototype feature vector plus per-slide variation and tile noise, a per-slide stain shift in a 3-d "stain"
subspace, and shared augmentations that move the stain subspace (as colour jitter moves stain). Three kinds of
label signal:

- ``rare`` (composition-rare): a contiguous region covering 3-20% of the tissue whose tissue type differs
  between the classes;
- ``broad`` (composition-broad + stain): the same with a 5-30% region, and a strong per-slide stain shift;
- ``architecture`` (architecture-only): both classes hold tissue types A and B in the same numbers (exactly),
  as one region where A and B tiles are intermixed (class 1: A borders B everywhere) or as two separate
  regions (class 0: A and B apart). The mean of the tile features is the same in distribution for both
  classes, so mean pooling is at chance by construction.

Per cohort, recipes trained and embedded with the package's own code (``train``, ``embed_tile_dataset``) and
probed with ``evaluate_embeddings`` (three seeded 2-fold stratified CVs: 200 labelled training slides and 200
test slides per fold, and the training set subsampled to 50), with the paper's probe (C=10 on the L2-normalised
vectors) and with ``standardize=True`` (C=10):

- ``paper``: 5-tile random views, Adam at 0.03 x batch/256, 10% warm-up then cosine (the paper's recipe);
- ``paper lr=0.002``: the same views with a 3.75x lower learning rate (does the optimiser hold it back?);
- ``window``: window views (``--tile-sampling window``, ``--n_tiles`` 16), Adam at 0.002 (warm-up, cosine),
  embedded with ``embed --tile-sampling window``;
- ``untrained``: the same encoder, random initialisation, embedded with window views;
- ``mean-pool``: the mean of each slide's exhaustive tile features;
- ``hybrid``: the window embedding with the standardised mean pool appended (``embed --concat-mean-pool``).

    python benchmarks/bench_representation.py            # the full table: ~5 min on 2 idle cores, ~20 loaded
    python benchmarks/bench_representation.py --quick    # smoke test: tiny cohorts, a few steps
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import torch

from giga_ssl_hf import GigaSSLModel
from giga_ssl_hf.contracts import NO_AUGMENTATION
from giga_ssl_hf.contracts.tile_features import tile_features_schema
from giga_ssl_hf.evaluation.probe import evaluate_embeddings
from giga_ssl_hf.features.pooling import mean_pool, standardise_over_slides
from giga_ssl_hf.features.synthetic_features import append_tile_row
from giga_ssl_hf.features.windows import window_indices
from giga_ssl_hf.inference.embed import embed_tile_dataset
from giga_ssl_hf.training.arguments import parse_arguments
from giga_ssl_hf.training.train import train

SIGNALS = ("rare", "broad", "architecture")
PATCH = 224  # level-0 px per tile
N_BACKGROUND_TYPES = 4
TYPE_A, TYPE_B = N_BACKGROUND_TYPES, N_BACKGROUND_TYPES + 1  # the two label-bearing tissue types
STAIN_DIMS = 3


@dataclass
class CohortSettings:
    n_slides: int = 400
    feature_dim: int = 32
    n_aug: int = 4
    min_tiles: int = 200
    max_tiles: int = 1200
    tile_noise: float = 0.6
    slide_variation: float = 0.25  # per-slide offset of every tissue prototype (biological variability)
    stain: float = 0.5  # per-slide stain shift (std); "broad" uses 4x this
    augmentation_stain: float = 1.0  # per-augmentation stain shift (std)
    seed: int = 0


def tissue_blob(n: int, rng: np.random.Generator) -> np.ndarray:
    """Grid cells ``(n, 2)`` of a connected-looking blob of tissue: an ellipse with a wobbly edge."""
    side = int(math.ceil(math.sqrt(n * 2.5)))
    y, x = np.mgrid[0:side, 0:side]
    cells = np.stack([x.ravel(), y.ravel()], axis=1)
    centre = side / 2
    a, b = rng.uniform(0.7, 1.3, size=2)
    angle = np.arctan2(cells[:, 1] - centre, cells[:, 0] - centre)
    wobble = 1 + 0.15 * np.sin(3 * angle + rng.uniform(0, 2 * np.pi)) + 0.1 * np.sin(5 * angle)
    radius = np.hypot((cells[:, 0] - centre) / a, (cells[:, 1] - centre) / b) / wobble
    return cells[np.argsort(radius + 0.3 * rng.random(len(cells)))[:n]]


def background_types(cells: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A tissue type per cell: patches (Voronoi cells of a few seeds), each of a random background type."""
    seeds = cells[rng.choice(len(cells), size=6, replace=False)]
    nearest = ((cells[:, None, :] - seeds[None]) ** 2).sum(-1).argmin(1)
    return rng.integers(0, N_BACKGROUND_TYPES, size=len(seeds))[nearest]


def label_types(signal: str, label: int, cells: np.ndarray, types: np.ndarray, rng: np.random.Generator):
    """Plant the label's tissue in ``types`` (in place) as the signal kind describes."""
    n = len(cells)
    if signal in ("rare", "broad"):
        low, high = (0.03, 0.20) if signal == "rare" else (0.05, 0.30)
        size = max(1, int(round(rng.uniform(low, high) * n)))
        region = window_indices(cells, rng.integers(0, n, size=1), size, rng)[0]
        types[region] = TYPE_A if label else TYPE_B
        return
    # architecture: the same number of A and B tiles in both classes; only their arrangement differs.
    half = max(1, int(round(rng.uniform(0.08, 0.15) * n)))
    first = int(rng.integers(0, n))
    if label:  # one region, A and B intermixed: A borders B everywhere
        region = window_indices(cells, np.array([first]), 2 * half, rng)[0]
        types[region] = np.where(rng.permutation(2 * half) < half, TYPE_A, TYPE_B)
        return
    region_a = window_indices(cells, np.array([first]), half, rng)[0]
    far = int(np.argmax(((cells - cells[first]) ** 2).sum(1)))  # B as far from A as the tissue allows
    others = np.setdiff1d(np.arange(n), region_a)
    region_b = others[window_indices(cells[others], np.searchsorted(others, [far]), half, rng)[0]]
    types[region_a], types[region_b] = TYPE_A, TYPE_B


def make_cohort(
    signal: str, settings: CohortSettings, region_masks: dict | None = None, member=None
) -> tuple[datasets.Dataset, datasets.Dataset, pd.Series]:
    """(augmented Dataset with every tile in each augmentation row, exhaustive Dataset, labels). A
    ``region_masks`` dict receives each slide's `(n,)` bool mask of its label tissue (types A and B), in tile
    order (``bench_localisation.py`` scores heatmaps against it).

    ``member`` (an ``arrangement_family.ArrangementMember``, named by ``signal``) plants its own arrangement signal
    and tissue prototypes instead of one of ``SIGNALS``."""
    cohort_index = SIGNALS.index(signal) if member is None else zlib.crc32(signal.encode())
    rng = np.random.default_rng([settings.seed, cohort_index])
    dim = settings.feature_dim
    prototypes = rng.normal(size=(N_BACKGROUND_TYPES + 2, dim)) * 1.0
    if member is not None:
        prototypes = member.prototypes(prototypes)
    stain_basis = np.linalg.qr(rng.normal(size=(dim, STAIN_DIMS)))[0].T  # (3, D) orthonormal rows
    stain = settings.stain * (4.0 if signal == "broad" else 1.0)
    schema = tile_features_schema(dim)
    exhaustive = {name: [] for name in schema}
    augmented = {name: [] for name in schema}
    labels = {}
    for slide in range(settings.n_slides):
        slide_id = f"{signal}_{slide:04d}"
        label = slide % 2
        labels[slide_id] = str(label)
        n = int(rng.integers(settings.min_tiles, settings.max_tiles + 1))
        cells = tissue_blob(n, rng)
        types = background_types(cells, rng)
        if member is None:
            label_types(signal, label, cells, types, rng)
        else:
            member.plant(label, cells, types, rng)
        if region_masks is not None:
            region_masks[slide_id] = types >= N_BACKGROUND_TYPES
        slide_prototypes = prototypes + settings.slide_variation * rng.normal(size=prototypes.shape)
        tiles = slide_prototypes[types] + settings.tile_noise * rng.normal(size=(n, dim))
        tiles += (stain * rng.normal(size=STAIN_DIMS)) @ stain_basis
        coords = (cells * PATCH).astype(np.int64)
        rows = [(NO_AUGMENTATION, tiles, exhaustive)]
        for aug in range(settings.n_aug):
            shift = (settings.augmentation_stain * rng.normal(size=STAIN_DIMS)) @ stain_basis
            rows.append((aug, tiles + shift + 0.2 * rng.normal(size=tiles.shape), augmented))
        for aug_id, features, columns in rows:
            append_tile_row(columns, slide_id, aug_id, features, coords, PATCH)
    return (
        datasets.Dataset.from_dict(augmented, features=schema),
        datasets.Dataset.from_dict(exhaustive, features=schema),
        pd.Series(labels),
    )


@dataclass
class Recipe:
    name: str
    tile_sampling: str
    n_tiles: int
    learning_rate: float | None = None  # None: the paper's 0.03 x batch / 256
    options: tuple[str, ...] = ()  # more giga-ssl train options


def train_recipe(recipe: Recipe, features: Path, out: Path, args) -> tuple[GigaSSLModel, dict]:
    argv = [
        "--features", str(features), "--output_dir", str(out), "--report_to", "none", "--save_steps", "0",
        "--hidden_dim", str(args.hidden_dim), "--projection_dims", str(args.hidden_dim), str(args.hidden_dim), "64",
        "--batch_size", str(args.batch_size), "--max_steps", str(args.steps), "--n_tiles", str(recipe.n_tiles),
        "--tile_sampling", recipe.tile_sampling, "--seed", str(args.seed), "--logging_steps", str(args.steps),
    ]  # fmt: skip
    if recipe.learning_rate is not None:
        argv += ["--learning_rate", str(recipe.learning_rate)]
    argv += list(recipe.options)
    summary = train(*parse_arguments(argv))
    return GigaSSLModel.from_pretrained(out / "final").eval(), summary


def embed(
    model, exhaustive, tile_sampling: str, n_tiles: int, args, top_site_fractions=None
) -> tuple[np.ndarray, np.ndarray]:
    return embed_tile_dataset(
        model, exhaustive, tile_sampling=tile_sampling, n_views=args.n_views, n_tiles=n_tiles, seed=args.seed,
        max_views_per_batch=2048, progress=False, top_site_fractions=top_site_fractions,
    )  # fmt: skip


PROBES = {"paper": False, "std": True}  # name: standardize (C=10, the paper's, in both)


def probe(
    ids, vectors, labels: pd.Series, sizes: str, seed: int, repeats: int
) -> dict[tuple[str, str], float]:
    """{(probe, train size): AUC averaged over ``repeats`` seeded 2-fold CVs (2 x repeats splits)}."""
    aucs: dict[tuple[str, str], list[float]] = {}
    for name, standardize in PROBES.items():
        for repeat in range(repeats):
            for result in evaluate_embeddings(
                (ids, vectors), labels, folds=2, train_sizes=sizes, seed=seed + repeat, task="t",
                standardize=standardize,
            ):  # fmt: skip
                aucs.setdefault((name, result.train_size), []).extend(result.aucs.tolist())
    return {key: float(np.mean(values)) for key, values in aucs.items()}


def loss_report(summary: dict, batch_size: int) -> str:
    losses = np.array([loss for _, loss in summary["loss_history"]])
    warmup = max(1, len(losses) // 10)
    return (
        f"first {losses[0]:.2f}, max in warm-up {losses[:warmup].max():.2f}, last 10% {losses[-len(losses) // 10 :].mean():.2f} "
        f"(chance log(2B-1) = {math.log(2 * batch_size - 1):.2f})"
    )


def run(args) -> None:
    settings = CohortSettings(n_slides=args.slides, seed=args.seed)
    if args.quick:
        settings.min_tiles, settings.max_tiles = 60, 120
    recipes = [
        recipe
        for recipe in (
            Recipe("paper", "random", 5),
            Recipe("window", "window", args.window_tiles, args.window_lr),
        )
        if recipe.name in args.recipes
    ]
    # The paper's views at another learning rate: does the optimiser hold the representation back?
    if args.paper_lr:
        recipes.append(Recipe(f"paper lr={args.paper_lr:g}", "random", 5, args.paper_lr))
    sizes = f"{args.small},{args.large}"
    rows, losses = [], []
    with tempfile.TemporaryDirectory(prefix="bench_representation_") as tmp:
        for signal in args.signals:
            start = time.perf_counter()
            augmented, exhaustive, labels = make_cohort(signal, settings)
            augmented_dir = Path(tmp) / signal / "augmented"
            augmented.save_to_disk(str(augmented_dir))
            ids, means = mean_pool(exhaustive)
            vectors = {"mean-pool": means / np.linalg.norm(means, axis=1, keepdims=True)}
            log = logging.getLogger(__name__)
            log.info("%s: cohort made in %.0f s", signal, time.perf_counter() - start)
            for recipe in recipes:
                model, summary = train_recipe(recipe, augmented_dir, Path(tmp) / signal / recipe.name, args)
                losses.append((signal, recipe.name, loss_report(summary, args.batch_size)))
                log.info("%s: %s trained at %.0f s", signal, recipe.name, time.perf_counter() - start)
                _, vectors[recipe.name] = embed(model, exhaustive, recipe.tile_sampling, recipe.n_tiles, args)
                log.info("%s: %s embedded at %.0f s", signal, recipe.name, time.perf_counter() - start)
            torch.manual_seed(args.seed)
            untrained = GigaSSLModel(model.config).eval()
            _, vectors["untrained"] = embed(untrained, exhaustive, "window", args.window_tiles, args)
            if "window" in vectors:
                vectors["hybrid"] = np.concatenate(
                    [vectors["window"], standardise_over_slides(means)], axis=1
                )
            methods = (
                [r.name for r in recipes] + ["untrained", "mean-pool"] + ["hybrid"] * ("window" in vectors)
            )
            for method in methods:
                aucs = probe(ids, vectors[method], labels, sizes, args.seed, args.repeats)
                rows.append(
                    {"signal": signal, "method": method, **{f"{p} @{n}": v for (p, n), v in aucs.items()}}
                )
            log.info("%s done in %.0f s", signal, time.perf_counter() - start)
    table = pd.DataFrame(rows)
    columns = [f"{p} @{n}" for p in PROBES for n in (args.small, args.large)]
    print(
        f"\nLinear-probe AUC, mean over {args.repeats} seeded 2-fold CVs of {args.slides} slides (test: the other "
        f"half; training half subsampled to {args.small} / {args.large} labelled slides). Probes: 'paper' = C=10 "
        "on the L2-normalised vectors; 'std' = StandardScaler fit on each training split, then C=10.\n"
    )
    print("| signal | method | " + " | ".join(columns) + " |")
    print("|---|---|" + "---:|" * len(columns))
    for _, row in table.iterrows():
        print(f"| {row['signal']} | {row['method']} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    print("\nSimCLR loss (per recipe):")
    for signal, name, text in losses:
        print(f"  {signal:12s} {name:14s} {text}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 40 small slides, 4 steps, 4 views")
    parser.add_argument("--signals", nargs="+", choices=SIGNALS, default=list(SIGNALS), help="cohorts to run")
    parser.add_argument("--slides", type=int, default=400, help="slides per cohort (default: 400)")
    parser.add_argument("--steps", type=int, default=100, help="SimCLR steps per recipe (default: 100)")
    parser.add_argument("--batch-size", type=int, default=64, help="slides per SimCLR batch (default: 64)")
    parser.add_argument("--hidden-dim", type=int, default=64, help="slide embedding dimension (default: 64)")
    parser.add_argument("--window-tiles", type=int, default=16, help="tiles per window view (default: 16)")
    parser.add_argument(
        "--window-lr",
        type=float,
        default=0.002,
        help="learning rate of the window recipe (default: 0.002)",
    )
    parser.add_argument(
        "--recipes",
        nargs="+",
        choices=("paper", "window"),
        default=["paper", "window"],
        help="recipes to train",
    )
    parser.add_argument(
        "--paper-lr",
        type=float,
        default=0.002,
        help="also train the paper's views at this learning rate (0: don't; default: 0.002)",
    )
    parser.add_argument("--n-views", type=int, default=32, help="views averaged per embedding (default: 32)")
    parser.add_argument("--small", type=int, default=50, help="few-shot training size (default: 50)")
    parser.add_argument("--large", type=int, default=200, help="larger training size (default: 200)")
    parser.add_argument("--repeats", type=int, default=3, help="seeded 2-fold CVs per probe (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of cohorts, training and probes")
    args = parser.parse_args(argv)
    if args.quick:
        args.slides, args.steps, args.n_views, args.batch_size, args.small, args.large = 40, 4, 4, 8, 10, 20
        args.repeats = 1
    os.environ.setdefault("TQDM_DISABLE", "1")  # one table, not hundreds of progress bars
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger(__name__).setLevel(logging.INFO)
    start = time.perf_counter()
    run(args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
