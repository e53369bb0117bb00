"""``giga-ssl evaluate``: the paper's linear-probe AUC on slide embeddings, from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """\
protocol (Giga-SSL paper): LogisticRegression(C=10, max_iter=1000, class_weight="balanced") on the slide
embeddings; AUC of predict_proba[:, 1] for two classes, macro one-vs-rest AUC for more; mean and std
(population) over the splits. IDs of a split that have no embedding or no label are dropped and reported.

beyond the paper (off by default, so the paper's tables are reproduced unchanged): --standardize z-scores
each feature with a scaler fit on each training split only; --C sets the classifier's C, or lists several,
one chosen per split by a stratified 5-fold inner cross-validation (AUC) on that split's training slides
only; --baseline mean-pool --features DIR probes the mean of each slide's exhaustive tile features
(L2-normalised, like the slide embeddings) on the same splits with the same probe, in the same table.
The probe's scaling can decide results as much as the encoder does: report embeddings next to mean pooling.

examples:
  # the paper's fixed splits, every training size (full, 25p, 50, 100) of the lung task
  giga-ssl evaluate --embeddings runs/embeddings --labels tables/lung.csv \\
      --splits splitdirs/lung --out results/lung

  # 10-fold stratified CV with few-shot training sizes, embeddings from the Hub
  giga-ssl evaluate --embeddings owner/tcga-gigassl-embeddings --labels my_labels.csv \\
      --folds 10 --train-sizes 50,100,25%,full --seed 1

  # a release repo holding its label tables and splits (scripts/publish_tcga.py): the task name is enough
  giga-ssl evaluate --embeddings owner/tcga-gigassl --task lung

  # standardised probe, C chosen by inner CV, mean pooling of the tile features beside the embeddings
  giga-ssl evaluate --embeddings runs/embeddings --labels labels.csv --standardize \\
      --C 0.01,0.1,1,10 --baseline mean-pool --features out/exhaustive --train-sizes 50,200

  # several tasks at once: one --splits folder per labels file, in the same order
  giga-ssl evaluate --embeddings emb_npy/ --labels tables/lung.csv tables/kidney.csv \\
      --splits splitdirs/lung splitdirs/kidney
"""


def task_inputs(embeddings: str, tasks: list[str]) -> tuple[list[str], list[str] | None]:
    """Label tables and split folders of ``tasks`` inside the embeddings folder or Hub repo (its snapshot)."""
    from giga_ssl_hf.contracts.slide_embeddings import resolve_embeddings_folder

    folder = resolve_embeddings_folder(embeddings)
    labels, splits = [], []
    for task in tasks:
        table = folder / "tables" / f"{task}.csv"
        if not table.is_file():
            found = sorted(p.stem for p in (folder / "tables").glob("*.csv"))
            raise ValueError(
                f"{embeddings}: no label table tables/{task}.csv (tasks there: {found or 'none'})"
            )
        labels.append(str(table))
        splits.append(str(folder / "splitdirs" / task))
    if not all(Path(split).is_dir() for split in splits):
        return labels, None  # no split folders: stratified k-fold
    return labels, splits


def _given(argv: list[str] | None, flag: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in (sys.argv[1:] if argv is None else argv))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="giga-ssl evaluate",
        description="Linear-probe AUC of slide embeddings on labelled tasks (the Giga-SSL paper's protocol).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--embeddings",
        required=True,
        metavar="SOURCE",
        help="slide embeddings: a saved Dataset folder (slide_id, embedding), a folder with embeddings.npy + "
        "ids.npy, or a Hub dataset repo id (read from the HF cache when HF_HUB_OFFLINE=1)",
    )
    parser.add_argument(
        "--task",
        nargs="+",
        metavar="NAME",
        help="task(s) whose labels (tables/NAME.csv) and split folders (splitdirs/NAME/, unless --splits or "
        "--folds is given) are in the embeddings folder or Hub repo itself, as scripts/publish_tcga.py lays "
        "them out; instead of --labels",
    )
    parser.add_argument(
        "--labels",
        nargs="+",
        metavar="CSV",
        help="labels CSV(s) with columns ID (slide ID) and label; other columns are ignored; "
        "each file is one task, named after its file stem (this or --task is required)",
    )
    parser.add_argument(
        "--splits",
        nargs="+",
        metavar="DIR",
        help="folder of split_k.csv files (columns train, test), or a folder of such folders (each is "
        "evaluated, e.g. splitdirs/lung with full, 25p, 50, 100); one for all labels files or one per "
        "labels file. Default: stratified k-fold (--folds)",
    )
    parser.add_argument(
        "--folds", type=int, default=5, help="k of the stratified k-fold without --splits (default: 5)"
    )
    parser.add_argument(
        "--train-sizes",
        metavar="LIST",
        help="comma-separated training-set sizes for few-shot curves: slides (50), percentages (25%%) or "
        "'full'; each split's training set is subsampled, stratified and seeded, every class kept "
        "(default: full only)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the k-fold and of the subsampling (default: 0)"
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="write metrics.json, metrics.csv and PNG plots there"
    )
    parser.add_argument("--no-plots", action="store_true", help="with --out, skip the PNG plots")
    parser.add_argument(
        "--save-probe",
        type=Path,
        metavar="DIR",
        help="after the evaluation, fit the probe on every labelled slide with an embedding and save it there "
        "(probe.safetensors + probe.json: coefficients, intercept, classes, standardisation, the embedding "
        "model; no pickle), for giga-ssl heatmap; with several labels files, one sub-folder per task",
    )
    parser.add_argument(
        "--overwrite-probe", action="store_true", help="replace a probe already saved in --save-probe"
    )
    parser.add_argument(
        "--standardize",
        action="store_true",
        help="z-score each feature, scaler fit on each training split only (default: off, the paper's probe)",
    )
    parser.add_argument(
        "--C",
        dest="C",
        metavar="C[,C...]",
        help="inverse regularisation of the logistic regression (default: 10, the paper's); several values, "
        "comma-separated: one chosen per split by inner cross-validation on its training slides",
    )
    parser.add_argument(
        "--baseline",
        choices=["mean-pool"],
        help="also probe a baseline on the same splits with the same probe: mean-pool, the mean of each "
        "slide's exhaustive tile features (needs --features)",
    )
    parser.add_argument(
        "--features",
        metavar="DIR",
        help="exhaustive tile-feature Dataset (or giga-ssl extract folder) of the slides, for --baseline",
    )
    return parser


def probe_folders(save_probe: Path, tasks: list[str]) -> list[Path]:
    """``DIR`` for one task, ``DIR/<task>`` for several."""
    return [save_probe] if len(tasks) == 1 else [save_probe / task for task in tasks]


def save_probes(args: argparse.Namespace, embeddings, tasks: list[str]) -> list[Path]:
    """Fit each task's probe on all its labelled slides and save it (see ``giga_ssl_hf.evaluation.saved_probe``)."""
    from giga_ssl_hf.contracts import read_metadata
    from giga_ssl_hf.contracts.slide_embeddings import resolve_embeddings_folder
    from giga_ssl_hf.evaluation.data import load_labels
    from giga_ssl_hf.evaluation.probe import parse_c
    from giga_ssl_hf.evaluation.saved_probe import fit_saved_probe

    metadata = read_metadata(resolve_embeddings_folder(args.embeddings))
    folders = probe_folders(args.save_probe, tasks)
    for labels, task, folder in zip(args.labels, tasks, folders):
        probe = fit_saved_probe(
            *embeddings,
            load_labels(labels),
            task,
            standardize=args.standardize,
            C=parse_c(args.C)[0],
            embeddings_source=args.embeddings,
            embeddings_metadata=metadata,
        )
        probe.save(folder, overwrite=args.overwrite_probe)
        print(f"saved the {task} probe ({probe.info['n_train']} slides, classes {probe.classes}) to {folder}")
    return folders


def mean_pool_baseline(features: str) -> tuple:
    """The mean-pool baseline's ``(ids, L2-normalised mean tile features)``, shaped like slide embeddings."""
    import numpy as np

    from giga_ssl_hf.features.pooling import mean_pool_folder

    ids, means = mean_pool_folder(features)
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    return ids, means / np.where(norms > 0, norms, 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # After parsing: `giga-ssl evaluate --help` need not wait for scikit-learn and datasets.
    from giga_ssl_hf.contracts.slide_embeddings import load_embeddings
    from giga_ssl_hf.evaluation.probe import evaluate_embeddings, parse_c, parse_train_sizes
    from giga_ssl_hf.evaluation.report import format_table, write_outputs

    if (args.labels is None) == (args.task is None):
        parser.error("give --labels CSV... or --task NAME... (labels and splits inside the embeddings repo)")
    if args.task:
        try:
            args.labels, task_splits = task_inputs(args.embeddings, args.task)
        except ValueError as error:
            print(f"giga-ssl evaluate: error: {error}", file=sys.stderr)
            return 2
        if args.splits is None and not _given(argv, "--folds"):
            args.splits = task_splits
    if args.splits and len(args.splits) not in (1, len(args.labels)):
        parser.error(
            f"--splits: give one folder or one per labels file ({len(args.labels)}), not {len(args.splits)}"
        )
    tasks = [Path(labels).stem for labels in args.labels]
    if len(set(tasks)) != len(tasks):
        parser.error(f"labels files must have distinct names (the task names), got {tasks}")
    if args.folds < 2:
        parser.error("--folds must be at least 2")
    if args.baseline and not args.features:
        parser.error("--baseline mean-pool needs --features DIR (the slides' exhaustive tile features)")
    if args.features and not args.baseline:
        parser.error("--features is only used by --baseline; add --baseline mean-pool")
    if args.save_probe and args.C and "," in args.C:
        parser.error(
            "--save-probe saves one probe: give a single --C value (pick it with an evaluation first)"
        )
    splits = (
        args.splits if args.splits and len(args.splits) > 1 else (args.splits or [None]) * len(args.labels)
    )
    try:
        if args.save_probe:  # before the evaluation: a refused target should not cost a whole run
            from giga_ssl_hf.evaluation.saved_probe import check_probe_target

            for folder in probe_folders(args.save_probe, tasks):
                check_probe_target(folder, args.overwrite_probe)
        train_sizes = parse_train_sizes(args.train_sizes)
        probe = {"standardize": args.standardize, "C": parse_c(args.C)}
        sources = {"embeddings": load_embeddings(args.embeddings)}
        if args.baseline:
            sources[args.baseline] = mean_pool_baseline(args.features)
        results = [
            result
            for name, embeddings in sources.items()
            for labels, split in zip(args.labels, splits)
            for result in evaluate_embeddings(
                embeddings, labels, split, args.folds, train_sizes, args.seed, embedding=name, **probe
            )
        ]
    except (ValueError, OSError) as error:
        # Bad inputs are the user's to fix: a one-line message, not a traceback.
        print(f"giga-ssl evaluate: error: {error}", file=sys.stderr)
        return 2
    if args.standardize or args.C or args.baseline:
        c_text = ",".join(f"{c:g}" for c in probe["C"])
        print(
            f"probe: logistic regression, C={c_text}, standardised features: {'yes' if args.standardize else 'no'}"
        )
    print(format_table(results))
    if args.out:
        config = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
        write_outputs(results, args.out, config, plots=not args.no_plots)
    if args.save_probe:
        try:
            save_probes(args, sources["embeddings"], tasks)
        except (ValueError, OSError) as error:
            print(f"giga-ssl evaluate: error: {error}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
