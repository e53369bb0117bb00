"""``giga-ssl evaluate``'s settings (:class:`EvaluateSettings`): the probe, its tasks and splits, and what to write.
The command line is generated from them (:mod:`giga_ssl_hf.evaluation.evaluate_command`); ``giga-ssl pipeline``
composes them and sets the fields marked ``managed`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from giga_ssl_hf.evaluation.mil_recipe import MILRecipe
from giga_ssl_hf.settings import option

DEFAULT_FOLDS = 5


# Checked when the evaluation runs, not in the settings: the pipeline composes these settings and gives the labels.
TASK_OR_LABELS = "give --labels CSV... or --task NAME... (labels and splits inside the embeddings repo)"


@dataclass
class EvaluateSettings:
    """evaluation: the linear probe, its tasks and splits, and what to write"""

    embeddings: str | None = option(
        None,
        "Slide embeddings: a saved Dataset folder (slide_id, embedding), a folder with embeddings.npy + ids.npy, "
        "or a Hub dataset repo id (read from the HF cache when HF_HUB_OFFLINE=1).",
        metavar="SOURCE",
        required=True,
        managed=True,
    )
    task: tuple[str, ...] | None = option(
        None,
        "Task(s) whose labels (tables/NAME.csv) and split folders (splitdirs/NAME/, unless --splits or --folds "
        "is given) are in the embeddings folder or Hub repo itself, as scripts/publish_tcga.py lays them out; "
        "instead of --labels.",
        metavar="NAME",
        managed=True,
    )
    labels: tuple[str, ...] | None = option(
        None,
        "Labels CSV(s) with columns ID (slide ID) and label; other columns are ignored; each file is one task, "
        "named after its file stem (this or --task is required).",
        metavar="CSV",
        managed=True,
    )
    splits: tuple[str, ...] | None = option(
        None,
        "Folder of split_k.csv files (columns train, test), or a folder of such folders (each is evaluated, "
        "e.g. splitdirs/lung with full, 25p, 50, 100); one for all labels files or one per labels file. "
        "Default: stratified k-fold (--folds).",
        metavar="DIR",
        managed=True,
    )
    # None: not given (with --task, the repo's split folders are then used); the k-fold's k is DEFAULT_FOLDS.
    folds: int | None = option(
        None, f"k of the stratified k-fold without --splits (default: {DEFAULT_FOLDS})."
    )
    train_sizes: str | None = option(
        None,
        "Comma-separated training-set sizes for few-shot curves: slides (50), percentages (25%) or 'full'; each "
        "split's training set is subsampled, stratified and seeded, every class kept (default: full only).",
        metavar="LIST",
    )
    seed: int = option(0, "Seed of the k-fold and of the subsampling.", managed=True)
    out: Path | None = option(
        None, "Write metrics.json, metrics.csv and PNG plots there.", metavar="DIR", managed=True
    )
    no_plots: bool = option(False, "With --out, skip the PNG plots.", managed=True)
    save_probe: Path | None = option(
        None,
        "After the evaluation, fit the probe on every labelled slide with an embedding and save it there "
        "(probe.safetensors + probe.json: coefficients, intercept, classes, standardisation, the embedding "
        "model; no pickle), for giga-ssl heatmap; with several labels files, one sub-folder per task.",
        metavar="DIR",
        managed=True,
    )
    overwrite_probe: bool = option(
        False,
        "Replace a probe already saved in --save-probe (and a classifier in --export-classifier).",
        managed=True,
    )
    export_classifier: Path | None = option(
        None,
        "With --save-probe, also write each probe there as a GigaSSLForSlideClassification model folder "
        "(encoder weights, the probe as its head, remote code, a card with the AUCs), for giga-ssl push-model; "
        "with several labels files, one sub-folder per task.",
        metavar="DIR",
        managed=True,
    )
    classifier_encoder: str | None = option(
        None,
        "Slide encoder of --export-classifier (default: the embeddings' model).",
        metavar="MODEL",
        managed=True,
    )
    standardize: bool = option(
        False,
        "Z-score each feature, scaler fit on each training split only (default: off, the paper's probe).",
        negatable=True,
    )
    C: str | None = option(
        None,
        "Inverse regularisation of the logistic regression (default: 10, the paper's); several values, "
        "comma-separated: one chosen per split by inner cross-validation on its training slides.",
        metavar="C[,C...]",
    )
    hybrid_blocks: Literal["select", "both"] = option(
        "select",
        "Embeddings of several column blocks (giga-ssl embed --concat-mean-pool: the encoder's embedding, then "
        "the mean tile feature; --top-site-fractions: one block per fraction): select fits the probe on each "
        "block alone or all of them, chosen per split by inner cross-validation (AUC) on its training slides, "
        "jointly with --C, so that a block without signal does not dilute the other (with very few labels the "
        "choice itself is noisy); both always fits every block (the probe of earlier versions). Embeddings of "
        "one block: not used.",
    )
    baseline: tuple[Literal["mean-pool", "abmil", "graph-mil"], ...] | None = option(
        None,
        "Also evaluate baselines on the same splits and training sizes, in the same table (needs --features): "
        "mean-pool, the same probe on the mean of each slide's exhaustive tile features; abmil, a gated "
        "attention MIL trained on each training split; graph-mil, the same after message passing between "
        "neighbouring tiles of the grid (it can see arrangement).",
        managed=True,
    )
    features: str | None = option(
        None,
        "Exhaustive tile-feature Dataset (or giga-ssl extract folder) of the slides, for --baseline.",
        metavar="DIR",
        managed=True,
    )
    mil_epochs: int = option(
        MILRecipe.epochs, "Epochs of the MIL baselines (abmil, graph-mil).", managed=True
    )
    mil_validation: float = option(
        MILRecipe.validation_fraction,
        "Held-out share of each training split for early stopping of the MIL baselines (default: 0, none).",
        metavar="FRACTION",
        managed=True,
    )
    mil_device: str = option(
        MILRecipe.device, "Device of the MIL baselines: cpu, cuda, cuda:1, auto...", managed=True
    )
    retrieval: bool = option(
        False,
        "Also report leave-one-out retrieval accuracy (cosine nearest slides; top-1 and majority@5) of the "
        "embeddings and the vector --baseline (mean-pool; MIL baselines have no slide vector); with --out, in "
        "retrieval.json.",
        managed=True,
    )
    patient_column: str | None = option(
        None,
        "With --retrieval: the labels CSV column naming each slide's patient (the query's patient is left out).",
        metavar="COLUMN",
        managed=True,
    )

    def __post_init__(self):
        if self.patient_column and not self.retrieval:
            raise ValueError("--patient-column is only used by --retrieval")
        if self.labels is not None and self.task is not None:
            raise ValueError(TASK_OR_LABELS)
        n_tasks = len(self.task_names)
        if self.splits and len(self.splits) not in (1, n_tasks):
            raise ValueError(
                f"--splits: give one folder or one per labels file ({n_tasks}), not {len(self.splits)}"
            )
        if len(set(self.task_names)) != n_tasks:
            raise ValueError(f"labels files must have distinct names (the task names), got {self.task_names}")
        if self.folds is not None and self.folds < 2:
            raise ValueError("--folds must be at least 2")
        if self.baseline and not self.features:
            raise ValueError(
                f"--baseline {' '.join(self.baseline)} needs --features DIR (the slides' exhaustive tile features)"
            )
        if self.features and not self.baseline:
            raise ValueError("--features is only used by --baseline; add --baseline mean-pool (or abmil...)")
        self.mil_recipe()  # a bad recipe is refused before any work
        if self.export_classifier and not self.save_probe:
            raise ValueError("--export-classifier exports the saved probe: add --save-probe DIR")
        if self.classifier_encoder and not self.export_classifier:
            raise ValueError("--classifier-encoder is only used by --export-classifier")
        if self.save_probe and self.C and "," in self.C:
            raise ValueError(
                "--save-probe saves one probe: give a single --C value (pick it with an evaluation first)"
            )

    def mil_recipe(self) -> MILRecipe:
        """The MIL baselines' training recipe."""
        return MILRecipe(
            epochs=self.mil_epochs,
            validation_fraction=self.mil_validation,
            seed=self.seed,
            device=self.mil_device,
        )

    @property
    def task_names(self) -> list[str]:
        """The tasks' names: the labels files' stems, or the --task names (their tables/NAME.csv)."""
        return [Path(labels).stem for labels in self.labels] if self.labels else list(self.task or ())
