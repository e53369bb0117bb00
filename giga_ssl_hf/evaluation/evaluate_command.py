"""``giga-ssl evaluate``: the paper's linear-probe AUC on slide embeddings, from the command line.

Its settings are :class:`EvaluateSettings`, from which the command line is generated; the protocol is
:func:`~giga_ssl_hf.evaluation.probe.evaluate_embeddings`, which the pipeline calls directly.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from giga_ssl_hf.evaluation.evaluate_settings import DEFAULT_FOLDS, TASK_OR_LABELS, EvaluateSettings
from giga_ssl_hf.settings import SettingsParser, run_main


@dataclass
class _Inputs:
    """The labels files, and the split folder (or None: k-fold) of each, with the k-fold's k."""

    labels: list[str]
    splits: list[str | None]
    folds: int
    recorded_splits: list[str] | None  # as the run's config records them


EPILOG = """\
protocol (Giga-SSL paper): LogisticRegression(C=10, max_iter=1000, class_weight="balanced") on the slide
embeddings; AUC of predict_proba[:, 1] for two classes, macro one-vs-rest AUC for more; mean and std
(population) over the splits. IDs of a split that have no embedding or no label are dropped and reported.

beyond the paper (off by default, so the paper's tables are reproduced unchanged): --standardize z-scores
each feature with a scaler fit on each training split only; --C sets the classifier's C, or lists several,
one chosen per split by a stratified 5-fold inner cross-validation (AUC) on that split's training slides
only; --baseline mean-pool --features DIR probes the mean of each slide's exhaustive tile features
(L2-normalised, like the slide embeddings) on the same splits with the same probe, in the same table;
--baseline abmil graph-mil trains supervised MIL on the same tile features for each split and training
size (AdamW, dropout 0.25, class-weighted cross-entropy, --mil-epochs, seeded; early stopping on a held-out
share of the training slides with --mil-validation), scored with the same AUC in the same table.
The probe's scaling can decide results as much as the encoder does: report embeddings next to mean pooling.
On embeddings of several column blocks (giga-ssl embed --concat-mean-pool, or --top-site-fractions) the probe
chooses per split, by the same inner cross-validation, one block or all (--hybrid-blocks select, the default).

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

  # supervised MIL on the same tile features beside mean pooling, at 50 and 200 training slides
  giga-ssl evaluate --embeddings runs/embeddings --labels labels.csv --train-sizes 50,200 \\
      --baseline mean-pool abmil graph-mil --features out/exhaustive --mil-device auto

  # leave-one-out retrieval accuracy (top-1, majority@5), a patient's other slides left out
  giga-ssl evaluate --embeddings runs/embeddings --labels labels.csv --retrieval --patient-column patient

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


def resolve_inputs(settings: EvaluateSettings) -> _Inputs:
    """The labels and splits of the run: --labels and --splits, or those of the --task names inside the
    embeddings folder or repo (its split folders unless --splits or --folds is given)."""
    if not settings.labels and not settings.task:
        raise ValueError(TASK_OR_LABELS)
    labels, splits = list(settings.labels or ()), list(settings.splits) if settings.splits else None
    if settings.task:
        labels, task_splits = task_inputs(settings.embeddings, list(settings.task))
        if splits is None and settings.folds is None:
            splits = task_splits
    per_labels = splits if splits and len(splits) > 1 else (splits or [None]) * len(labels)
    return _Inputs(labels, per_labels, settings.folds or DEFAULT_FOLDS, splits)


def probe_folders(save_probe: Path, tasks: list[str]) -> list[Path]:
    """``DIR`` for one task, ``DIR/<task>`` for several."""
    return [save_probe] if len(tasks) == 1 else [save_probe / task for task in tasks]


def embeddings_metadata(settings: EvaluateSettings) -> dict:
    """The metadata sidecar of the evaluated embeddings ({} for those without one, e.g. the paper's npy pair)."""
    from giga_ssl_hf.contracts import read_metadata
    from giga_ssl_hf.contracts.slide_embeddings import resolve_embeddings_folder

    return read_metadata(resolve_embeddings_folder(settings.embeddings))


def probe_blocks(settings: EvaluateSettings, metadata: dict) -> dict[str, int] | None:
    """The column blocks the probe chooses among with ``--hybrid-blocks select``: a hybrid embedding's two, one
    per top-site fraction (``embed --top-site-fractions``)."""
    from giga_ssl_hf.contracts.slide_embeddings import column_blocks

    return column_blocks(metadata) if settings.hybrid_blocks == "select" else None


def save_probes(
    settings: EvaluateSettings, labels: list[str], embeddings, metadata: dict, blocks: dict[str, int] | None
) -> list:
    """Fit each task's probe on all its labelled slides (choosing among ``blocks`` as the evaluation does) and
    save it (see ``giga_ssl_hf.evaluation.saved_probe``); returns the probes."""
    from giga_ssl_hf.evaluation.classifier import parse_c
    from giga_ssl_hf.evaluation.data import load_labels
    from giga_ssl_hf.evaluation.saved_probe import fit_saved_probe

    tasks = settings.task_names
    folders = probe_folders(settings.save_probe, tasks)
    probes = []
    for labels_file, task, folder in zip(labels, tasks, folders):
        probe = fit_saved_probe(
            *embeddings,
            load_labels(labels_file),
            task,
            standardize=settings.standardize,
            C=parse_c(settings.C)[0],
            embeddings_source=settings.embeddings,
            embeddings_metadata=metadata,
            blocks=blocks,
        )
        probe.save(folder, overwrite=settings.overwrite_probe)
        block = f", block {probe.info['block']}" if blocks else ""
        print(
            f"saved the {task} probe ({probe.info['n_train']} slides, classes {probe.classes}{block}) to {folder}"
        )
        probes.append(probe)
    return probes


def _probe_all(
    settings: EvaluateSettings, inputs: _Inputs, embeddings: tuple, blocks: dict[str, int] | None
) -> tuple[dict, list]:
    """The embeddings (and baselines) evaluated on every task: ``({name: (ids, vectors or model)}, results)``;
    the probe of the embeddings chooses among ``blocks``, a baseline's has none."""
    from giga_ssl_hf.evaluation.baselines import baseline_source
    from giga_ssl_hf.evaluation.classifier import parse_c
    from giga_ssl_hf.evaluation.probe import evaluate_embeddings
    from giga_ssl_hf.evaluation.train_sizes import parse_train_sizes

    train_sizes = parse_train_sizes(settings.train_sizes)
    probe = {"standardize": settings.standardize, "C": parse_c(settings.C)}
    sources = {"embeddings": embeddings}
    for baseline in settings.baseline or ():
        sources[baseline] = baseline_source(baseline, settings.features, settings.mil_recipe(), embeddings[0])
    results = [
        result
        for name, vectors in sources.items()
        for labels, split in zip(inputs.labels, inputs.splits)
        for result in evaluate_embeddings(
            vectors, labels, split, inputs.folds, train_sizes, settings.seed, embedding=name,
            blocks=blocks if name == "embeddings" else None, **probe,
        )
    ]  # fmt: skip
    return sources, results


def _retrieval(settings: EvaluateSettings, inputs: _Inputs, sources: dict) -> list[dict]:
    """Print and return the leave-one-out retrieval accuracy of every source on every task."""
    from giga_ssl_hf.evaluation.retrieval import retrieval_report

    records, table = retrieval_report(sources, inputs.labels, settings.task_names, settings.patient_column)
    print(table)
    return records


def evaluate(settings: EvaluateSettings) -> int:
    """Run ``giga-ssl evaluate``: print the AUC table, write the outputs and the probes asked for."""
    from giga_ssl_hf.contracts.slide_embeddings import load_embeddings

    inputs = resolve_inputs(settings)
    embeddings = load_embeddings(settings.embeddings)
    # Before the evaluation, and before sklearn and matplotlib are imported: refusals come at once.
    if settings.baseline:  # another cohort's features would fail only after the embeddings' run
        from giga_ssl_hf.evaluation.baselines import check_baseline_slides

        check_baseline_slides(settings.features, embeddings[0], inputs.labels)
    from giga_ssl_hf.evaluation.classifier import parse_c
    from giga_ssl_hf.evaluation.report import format_table, write_outputs
    from giga_ssl_hf.evaluation.saved_probe import check_probe_target

    if settings.save_probe:  # a refused target should not cost a whole run
        for folder in probe_folders(settings.save_probe, settings.task_names):
            check_probe_target(folder, settings.overwrite_probe)
    if settings.export_classifier:
        from giga_ssl_hf.evaluation.export_classifier import check_export

        export = probe_folders(settings.export_classifier, settings.task_names)
        check_export(export, settings.embeddings, settings.classifier_encoder, settings.overwrite_probe)
    metadata = embeddings_metadata(settings)
    blocks = probe_blocks(settings, metadata)
    sources, results = _probe_all(settings, inputs, embeddings, blocks)
    if settings.standardize or settings.C or settings.baseline:
        c_text = ",".join(f"{c:g}" for c in parse_c(settings.C))
        print(
            f"probe: logistic regression, C={c_text}, standardised features: {'yes' if settings.standardize else 'no'}"
        )
    print(format_table(results))
    if blocks:
        print(chosen_blocks_line(results, blocks))
    # Retrieval compares slide vectors: a MIL baseline has none.
    vectors = {name: source for name, source in sources.items() if not hasattr(source[1], "fit_predict")}
    retrieval = _retrieval(settings, inputs, vectors) if settings.retrieval else None
    if settings.out:
        config = {
            **dataclasses.asdict(settings),
            "labels": inputs.labels,
            "splits": inputs.recorded_splits,
            "folds": inputs.folds,
        }
        config = {key: str(value) if isinstance(value, Path) else value for key, value in config.items()}
        write_outputs(results, settings.out, config, plots=not settings.no_plots)
        if retrieval is not None:
            from giga_ssl_hf.files import write_json

            write_json(settings.out / "retrieval.json", retrieval)
    if settings.save_probe:
        probes = save_probes(settings, inputs.labels, sources["embeddings"], metadata, blocks)
        if settings.export_classifier:
            from giga_ssl_hf.evaluation.export_classifier import export_classifiers

            export_classifiers(probes, export, settings.classifier_encoder, results, settings.overwrite_probe)
    return 0


def chosen_blocks_line(results: list, blocks: dict[str, int]) -> str:
    """How often each column block of the embeddings was chosen, over all the splits of the results."""
    from collections import Counter

    chosen = Counter(s.block for r in results if r.embedding == "embeddings" for s in r.splits)
    sizes = ", ".join(f"{name} ({size} dims)" for name, size in blocks.items())
    counts = ", ".join(f"{name} {n}" for name, n in chosen.most_common())
    return (
        f"embeddings of {len(blocks)} blocks ({sizes}): block chosen per split by inner cross-validation "
        f"(--hybrid-blocks select): {counts} of {sum(chosen.values())} splits"
    )


def build_parser() -> SettingsParser:
    return SettingsParser(
        EvaluateSettings,
        prog="giga-ssl evaluate",
        description="Linear-probe AUC of slide embeddings on labelled tasks (the Giga-SSL paper's protocol).",
        epilog=EPILOG,
    )


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
