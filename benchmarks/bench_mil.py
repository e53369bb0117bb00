"""Supervised MIL baselines beside mean pooling: AUC and training time per fit, on the representation cohorts.

The cohorts are bench_representation.py's (``rare`` and ``broad``: a tissue region whose type carries the
class; ``architecture``: the same tissue types in the same numbers, intermixed or apart, so mean pooling and
attention MIL, which see a bag of tiles, are at chance by construction). Each method goes through
``evaluate_embeddings`` (seeded 2-fold stratified CV, the training half subsampled to ``--small`` / ``--large``
slides), exactly as ``giga-ssl evaluate --baseline mean-pool abmil graph-mil`` runs them:

- ``mean-pool``: the paper's probe (C=10) on the L2-normalised mean tile features;
- ``abmil``: gated attention MIL, trained per split and training size (the package's default recipe);
- ``graph-mil``: the same after two rounds of message passing between 8-neighbour tiles of the grid.

``s/fit`` is the mean wall time of one MIL fit (train + predict) at the larger training size.

    python benchmarks/bench_mil.py            # 200 slides per cohort, 200-1200 tiles x 32-d: ~13 min, 2 busy cores
    python benchmarks/bench_mil.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from bench_representation import SIGNALS, CohortSettings, make_cohort
from table import text_table

from giga_ssl_hf.evaluation.baselines import baseline_source
from giga_ssl_hf.evaluation.mil_recipe import MILRecipe
from giga_ssl_hf.evaluation.probe import evaluate_embeddings

METHODS = ("mean-pool", "abmil", "graph-mil")


def run_signal(signal: str, args, folder: Path) -> list[dict]:
    settings = CohortSettings(n_slides=args.slides, seed=args.seed)
    if args.quick:
        settings.min_tiles, settings.max_tiles = 60, 120
    _, exhaustive, labels = make_cohort(signal, settings)
    exhaustive.save_to_disk(str(folder))
    recipe = MILRecipe(epochs=args.epochs, seed=args.seed, device=args.device)
    rows = []
    for method in METHODS:
        source = baseline_source(method, str(folder), recipe, labels.index)
        start = time.perf_counter()
        results = evaluate_embeddings(
            source, labels, folds=2, train_sizes=f"{args.small},{args.large}", seed=args.seed, task=signal
        )
        seconds = time.perf_counter() - start
        auc = {r.train_size: r.mean for r in results}
        n_fits = sum(len(r.splits) for r in results)
        rows.append(
            {
                "signal": signal,
                "method": method,
                f"AUC @{args.small}": auc[str(args.small)],
                f"AUC @{args.large}": auc[str(args.large)],
                # mean pooling is a probe, not a fit: no time to report
                "s/fit": "-" if method == "mean-pool" else f"{seconds / n_fits:.1f}",
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 40 small slides, 3 epochs")
    parser.add_argument("--signals", nargs="+", choices=SIGNALS, default=list(SIGNALS), help="cohorts to run")
    parser.add_argument("--slides", type=int, default=200, help="slides per cohort (default: 200)")
    parser.add_argument(
        "--epochs", type=int, default=MILRecipe.epochs, help="MIL epochs (default: the recipe's)"
    )
    parser.add_argument("--small", type=int, default=20, help="few-shot training size (default: 20)")
    parser.add_argument("--large", type=int, default=100, help="larger training size (default: 100)")
    parser.add_argument("--device", default="cpu", help="device of the MIL fits (default: cpu)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.slides, args.epochs, args.small, args.large = 40, 3, 8, 20
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_mil_") as tmp:
        for signal in args.signals:
            rows += run_signal(signal, args, Path(tmp) / signal)
    print(
        f"\nAUC, seeded 2-fold CV of {args.slides} slides (training half subsampled to {args.small} / "
        f"{args.large}); MIL: {args.epochs} epochs on {args.device}, {torch.get_num_threads()} torch threads\n"
    )
    columns = [("signal", "<12"), ("method", "<9"), (f"AUC @{args.small}", ">8.3f")]
    columns += [(f"AUC @{args.large}", ">8.3f"), ("s/fit", ">6")]
    print(text_table(rows, columns))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
