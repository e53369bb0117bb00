"""Linear-probe evaluation of slide embeddings with the Giga-SSL paper's protocol.

What it shows:

1. loading slide embeddings with ``giga_ssl_hf.load_embeddings``: a local folder (a saved ``datasets``
   Dataset with ``slide_id`` / ``embedding`` columns, or the paper's ``embeddings.npy`` + ``ids.npy``) or a
   Hub dataset repo id (``owner/name``; downloaded, or read from the HF cache with ``HF_HUB_OFFLINE=1``);
2. the paper's probe: ``LogisticRegression(C=10, class_weight='balanced')`` on the embeddings, AUC over a
   stratified k-fold cross-validation (mean ± std), optionally with few-shot training-set sizes;
3. the metrics table, ``metrics.json`` / ``metrics.csv`` and the ROC / few-shot plots in ``OUT/results``.

Without ``--embeddings`` it first makes its own: synthetic tile features with two planted classes
(``synthetic_tile_dataset``) embedded by a small random-init Giga-SSL model (``embed_tile_dataset``), saved
to ``OUT/embeddings`` with a labels CSV, then loaded back like any other embeddings folder.

Run (about 15 s on 2 CPU cores):

    python examples/02_linear_probe.py
    python examples/02_linear_probe.py --embeddings runs/cohort/embeddings --labels labels.csv --folds 10
    python examples/02_linear_probe.py --embeddings owner/giga-ssl-embeddings --labels labels.csv

Labels CSV: columns ``ID`` (slide ID, the slide file's stem) and ``label``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import datasets
import numpy as np
import torch
import transformers

import giga_ssl_hf
from giga_ssl_hf.evaluation import evaluate_embeddings, format_table, write_outputs

DEFAULT_OUT = Path("examples_output") / "02_linear_probe"


def make_synthetic_embeddings(out: Path, n_slides: int, n_views: int, seed: int) -> tuple[Path, Path]:
    """Embed synthetic slides of two planted classes; returns (embeddings folder, labels CSV)."""
    from giga_ssl_hf.features.synthetic_features import synthetic_tile_dataset
    from giga_ssl_hf.inference.embed import embed_tile_dataset, save_embeddings

    tiles, classes = synthetic_tile_dataset(
        n_slides=n_slides, feature_dim=32, tiles_per_slide=40, class_signal=1.5, augmented=False, seed=seed
    )
    torch.manual_seed(seed)
    model = giga_ssl_hf.GigaSSLModel(giga_ssl_hf.GigaSSLConfig(feature_dim=32, hidden_dim=64)).eval()
    ids, embeddings = embed_tile_dataset(model, tiles, n_views=n_views, seed=seed, progress=False)
    metadata = {"model": "random-init GigaSSLModel (example 02)", "n_views": n_views, "seed": seed}
    folder = save_embeddings(out / "embeddings", ids, embeddings, metadata, npy=True)
    labels = out / "planted_classes.csv"
    names = {0: "class_a", 1: "class_b"}
    labels.write_text("ID,label\n" + "".join(f"{i},{names[c]}\n" for i, c in classes.items()))
    return folder, labels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--embeddings", default=None, help="embeddings folder or Hub dataset id (default: synthetic ones)"
    )
    parser.add_argument("--labels", default=None, help="labels CSV (ID,label); required with --embeddings")
    parser.add_argument("--folds", type=int, default=5, help="stratified folds")
    parser.add_argument(
        "--train-sizes", default="10,20,full", help="few-shot training sizes per fold, e.g. '10,25%%,full'"
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder")
    parser.add_argument("--n-slides", type=int, default=60, help="synthetic slides (default data only)")
    parser.add_argument("--n-views", type=int, default=50, help="views per embedding (default data only)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    # no per-file progress bars from datasets / transformers: the example prints its own results
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    if args.embeddings and not args.labels:
        parser.error("--labels is required with --embeddings")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    source, labels = args.embeddings, args.labels
    if source is None:
        source, labels = make_synthetic_embeddings(out, args.n_slides, args.n_views, args.seed)

    ids, embeddings = giga_ssl_hf.load_embeddings(source)  # (N,) str, (N, E) float32
    print(f"{len(ids)} slide embeddings of dimension {embeddings.shape[1]} from {source}")
    print(
        f"norms: min {np.linalg.norm(embeddings, axis=1).min():.3f}, max {np.linalg.norm(embeddings, axis=1).max():.3f}"
    )

    results = evaluate_embeddings(
        (ids, embeddings), labels, folds=args.folds, train_sizes=args.train_sizes, seed=args.seed
    )  # task name: the labels file's stem
    print(format_table(results))
    written = write_outputs(
        results,
        out / "results",
        config={"embeddings": str(source), "labels": str(labels), "folds": args.folds},
    )
    print("wrote " + ", ".join(str(p) for p in written))
    return {"results": results, "written": written, "embeddings": str(source), "labels": str(labels)}


if __name__ == "__main__":
    main()
