"""The paper's headline, tested: Giga-SSL + a linear probe beside supervised MIL and fine-tuning, few labels.

On synthetic cohorts in the package's tile-feature schema (``bench_representation.py``'s generator: ``rare``
and ``broad`` carry the label in tissue composition, ``architecture`` only in arrangement; the members of
``arrangement_family.py``, e.g. ``touching``, are more arrangement-only cohorts), every method is scored by
``evaluate_embeddings`` on the same seeded stratified k-fold splits (default: 3 folds of 300 slides, so 200
training slides, subsampled to 25 / 50 / 100 / 200 labelled slides):

- Giga-SSL recipes, trained with ``giga-ssl train``'s code and probed with the standardised probe
  (``evaluate --standardize``, C=10): ``paper`` (5 random tiles per view, the paper's learning rate), ``window``
  (16-tile windows at different places), ``window-pair`` (both views of a slide are windows around the same
  place, ``--tile-sampling window-pair``), ``hybrid`` (the window-pair embedding and the standardised mean
  tile feature, ``embed --concat-mean-pool``), ``hybrid-select`` (the same embedding; the probe chooses the
  encoder block, the mean-pool block or both per split by inner cross-validation, ``evaluate``'s default on
  hybrid embeddings);
- ``mean-pool``: the mean tile feature, same probe;
- supervised MIL on the exhaustive tile features: ``abmil`` (gated attention) and ``graph-mil`` (the same after
  message passing on the tile grid), as ``evaluate --baseline`` trains them;
- ``finetune``: the window-pair encoder and its linear head fine-tuned on each training split
  (:mod:`giga_ssl_hf.evaluation.finetune`: the standardised probe, then AdamW on encoder and head);
- ``kmeans-adjacency`` (on request): an unsupervised check that an arrangement signal is there to find (k-means
  of the tile features, then the share of neighbouring tile pairs per cluster pair), same probe.

    python benchmarks/bench_headline.py                        # the headline table (three cohorts)
    python benchmarks/bench_headline.py --cohorts touching touching-small touching-close \\
        --methods window window-pair hybrid mean-pool          # the arrangement family
    python benchmarks/bench_headline.py --cohorts rare broad architecture \\
        --methods window-pair hybrid hybrid-select mean-pool   # the hybrid against its halves
    python benchmarks/bench_headline.py --cohorts touching-small touching touching-close --methods window-pair \\
        --pair-places 4 --pair-disjoint --pair-tiles 64 --pair-pooling max --pair-whole-slide  # max pooling
    python benchmarks/bench_headline.py --cohorts touching-close rare --methods window-pair abmil --pair-places 4 \
        --pair-disjoint --pair-tiles 64 --pair-pooling top --pair-whole-slide --pair-embed-fractions 0.03 0.1 \
        --hidden-dim 256                                       # the window-pair-top preset, scale chosen per task
    python benchmarks/bench_headline.py --quick                # smoke test
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from arrangement_family import MEMBERS, adjacency_histograms
from bench_representation import SIGNALS, CohortSettings, Recipe, embed, make_cohort, train_recipe
from table import text_table

from giga_ssl_hf.contracts.slide_embeddings import ENCODER_BLOCK, MEAN_POOL_BLOCK, embedding_blocks
from giga_ssl_hf.contracts.tile_features import TileArrays
from giga_ssl_hf.evaluation.baselines import baseline_source
from giga_ssl_hf.evaluation.finetune import FineTuneBaseline, FineTuneRecipe, SlideTiles
from giga_ssl_hf.evaluation.mil_recipe import MILRecipe
from giga_ssl_hf.evaluation.probe import evaluate_embeddings
from giga_ssl_hf.features.pooling import mean_pool, standardise_over_slides

COHORTS = (*SIGNALS, *(name for name in MEMBERS if name != "intermixed"))  # "architecture" is intermixed
RECIPES = ("paper", "window", "window-pair")
HYBRIDS = ("hybrid", "hybrid-select")
METHODS = (*RECIPES, *HYBRIDS, "mean-pool", "abmil", "graph-mil", "finetune", "kmeans-adjacency")
LINEAR = (*RECIPES, *HYBRIDS)  # Giga-SSL + a linear probe
MIL = ("abmil", "graph-mil")
log = logging.getLogger("bench_headline")


def recipes(args) -> dict[str, Recipe]:
    return {
        "paper": Recipe("paper", "random", 5),
        "window": Recipe("window", "window", args.window_tiles, args.window_lr),
        "window-pair": Recipe(
            "window-pair",
            "window-pair",
            args.pair_tiles,
            args.window_lr,
            ("--places_per_slide", str(args.pair_places), "--view_offset", str(args.pair_offset))
            + ("--disjoint_views",) * args.pair_disjoint
            + ("--slide_pooling", args.pair_pooling)
            + ("--top_site_fraction", str(args.pair_top_fraction)) * (args.pair_top_fraction is not None),
        ),  # fmt: skip
    }


def needed_recipes(methods: list[str]) -> list[str]:
    """The recipes to train: those asked for, and window-pair for the hybrid and fine-tuning."""
    derived = {"window-pair"} if {*HYBRIDS, "finetune"} & set(methods) else set()
    return [name for name in RECIPES if name in methods or name in derived]


def score(
    source, labels, args, cohort: str, standardize: bool, blocks=None, chosen=None
) -> dict[str, list[float]]:
    """{training size: AUCs of the splits} of one method, on the benchmark's splits; with ``blocks``, the probe
    chooses among them and ``chosen`` ({size: Counter}) counts its choices."""
    aucs: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        for result in evaluate_embeddings(
            source, labels, folds=args.folds, train_sizes=args.sizes, seed=args.seed + repeat, task=cohort,
            standardize=standardize, blocks=blocks,
        ):  # fmt: skip
            aucs.setdefault(result.train_size, []).extend(result.aucs.tolist())
            if chosen is not None:
                chosen.setdefault(result.train_size, Counter()).update(s.block for s in result.splits)
    return aucs


def run_cohort(cohort: str, args, folder: Path) -> tuple[dict, dict, dict]:
    """({method: {size: AUCs}}, {method: seconds}, {method: {size: blocks chosen}}) on one cohort; blocks are
    chosen by hybrid-select, and by window-pair with --pair-embed-fractions."""
    settings = CohortSettings(
        n_slides=args.slides, min_tiles=args.min_tiles, max_tiles=args.max_tiles, seed=args.seed
    )
    augmented, exhaustive, labels = make_cohort(cohort, settings, member=MEMBERS.get(cohort))
    augmented.save_to_disk(str(folder / "augmented"))
    exhaustive.save_to_disk(str(folder / "exhaustive"))
    ids, means = mean_pool(exhaustive)
    vectors = {"mean-pool": means / np.linalg.norm(means, axis=1, keepdims=True)}
    seconds, models, results, chosen = {}, {}, {}, {}
    for name in needed_recipes(args.methods):
        start, recipe = time.perf_counter(), recipes(args)[name]
        models[name], _ = train_recipe(recipe, folder / "augmented", folder / name, args)
        tile_sampling, n_tiles = ("random" if recipe.tile_sampling == "random" else "window"), recipe.n_tiles
        fractions = args.pair_embed_fractions if name == "window-pair" else None
        if name == "window-pair" and args.pair_whole_slide:
            tile_sampling = "all"
        _, vectors[name] = embed(models[name], exhaustive, tile_sampling, n_tiles, args, fractions)
        seconds[name] = time.perf_counter() - start
        log.info("%s: %s trained and embedded in %.0f s", cohort, name, seconds[name])
    if "kmeans-adjacency" in args.methods:
        vectors["kmeans-adjacency"] = adjacency_histograms(exhaustive, seed=args.seed)
    if set(HYBRIDS) & set(args.methods):
        hybrid = np.concatenate([vectors["window-pair"], standardise_over_slides(means)], axis=1)
        vectors.update(dict.fromkeys(HYBRIDS, hybrid))
        blocks = {ENCODER_BLOCK: vectors["window-pair"].shape[1], MEAN_POOL_BLOCK: means.shape[1]}
    for method in args.methods:
        start = time.perf_counter()
        if method == "hybrid-select":
            source = (ids, vectors[method])
            results[method] = score(source, labels, args, cohort, True, blocks, chosen.setdefault(method, {}))
        elif method == "window-pair" and args.pair_embed_fractions:
            width = vectors[method].shape[1] // len(args.pair_embed_fractions)
            scales = embedding_blocks(width, args.pair_embed_fractions, None)
            source = (ids, vectors[method])
            results[method] = score(source, labels, args, cohort, True, scales, chosen.setdefault(method, {}))
        elif method in vectors:
            results[method] = score((ids, vectors[method]), labels, args, cohort, standardize=True)
        elif method in MIL:
            recipe = MILRecipe(epochs=args.mil_epochs, seed=args.seed)
            source = baseline_source(method, str(folder / "exhaustive"), recipe, labels.index)
            results[method] = score(source, labels, args, cohort, standardize=False)
        else:  # finetune
            patch = np.asarray(exhaustive.data.column("patch_size_level0").to_numpy(), dtype=np.float64)
            tiles = SlideTiles(TileArrays.from_dataset(exhaustive), patch, args.pair_tiles, "window")
            recipe = FineTuneRecipe(epochs=args.ft_epochs, n_views=args.ft_views, seed=args.seed)
            baseline = FineTuneBaseline(models["window-pair"], tiles, recipe, np.arange(len(ids)))
            results[method] = score((ids, baseline), labels, args, cohort, standardize=False)
        seconds[method] = seconds.get(method, 0.0) + time.perf_counter() - start
        log.info("%s: %s scored at %.0f s", cohort, method, seconds[method])
    return results, seconds, chosen


def summary_rows(results: dict, seconds: dict, sizes: list[str]) -> list[dict]:
    rows = []
    for cohort, methods in results.items():
        for method, aucs in methods.items():
            row = {"cohort": cohort, "method": method, "s": f"{seconds[cohort][method]:.0f}"}
            row.update({f"@{n}": f"{np.mean(aucs[n]):.3f} ± {np.std(aucs[n]):.3f}" for n in sizes})
            rows.append(row)
    return rows


def claim_rows(results: dict, sizes: list[str]) -> list[dict]:
    """Per cohort and size: the paper's recipe and the best Giga-SSL + linear against the best supervised MIL."""
    rows = []
    for cohort, methods in results.items():
        mil = [m for m in MIL if m in methods]
        linear = [m for m in LINEAR if m in methods]
        if not mil or not linear:
            continue
        for n in sizes:
            best_mil = max(mil, key=lambda m: np.mean(methods[m][n]))
            best = max(linear, key=lambda m: np.mean(methods[m][n]))
            mil_auc = np.mean(methods[best_mil][n])
            row = {"cohort": cohort, "labels": n, "best MIL": f"{best_mil} {mil_auc:.3f}"}
            row["best Giga-SSL + linear"] = f"{best} {np.mean(methods[best][n]):.3f}"
            row["diff"] = f"{np.mean(methods[best][n]) - mil_auc:+.3f}"
            row["holds"] = "yes" if np.mean(methods[best][n]) >= mil_auc else "no"
            if "paper" in methods:
                row["paper - MIL"] = f"{np.mean(methods['paper'][n]) - mil_auc:+.3f}"
            if "finetune" in methods and "window-pair" in methods:
                gain = np.mean(methods["finetune"][n]) - np.mean(methods["window-pair"][n])
                row["finetune - frozen"] = f"{gain:+.3f}"
            rows.append(row)
    return rows


