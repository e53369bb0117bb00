#!/usr/bin/env python
"""Build (and push) one Hub dataset repo with TCGA slide embeddings and the paper's evaluation protocol.

The repo holds, side by side:

- ``embeddings.npy`` (N, E) + ``ids.npy`` (N,): the embeddings in the original Giga-SSL format (as released
  in trislaz/gigassl ``TCGA_encoded_t5e1000/``);
- ``tables/<task>.csv``: the paper's six label tables (``ID``, ``label``, ...);
- ``splitdirs/<task>/<size>/split_<k>.csv``: every fixed train/test split folder;
- the same as ``datasets`` configs under ``data/`` (parquet: ``datasets`` reads one format per repo):
  ``embeddings`` (``slide_id``, ``embedding``), ``labels-<task>``, ``splits-<task>-<size>`` with one split
  per ``split_<k>``;
- a dataset card naming the configs and listing the paper's reference AUCs as ``model-index``-style
  ``eval_results``; ``giga_ssl_metadata.json`` (cohort, slide model, tile encoder).

Then, from the repo id alone::

    giga-ssl evaluate --embeddings ORG/NAME --task lung
    python scripts/reproduce_tcga_linear_probe.py --embeddings ORG/NAME

    python scripts/publish_tcga.py --embeddings TCGA_encoded_t5e1000/ --repo-id ORG/NAME --dry-run hub/tcga
"""

# No `from __future__ import annotations`: the tests load this script without registering it in sys.modules,
# where dataclasses and SettingsParser would have to resolve string annotations.
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, HfApi
from huggingface_hub.constants import REPOCARD_NAME
from huggingface_hub.repocard_data import eval_results_to_model_index

from giga_ssl_hf.contracts import DEFAULT_LICENSE, METADATA_FILENAME, NPY_EMBEDDINGS, NPY_IDS, read_metadata
from giga_ssl_hf.contracts.slide_embeddings import embeddings_dataset, load_embeddings
from giga_ssl_hf.evaluation.data import find_split_sets, load_labels, read_split
from giga_ssl_hf.files import staged_directory, write_json
from giga_ssl_hf.settings import SettingsParser, flag_of, option, run_main

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE = REPO.parent / "shared" / "reference" / "gigassl-tcga"
TASKS = {
    "lung": "LUAD vs LUSC (TCGA-LUAD, TCGA-LUSC)",
    "kidney": "clear cell vs papillary vs chromophobe RCC (TCGA-KIRC, KIRP, KICH)",
    "brca": "invasive ductal vs lobular carcinoma (TCGA-BRCA)",
    "mhrd": "homologous recombination deficiency, m-table (TCGA-BRCA)",
    "thrd": "homologous recombination deficiency, t-table (TCGA-BRCA)",
    "tnbc": "triple-negative vs luminal (TCGA-BRCA)",
}
# Successor README, 10-fold CV AUC, SparseConvMIL on MoCo tile features. Its single HRD figure (0.793) does
# not say which HRD table it used, so it is quoted in the text only.
REFERENCE_AUC = {"lung": 0.960, "kidney": 0.983, "brca": 0.924, "tnbc": 0.933}
PAPER_ENCODER = "ResNet18 (MoCo v2 on TCGA tiles) cut after layer3, spatial mean: 256-d tile features"
EMBEDDINGS_PARQUET = "data/embeddings/train-00000-of-00001.parquet"
CARD_TEMPLATE = Path(__file__).with_name("publish_tcga_card.md")
# A task is released when evaluate --task runs on all its splits and this share of its labelled slides has an
# embedding: below it, the card's reference AUC would describe another cohort than the one released.
MIN_TASK_COVERAGE = 0.9


def dataset_configs(reference: Path, tasks: list[str]) -> list[dict]:
    """The card's ``configs``: the embeddings, one per label table, one per split folder (split_k as splits)."""
    configs = [
        {
            "config_name": "embeddings",
            "data_files": [{"split": "train", "path": EMBEDDINGS_PARQUET}],
            "default": True,
        }
    ]
    for task in tasks:
        configs.append(
            {
                "config_name": f"labels-{task}",
                "data_files": [{"split": "train", "path": f"data/labels-{task}.parquet"}],
            }
        )
        for size, files in find_split_sets(reference / "splitdirs" / task).items():
            name = f"splits-{task}-{size}"
            configs.append(
                {
                    "config_name": name,
                    "data_files": [
                        {"split": path.stem, "path": f"data/{name}/{path.stem}.parquet"} for path in files
                    ],
                }
            )
    return configs


def write_config_files(reference: Path, out: Path, tasks: list[str]) -> None:
    """The label tables and splits as the parquet files the dataset configs point to (all values strings)."""
    (out / "data").mkdir(parents=True, exist_ok=True)
    for task in tasks:
        pd.read_csv(reference / "tables" / f"{task}.csv", dtype=str).to_parquet(
            out / "data" / f"labels-{task}.parquet"
        )
        for size, files in find_split_sets(reference / "splitdirs" / task).items():
            (out / "data" / f"splits-{task}-{size}").mkdir(exist_ok=True)
            for path in files:
                table = pd.read_csv(path, dtype=str)
                table.to_parquet(out / "data" / f"splits-{task}-{size}" / f"{path.stem}.parquet")


