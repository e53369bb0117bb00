"""Publishing trained models and slide embeddings on the Hugging Face Hub, with their cards.

Each push first writes the exact folder the Hub repo will hold; ``--dry-run OUT`` stops there, so the upload
can be reviewed (and served by a local Hub mirror in the tests). The upload itself (``HfApi.upload_folder``,
``Dataset.push_to_hub``) needs network access and a token (``huggingface-cli login`` or ``HF_TOKEN``); it is
not exercised by this package's tests, which run offline.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import HfApi  # light; the tests put a stand-in for the Hub in its place
from huggingface_hub.constants import REPOCARD_NAME

from giga_ssl_hf.contracts import (
    CLASSIFIER_SUMMARY_FILENAME,
    DEFAULT_LICENSE,
    METADATA_FILENAME,
    NPY_EMBEDDINGS,
    NPY_IDS,
    TRAINING_SUMMARY_FILENAME,
)
from giga_ssl_hf.files import dumps_strict, write_json, write_text_atomic
from giga_ssl_hf.settings import SettingsParser, option, run_main

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

PARQUET_PATH = "data/train-00000-of-00001.parquet"
UPLOAD_NOTE = """Uploading needs network access and a Hub token (hf auth login, or HF_TOKEN). Uploads to the real Hub are not
exercised by this package's tests, which run offline; --dry-run writes the exact folder that would be
uploaded, to review first."""


def write_model_folder(
    model_dir: str | Path, out: str | Path, repo_id: str, license: str = DEFAULT_LICENSE
) -> Path:
    """Write the Hub folder of a saved Giga-SSL model: card, config with ``auto_map``, weights, model code.

    Only the slide encoder (:class:`GigaSSLModel`) is published, also from a pretraining checkpoint: it is what
    ``AutoModel`` loads, and without the SimCLR head it loads without unexpected-weight reports.
    """
    from transformers.utils import CONFIG_NAME

    from giga_ssl_hf.hub.cards import model_card
    from giga_ssl_hf.models.gigassl import GigaSSLConfig, GigaSSLForContrastivePretraining, GigaSSLModel

    model_dir, out = Path(model_dir), Path(out)
    if not (model_dir / CONFIG_NAME).is_file():
        # Checked here: from_pretrained would take a missing folder for a Hub repo id and go online.
        raise ValueError(
            f"{model_dir}: not a saved model folder (no {CONFIG_NAME}); expected save_pretrained output"
        )
    config = GigaSSLConfig.from_pretrained(model_dir)
    if "GigaSSLForSlideClassification" in (config.architectures or []):
        return _write_classifier_folder(model_dir, out, repo_id, license)
    if GigaSSLForContrastivePretraining.__name__ in (config.architectures or []):
        encoder = GigaSSLForContrastivePretraining.from_pretrained(model_dir).gigassl
    else:
        encoder = GigaSSLModel.from_pretrained(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    # GigaSSLModel is registered for AutoModel (register_for_auto_class): writes the modeling files and `auto_map`.
    encoder.save_pretrained(out)
    summary_path = model_dir / TRAINING_SUMMARY_FILENAME
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    if summary is not None:
        shutil.copy2(summary_path, out / TRAINING_SUMMARY_FILENAME)
    model_card(encoder.config, repo_id, summary, license).save(out / REPOCARD_NAME)
    logger.info("wrote the Hub folder of %s to %s", repo_id, out)
    return out


def _write_classifier_folder(model_dir: Path, out: Path, repo_id: str, license: str) -> Path:
    """An exported slide classifier (``evaluate --export-classifier``) published whole: encoder, head, its
    summary, and its card made again for ``repo_id``."""
    from giga_ssl_hf.hub.cards import classifier_card
    from giga_ssl_hf.models.gigassl import GigaSSLForSlideClassification

    model = GigaSSLForSlideClassification.from_pretrained(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)  # writes the classification code and its auto_map
    summary_path = model_dir / CLASSIFIER_SUMMARY_FILENAME
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if summary:
        shutil.copy2(summary_path, out / CLASSIFIER_SUMMARY_FILENAME)
    classifier_card(model.config, repo_id, summary, license).save(out / REPOCARD_NAME)
    logger.info("wrote the Hub folder of the slide classifier %s to %s", repo_id, out)
    return out


def push_model(
    model_dir: str | Path,
    repo_id: str,
    private: bool = False,
    dry_run: str | Path | None = None,
    license: str = DEFAULT_LICENSE,
) -> Path | str:
    """Write the model's Hub folder to ``dry_run``, or into a temporary folder uploaded to ``repo_id``.

    Returns the folder (dry run) or the URL of the upload commit.
    """
    if dry_run is not None:
        return write_model_folder(model_dir, dry_run, repo_id, license)
    with tempfile.TemporaryDirectory() as staging:
        folder = write_model_folder(model_dir, staging, repo_id, license)
        api = HfApi()
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id, repo_type="model", folder_path=folder, commit_message="Upload Giga-SSL model"
        )
    logger.info("pushed %s: %s", repo_id, commit.commit_url)
    return commit.commit_url


def _embeddings_and_card(
    embeddings_dir: Path, repo_id: str, cohort: str | None, license: str
) -> tuple[datasets.Dataset, dict, str]:
    from giga_ssl_hf.contracts import read_metadata
    from giga_ssl_hf.contracts.slide_embeddings import load_embeddings
    from giga_ssl_hf.hub.cards import dataset_card

    dataset = load_embeddings(embeddings_dir, as_dataset=True)
    metadata = read_metadata(embeddings_dir)
    dim = len(dataset[0]["embedding"]) if len(dataset) else 0
    card = dataset_card(metadata, repo_id, len(dataset), dim, cohort=cohort, license=license)
    return dataset, metadata, str(card)


def write_embeddings_folder(
    embeddings_dir: str | Path,
    out: str | Path,
    repo_id: str,
    cohort: str | None = None,
    license: str = DEFAULT_LICENSE,
) -> Path:
    """Write the Hub folder of slide embeddings: README.md card, ``data/*.parquet``, metadata JSON.

    The same files ``push_embeddings`` uploads (``Dataset.push_to_hub`` names its shard the same way).
    """
    embeddings_dir, out = Path(embeddings_dir), Path(out)
    dataset, metadata, card = _embeddings_and_card(embeddings_dir, repo_id, cohort, license)
    (out / PARQUET_PATH).parent.mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(str(out / PARQUET_PATH))
    write_text_atomic(out / REPOCARD_NAME, card)
    write_json(out / METADATA_FILENAME, metadata)
    logger.info("wrote the Hub folder of %s (%d slides) to %s", repo_id, len(dataset), out)
    return out


def push_embeddings(
    embeddings_dir: str | Path,
    repo_id: str,
    private: bool = False,
    dry_run: str | Path | None = None,
    cohort: str | None = None,
    license: str = DEFAULT_LICENSE,
) -> Path | str:
    """Write the embeddings' Hub folder to ``dry_run``, or push them with ``Dataset.push_to_hub`` + card.

    Returns the folder (dry run) or the URL of the last upload commit.
    """
    if dry_run is not None:
        return write_embeddings_folder(embeddings_dir, dry_run, repo_id, cohort, license)
    embeddings_dir = Path(embeddings_dir)
    dataset, metadata, card = _embeddings_and_card(embeddings_dir, repo_id, cohort, license)
    dataset.push_to_hub(repo_id, private=private, commit_message="Upload Giga-SSL slide embeddings")
    # push_to_hub writes its own README; the card replaces it and keeps the same `configs` data files.
    api = HfApi()
    api.upload_file(
        path_or_fileobj=card.encode(), path_in_repo=REPOCARD_NAME, repo_id=repo_id, repo_type="dataset"
    )
    commit = api.upload_file(
        path_or_fileobj=(dumps_strict(metadata, indent=2, sort_keys=True) + "\n").encode(),
        path_in_repo=METADATA_FILENAME,
        repo_id=repo_id,
        repo_type="dataset",
        commit_message="Add Giga-SSL metadata",
    )
    logger.info("pushed %s: %s", repo_id, commit.commit_url)
    return commit.commit_url


@dataclass(kw_only=True)
class HubRepoSettings:
    """The Hub repo to write, and whether to upload at all (both push commands)."""

    repo_id: str | None = option(None, "Hub repo to create or update", metavar="ORG/NAME", required=True)
    private: bool = option(False, "create the repo private")
    dry_run: Path | None = option(
        None,
        "write the folder that would be uploaded to OUT (card included) and upload nothing",
        metavar="OUT",
    )
    license: str = option(DEFAULT_LICENSE, "license in the card")


@dataclass(kw_only=True)
class PushModelSettings(HubRepoSettings):
    """A saved model to publish as a Hub model repo."""

    model_dir: Path = option(
        help=f"folder written by save_pretrained (giga-ssl train / convert); its {TRAINING_SUMMARY_FILENAME}, "
        "if any, fills the card's training section",
        metavar="DIR",
        positional=True,
    )


@dataclass(kw_only=True)
class PushEmbeddingsSettings(HubRepoSettings):
    """Slide embeddings to publish as a Hub dataset repo."""

    embeddings_dir: Path = option(
        help=f"slide embeddings: a saved Dataset (slide_id, embedding) with its {METADATA_FILENAME} "
        f"(giga-ssl embed), or a folder with {NPY_EMBEDDINGS} + {NPY_IDS}",
        metavar="DIR",
        positional=True,
    )
    cohort: str | None = option(None, "cohort named in the card (default: the metadata's 'cohort')")


PUSH_MODEL_DESCRIPTION = f"""Publish a trained (or converted) Giga-SSL model on the Hub: a model card (README.md with YAML metadata,
training summary, usage, the paper's reference results), config.json with auto_map, model.safetensors and
the model code, so that AutoModel.from_pretrained(REPO, trust_remote_code=True) works without this package.
Only the slide encoder is published.

{UPLOAD_NOTE}"""

PUSH_EMBEDDINGS_DESCRIPTION = f"""Publish slide embeddings on the Hub as a dataset (Dataset.push_to_hub, parquet under data/) with a dataset
card (cohort, model and revision, tile sampling, number of slides, dimension, how to load) and the
{METADATA_FILENAME} provenance record.

{UPLOAD_NOTE}"""


def _report(result: Path | str) -> int:
    print(f"dry run: wrote {result}" if isinstance(result, Path) else f"pushed: {result}")
    return 0


def publish_model(settings: PushModelSettings) -> int:
    """``giga-ssl push-model``: :func:`push_model` with the command line's settings."""
    s = settings
    return _report(push_model(s.model_dir, s.repo_id, s.private, s.dry_run, s.license))


def publish_embeddings(settings: PushEmbeddingsSettings) -> int:
    """``giga-ssl push-embeddings``: :func:`push_embeddings` with the command line's settings."""
    s = settings
    return _report(push_embeddings(s.embeddings_dir, s.repo_id, s.private, s.dry_run, s.cohort, s.license))


# command -> (its settings, description, example)
COMMANDS = {
    "push-model": (
        PushModelSettings,
        PUSH_MODEL_DESCRIPTION,
        "giga-ssl push-model runs/tcga --repo-id me/gigassl-tcga --dry-run hub/gigassl-tcga",
    ),
    "push-embeddings": (
        PushEmbeddingsSettings,
        PUSH_EMBEDDINGS_DESCRIPTION,
        "giga-ssl push-embeddings emb/tcga --repo-id me/tcga-gigassl --cohort TCGA --dry-run hub/tcga",
    ),
}


def build_parser(command: str) -> SettingsParser:
    settings, description, example = COMMANDS[command]
    return SettingsParser(
        settings, prog=f"giga-ssl {command}", description=description, epilog=f"example: {example}"
    )


def main_push_model(argv: list[str] | None = None) -> int:
    return run_main(build_parser("push-model"), publish_model, argv)


def main_push_embeddings(argv: list[str] | None = None) -> int:
    return run_main(build_parser("push-embeddings"), publish_embeddings, argv)