def halves_rows(results: dict, chosen: dict, sizes: list[str]) -> list[dict]:
    """Per cohort and size, the hybrids against their better half (window-pair or mean pooling), worst first."""
    rows = []
    for cohort, methods in results.items():
        if not {"window-pair", "mean-pool", *HYBRIDS} <= set(methods):
            continue
        for n in sizes:
            auc = {method: np.mean(aucs[n]) for method, aucs in methods.items()}
            better = max(("window-pair", "mean-pool"), key=auc.get)
            row = {"cohort": cohort, "labels": n, "better half": f"{better} {auc[better]:.3f}"}
            row.update({method: auc[method] for method in HYBRIDS})
            row["select - better"] = auc["hybrid-select"] - auc[better]
            row["hybrid - better"] = auc["hybrid"] - auc[better]
            row["blocks chosen"] = blocks_chosen(chosen[cohort]["hybrid-select"][n])
            rows.append(row)
    return sorted(rows, key=lambda row: row["select - better"])


def blocks_chosen(counts: Counter) -> str:
    return ", ".join(f"{block} {k}" for block, k in counts.most_common())


def print_tables(results: dict, seconds: dict, chosen: dict, args) -> None:
    sizes = args.sizes.split(",")
    print(
        f"\nAUC, mean ± std over {args.repeats * args.folds} splits ({args.repeats} seeded {args.folds}-fold CV of "
        f"{args.slides} slides, training folds subsampled to {args.sizes} labelled slides); probe: standardised, "
        f"C=10; s = seconds to train, embed and score the method on the cohort ({torch.get_num_threads()} torch "
        "threads)\n"
    )
    columns = [("cohort", "<14"), ("method", "<16")] + [(f"@{n}", "<13") for n in sizes] + [("s", ">5")]
    print(text_table(summary_rows(results, seconds, sizes), columns))
    claims = claim_rows(results, sizes)
    if claims:
        print("\nThe paper's claim (Giga-SSL + linear >= supervised MIL), per cohort and training size:\n")
        keys = [key for key in claims[0] if key not in ("cohort", "labels")]
        print(text_table(claims, [("cohort", "<14"), ("labels", ">6")] + [(key, "<22") for key in keys]))
    halves = halves_rows(results, chosen, sizes)
    if halves:
        print("\nThe hybrids against their better half (window-pair or mean-pool), worst case first:\n")
        columns = [("cohort", "<14"), ("labels", ">6"), ("better half", "<17"), ("hybrid", ">6.3f")]
        columns += [
            ("hybrid-select", ">13.3f"),
            ("select - better", ">+15.3f"),
            ("hybrid - better", ">+15.3f"),
        ]
        print(text_table(halves, columns + [("blocks chosen", "<40")]))
    if args.pair_embed_fractions:
        print(
            "\nwindow-pair: the top-site fraction chosen per split by inner cross-validation (all: both blocks)\n"
        )
        rows = [
            {"cohort": cohort, "labels": n, "blocks chosen": blocks_chosen(counts)}
            for cohort, by_method in chosen.items()
            for n, counts in by_method.get("window-pair", {}).items()
        ]
        print(text_table(rows, [("cohort", "<14"), ("labels", ">6"), ("blocks chosen", "<40")]))


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="smoke test: 30 small slides, a few steps and epochs")
    add(
        "--cohorts",
        nargs="+",
        choices=COHORTS,
        default=list(SIGNALS),
        help="cohorts (default: rare broad architecture)",
    )
    add(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS[:-1]),
        help="methods (default: all but kmeans-adjacency)",
    )
    add("--slides", type=int, default=300, help="slides per cohort (default: 300)")
    add("--min-tiles", type=int, default=250, help="fewest tiles of a slide (default: 250)")
    add("--max-tiles", type=int, default=700, help="most tiles of a slide (default: 700)")
    add("--folds", type=int, default=3, help="folds of the stratified CV (default: 3)")
    add("--repeats", type=int, default=1, help="seeded CVs (default: 1)")
    add("--sizes", default="25,50,100,200", help="labelled training slides (default: 25,50,100,200)")
    add("--steps", type=int, default=300, help="SimCLR steps per recipe (default: 300)")
    add("--batch-size", type=int, default=64, help="slides per SimCLR batch (default: 64)")
    add("--hidden-dim", type=int, default=64, help="slide embedding dimension (default: 64)")
    add("--window-tiles", type=int, default=16, help="tiles per window view (default: 16)")
    add("--pair-tiles", type=int, default=32, help="tiles per window-pair view (default: 32)")
    add("--pair-places", type=int, default=1, help="window-pair: places per slide and step (default: 1)")
    add(
        "--pair-offset",
        type=int,
        default=0,
        help="window-pair: cells between the views' centres (default: 0)",
    )
    add("--pair-disjoint", action="store_true", help="window-pair: views with no tile in common")
    add(
        "--pair-pooling",
        choices=("mean", "max", "top"),
        default="mean",
        help="window-pair: the encoder's pooling over output sites, in training and embedding (default: mean)",
    )
    add(
        "--pair-top-fraction",
        type=float,
        help="window-pair with --pair-pooling top: the share of the sites averaged (default: the model config's)",
    )
    add(
        "--pair-whole-slide",
        action="store_true",
        help="window-pair: embed each slide in one pass over all its tiles (embed --tile-sampling all), not windows",
    )
    add(
        "--pair-embed-fractions",
        nargs="+",
        type=float,
        help="window-pair with --pair-pooling top and --pair-whole-slide: embed at each of these top-site "
        "fractions (embed --top-site-fractions), the probe choosing the block per split",
    )
    add("--window-lr", type=float, default=0.002, help="learning rate of the window recipes (default: 0.002)")
    add("--n-views", type=int, default=32, help="views averaged per embedding (default: 32)")
    add("--mil-epochs", type=int, default=MILRecipe.epochs, help="MIL epochs (default: the recipe's)")
    add(
        "--ft-epochs",
        type=int,
        default=FineTuneRecipe.epochs,
        help="fine-tuning epochs (default: the recipe's)",
    )
    add("--ft-views", type=int, default=FineTuneRecipe.n_views, help="views per fine-tuned embedding")
    add("--seed", type=int, default=0, help="seed of cohorts, training and splits")
    args = parser.parse_args(argv)
    if args.pair_embed_fractions and not (args.pair_pooling == "top" and args.pair_whole_slide):
        parser.error("--pair-embed-fractions needs --pair-pooling top and --pair-whole-slide")
    if args.pair_embed_fractions and (len(args.pair_embed_fractions) < 2 or set(HYBRIDS) & set(args.methods)):
        parser.error(
            "--pair-embed-fractions takes two fractions or more, and no hybrid method (one block each)"
        )
    if args.quick:
        args.slides, args.min_tiles, args.max_tiles, args.steps, args.batch_size = 30, 120, 200, 3, 8
        args.sizes, args.n_views, args.mil_epochs, args.ft_epochs, args.ft_views = "5,20", 4, 2, 2, 4
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)
    start = time.perf_counter()
    results, seconds, chosen = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="bench_headline_") as tmp:
        for cohort in args.cohorts:
            results[cohort], seconds[cohort], chosen[cohort] = run_cohort(cohort, args, Path(tmp) / cohort)
    print_tables(results, seconds, chosen, args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