def eval_results(repo_id: str, tasks: list[str]) -> list[EvalResult]:
    return [
        EvalResult(
            task_type="image-classification",
            task_name=f"TCGA {task}: {TASKS[task]}",
            dataset_type=repo_id,
            dataset_name=f"TCGA {task}",
            dataset_config=f"labels-{task}",
            metric_type="roc_auc",
            metric_name="AUC (10-fold CV, linear probe)",
            metric_value=auc,
            source_name="Giga-SSL successor README (trislaz/Democratizing_WSI)",
            source_url="https://github.com/trislaz/Democratizing_WSI",
        )
        for task, auc in REFERENCE_AUC.items()
        if task in tasks
    ]


def release_card(repo_id: str, metadata: dict, configs: list[dict], n_slides: int, dim: int) -> DatasetCard:
    # Imported here: the cards module loads the model classes (torch), which the coverage refusals do not need.
    from giga_ssl_hf.hub.cards import DATASET_TAGS, fill_template, size_category

    model_index = eval_results_to_model_index(
        metadata.get("model") or "Giga-SSL", eval_results(repo_id, metadata["tasks"])
    )
    data = DatasetCardData(
        license=DEFAULT_LICENSE,
        pretty_name=f"Giga-SSL slide embeddings: {metadata['cohort']}",
        tags=[*DATASET_TAGS, "tcga"],
        task_categories=["feature-extraction", "image-classification"],
        size_categories=[size_category(n_slides)],
        configs=configs,
        **{"model-index": model_index},
    )
    rows = [f"| `{task}` | {TASKS[task]} | {REFERENCE_AUC.get(task, '-')} |" for task in metadata["tasks"]]
    content = fill_template(
        CARD_TEMPLATE,
        card_data=data.to_yaml(),
        name=repo_id.split("/")[-1],
        repo_id=repo_id,
        cohort=metadata["cohort"],
        model=metadata.get("model") or "unknown",
        tile_encoder=metadata.get("tile_encoder_description") or "unknown",
        n_slides=n_slides,
        dim=dim,
        npy_embeddings=NPY_EMBEDDINGS,
        npy_ids=NPY_IDS,
        task_rows="\n".join(rows),
    )
    return DatasetCard(content)


def task_coverage(reference: Path, task: str, embedded: set[str]) -> str | None:
    """Why ``evaluate --task`` could not reproduce ``task`` on these embeddings, or None when it can: fewer
    than MIN_TASK_COVERAGE of its labelled slides embedded, or a split whose training or test slides lose a
    class once the slides without embedding are dropped (evaluate refuses such a split)."""
    labels = load_labels(reference / "tables" / f"{task}.csv")
    n_embedded = len(embedded.intersection(labels.index))
    if n_embedded < MIN_TASK_COVERAGE * len(labels):
        return f"{task} ({n_embedded} of {len(labels)} labelled slides embedded)"
    classes = set(labels.unique())
    for size, files in find_split_sets(reference / "splitdirs" / task).items():
        for path in files:
            for part in read_split(path):
                kept = [slide for slide in part if slide in embedded and slide in labels.index]
                if set(labels.loc[kept]) != classes:
                    return f"{task} (split {size}/{path.name} loses a class without the missing slides)"
    return None


def covered_tasks(reference: Path, tasks: list[str], embedded: set[str], covered_only: bool) -> list[str]:
    """``tasks`` less those the embeddings do not cover: refused in one line unless ``covered_only``."""
    uncovered = {task: reason for task in tasks if (reason := task_coverage(reference, task, embedded))}
    kept = [task for task in tasks if task not in uncovered]
    if uncovered and (not covered_only or not kept):
        raise ValueError(
            f"the embeddings do not cover task(s) {', '.join(uncovered.values())}: their card AUCs could not be "
            f"reproduced; embed those slides, or pass {flag_of('covered_tasks_only')} to release only "
            f"{', '.join(kept) or 'the covered tasks (none here)'}"
        )
    if uncovered:
        logging.getLogger(__name__).warning("left out the uncovered task(s) %s", ", ".join(uncovered))
    return kept


def write_release_folder(
    embeddings: str | Path,
    out: str | Path,
    repo_id: str,
    reference: str | Path = DEFAULT_REFERENCE,
    cohort: str = "TCGA",
    model: str | None = None,
    tile_encoder: str = PAPER_ENCODER,
    tasks: list[str] | None = None,
    covered_only: bool = False,
) -> Path:
    """Write the repo's folder: npy pair, parquet, tables, split folders, metadata and card; the tasks the
    embeddings do not cover (:func:`task_coverage`) are refused, or left out with ``covered_only``."""
    reference, out = Path(reference), Path(out)
    tasks = tasks or list(TASKS)
    missing = [t for t in tasks if not (reference / "tables" / f"{t}.csv").is_file()]
    if missing:
        raise ValueError(f"{reference}: no label table for task(s) {missing} (expected tables/<task>.csv)")
    ids, vectors = load_embeddings(embeddings)
    tasks = covered_tasks(reference, tasks, set(ids.astype(str)), covered_only)
    labelled = set()
    for task in tasks:
        labelled |= set(load_labels(reference / "tables" / f"{task}.csv").index)
    covered = len(labelled & set(ids))
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / NPY_EMBEDDINGS, vectors.astype(np.float32))
    np.save(out / NPY_IDS, np.asarray(ids, dtype=str))
    (out / EMBEDDINGS_PARQUET).parent.mkdir(parents=True, exist_ok=True)
    embeddings_dataset(ids, vectors).to_parquet(str(out / EMBEDDINGS_PARQUET))
    for task in tasks:
        (out / "tables").mkdir(exist_ok=True)
        shutil.copy2(reference / "tables" / f"{task}.csv", out / "tables" / f"{task}.csv")
        shutil.copytree(reference / "splitdirs" / task, out / "splitdirs" / task, dirs_exist_ok=True)
    source_metadata = read_metadata(embeddings) if Path(embeddings).is_dir() else {}
    metadata = {
        **source_metadata,
        "cohort": cohort,
        "model": model or source_metadata.get("model"),
        "tile_encoder_description": tile_encoder,
        "tasks": tasks,
        "n_slides": len(ids),
        "n_labelled_slides_with_embedding": covered,
        "embedding_dim": int(vectors.shape[1]),
        "labels_and_splits": "trislaz/gigassl (MIT)",
    }
    write_json(out / METADATA_FILENAME, metadata)
    configs = dataset_configs(reference, tasks)
    write_config_files(reference, out, tasks)
    release_card(repo_id, metadata, configs, len(ids), int(vectors.shape[1])).save(out / REPOCARD_NAME)
    yaml.safe_load((out / REPOCARD_NAME).read_text().split("---")[1])  # the card's metadata must parse
    return out


@dataclass
class ReleaseSettings:
    """The embeddings to release, the repo to write and what its card says."""

    embeddings: str | None = option(
        None,
        f"{NPY_EMBEDDINGS} + {NPY_IDS} folder, or a slide-embeddings Dataset folder",
        metavar="DIR",
        required=True,
    )
    repo_id: str | None = option(
        None, "Hub dataset repo to create or update", metavar="ORG/NAME", required=True
    )
    dry_run: Path | None = option(None, "write the repo's folder to OUT, upload nothing", metavar="OUT")
    reference_dir: Path = option(DEFAULT_REFERENCE, "the paper's tables/ and splitdirs/")
    cohort: str = option("TCGA", "cohort named in the card")
    model: str | None = option(None, "slide encoder that made the embeddings (Hub id or description)")
    tile_encoder: str = option(
        PAPER_ENCODER, "tile encoder description (by default the paper's MoCo ResNet18)"
    )
    private: bool = option(False, "create the repo private")
    covered_tasks_only: bool = option(
        False,
        f"release only the tasks the embeddings cover (at least {MIN_TASK_COVERAGE:.0%} of the labelled slides, "
        "and every split keeps its classes) instead of refusing",
    )


def build_parser() -> SettingsParser:
    return SettingsParser(
        ReleaseSettings,
        prog="publish_tcga.py",
        description=f"""Build one Hub dataset repo with TCGA slide embeddings ({NPY_EMBEDDINGS} + {NPY_IDS} and parquet), the paper's
six label tables and all split folders as named dataset configs, and a card with the reference AUCs; push
it, or write it to --dry-run OUT. Pushing needs network access and a token.""",
        epilog="then: giga-ssl evaluate --embeddings ORG/NAME --task lung",
    )


def publish(settings: ReleaseSettings) -> int:
    """Write the release folder to ``--dry-run``, or into a temporary folder uploaded to the repo."""
    s = settings
    options = dict(repo_id=s.repo_id, reference=s.reference_dir, cohort=s.cohort, model=s.model)
    options.update(tile_encoder=s.tile_encoder, covered_only=s.covered_tasks_only)
    if s.dry_run is not None:
        if s.dry_run.exists() and any(s.dry_run.iterdir()):
            raise ValueError(f"{flag_of('dry_run')} {s.dry_run} is not empty; choose an empty or new folder")
        with staged_directory(s.dry_run) as staging:  # a failure leaves no half-written folder to refuse
            write_release_folder(s.embeddings, staging, **options)
        print(f"dry run: wrote {s.dry_run}")
        return 0
    with tempfile.TemporaryDirectory() as staging:
        folder = write_release_folder(s.embeddings, staging, **options)
        api = HfApi()
        api.create_repo(s.repo_id, repo_type="dataset", private=s.private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=s.repo_id, repo_type="dataset", folder_path=folder, commit_message="Giga-SSL TCGA release"
        )
    print(f"pushed: {commit.commit_url}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), publish, argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
