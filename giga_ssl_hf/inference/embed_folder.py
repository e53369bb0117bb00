"""The embed stage's job: a model and an exhaustive tile-feature folder in, a slide-embeddings folder out.

The folder is the slide-embeddings contract (:mod:`giga_ssl_hf.contracts.slide_embeddings`): the Dataset
(``slide_id``, ``embedding``), its metadata sidecar (how the embeddings were made, the model, the tile encoder,
the slides left out) and, on request, the paper's npy pair. With ``concat_mean_pool`` the mean of each slide's
tile features, standardised over the embedded slides (z-score per feature, then scaled by 1/sqrt(D) to unit
norm on average), is appended to the L2-normalised embedding: the hybrid embedding, the better of both on
composition tasks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..files import staged_directory
from ..runtime import resolve_device
from .slides import bad_slides, embed_tile_dataset, refuse_bad_slides

if TYPE_CHECKING:
    from .embed import EmbedSettings

logger = logging.getLogger(__name__)


def _check_hub_id(name: str) -> bool:
    """Whether ``name``, not a local path, is at least a valid Hub repo id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def load_model(model_name_or_path: str, device: str, trust_remote_code: bool = False):
    """A Giga-SSL model from a folder or the Hub, on ``device``, in eval mode."""
    from transformers import AutoModel

    from ..models.gigassl import register_auto_classes

    register_auto_classes()

    if not Path(model_name_or_path).exists() and not _check_hub_id(model_name_or_path):
        raise FileNotFoundError(f"no model folder at {model_name_or_path} (and not a Hub repo id)")
    model = AutoModel.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    return model.to(device).eval()


def _model_config(model, trust_remote_code: bool):
    """A loaded model's config, or the config of a model folder / Hub id (read before any weight)."""
    if not isinstance(model, (str, Path)):
        return model.config
    from transformers import AutoConfig

    from ..models.gigassl import register_auto_classes

    register_auto_classes()

    if not Path(model).exists() and not _check_hub_id(str(model)):
        return None  # load_model says what is wrong with the name
    return AutoConfig.from_pretrained(str(model), trust_remote_code=trust_remote_code)


def model_identity(model) -> dict:
    """The model's name (folder or Hub id), revision and weights' sha256 (what a saved probe is matched by;
    None for a model built in memory), as recorded beside its embeddings."""
    from ..weight_files import model_folder, weights_sha256

    name = str(getattr(model.config, "_name_or_path", ""))
    try:
        sha256 = weights_sha256(model_folder(name)) if name else None
    except FileNotFoundError:
        sha256 = None
    return {
        "model": name,
        "model_revision": getattr(model.config, "_commit_hash", None),
        "model_sha256": sha256,
    }


def save_embeddings(
    out_dir: str | Path, ids: np.ndarray, embeddings: np.ndarray, metadata: dict, npy: bool
) -> Path:
    """Write the slide-embeddings Dataset (+ metadata sidecar, + the paper's npy pair with ``npy``) atomically:
    the folder replaces ``out_dir`` once complete."""
    from ..contracts import NPY_EMBEDDINGS, NPY_IDS, write_metadata
    from ..contracts.slide_embeddings import embeddings_dataset

    out_dir = Path(out_dir)
    with staged_directory(out_dir) as tmp:
        embeddings_dataset(ids, embeddings).save_to_disk(str(tmp))
        write_metadata(tmp, metadata)
        if npy:
            np.save(tmp / NPY_EMBEDDINGS, embeddings)
            np.save(tmp / NPY_IDS, ids.astype(str))
    return out_dir


def _checked_features(model, settings: EmbedSettings):
    """The exhaustive tile features to embed, after the checks that need no weight: ``(folder, dataset, slides
    to leave out, tile encoder of the features, tile encoder of the model)``."""
    from ..contracts import read_metadata
    from ..contracts.extraction_folder import EXHAUSTIVE
    from ..contracts.tile_features import load_tile_dataset, require_same_encoder, resolve_tile_dataset_dir

    features_dir = resolve_tile_dataset_dir(settings.features, EXHAUSTIVE)
    dataset = load_tile_dataset(features_dir)
    skipped = bad_slides(dataset)
    if not settings.skip_bad_slides:
        refuse_bad_slides(skipped)
    elif skipped:
        logger.warning("left out %d slide(s) that cannot be embedded: %s", len(skipped), skipped)
    features_encoder = read_metadata(features_dir).get("tile_encoder")
    model_encoder = getattr(_model_config(model, settings.trust_remote_code), "tile_encoder", None)
    require_same_encoder(model_encoder, features_encoder, settings.allow_encoder_mismatch, "embed")
    return features_dir, dataset, skipped, features_encoder, model_encoder


def _append_mean_pool(dataset, ids: np.ndarray, embeddings: np.ndarray, skipped) -> tuple[np.ndarray, dict]:
    """The hybrid embeddings and the statistics of their standardised half (the heatmap applies them to tiles)."""
    from ..features.pooling import mean_pool, standardise_over_slides

    mean_ids, means = mean_pool(dataset, exclude=set(skipped))
    assert mean_ids.tolist() == ids.tolist()  # both in the Dataset's row order, same slides left out
    mean, std = means.mean(axis=0, dtype=np.float64), means.std(axis=0, dtype=np.float64)
    hybrid = np.concatenate([embeddings, standardise_over_slides(means, mean, std)], axis=1)
    return hybrid, {"mean_pool_mean": mean.tolist(), "mean_pool_std": std.tolist()}


def _check_pooling(config, settings: EmbedSettings) -> None:
    """Refuse top-site fractions for a model that is not top-pooled; warn when a max / top model is embedded by
    views rather than whole slides."""
    pooling = getattr(config, "slide_pooling", "mean")
    if settings.top_site_fractions and pooling != "top":
        raise ValueError(
            f"--top-site-fractions needs a model trained with --slide-pooling top, this one pools by {pooling!r}"
        )
    if pooling != "mean" and settings.tile_sampling != "all":
        logger.warning(
            "this model pools its sites by %r and is meant to embed each whole slide in one pass (--tile-sampling "
            "all): the mean of %s views is not the largest values over the slide", pooling, settings.tile_sampling,
        )  # fmt: skip


def embed_to_folder(settings: EmbedSettings, model=None) -> Path:
    """Embed an exhaustive tile-feature Dataset (or an extraction folder) into an embeddings folder, as
    ``giga-ssl embed`` does with these settings (:class:`~giga_ssl_hf.inference.embed.EmbedSettings`).

    ``model``, a loaded model, stands in for ``settings.model`` (a model folder or Hub id, loaded on
    ``settings.device`` once the features passed their checks). Embeddings already in ``settings.out`` are
    refused unless ``settings.overwrite``; so are slides that cannot be embedded (no tiles, NaN / inf features),
    before any work, unless ``skip_bad_slides`` leaves them out (listed in the metadata's ``skipped_slides``),
    and features of another tile encoder than the model's (``config.tile_encoder``, an
    :class:`~giga_ssl_hf.contracts.tile_features.EncoderMismatchError`) unless ``allow_encoder_mismatch``.
    """
    from ..contracts.slide_embeddings import embedding_blocks

    model = settings.model if model is None else model
    if model is None or settings.features is None or settings.out is None:
        raise ValueError("embedding needs a model, the tile features and an output folder")
    if Path(settings.out).exists() and not settings.overwrite:
        raise ValueError(
            f"{settings.out} already exists: choose another --out, or pass --overwrite to replace it"
        )
    features_dir, dataset, skipped, features_encoder, model_encoder = _checked_features(model, settings)
    if isinstance(model, (str, Path)):
        model = load_model(str(model), resolve_device(settings.device), settings.trust_remote_code)
    _check_pooling(model.config, settings)
    ids, embeddings = embed_tile_dataset(
        model, dataset, settings.tile_sampling, settings.n_views, settings.n_tiles, settings.seed,
        settings.max_views_per_batch, exclude=set(skipped), top_site_fractions=settings.top_site_fractions,
    )  # fmt: skip
    statistics = {}
    if settings.concat_mean_pool:
        embeddings, statistics = _append_mean_pool(dataset, ids, embeddings, skipped)
    mean_pool_dim = len(statistics["mean_pool_mean"]) if statistics else None
    blocks = embedding_blocks(model.config.hidden_dim, settings.top_site_fractions, mean_pool_dim)
    metadata = {
        **model_identity(model),
        "tile_sampling": settings.tile_sampling,
        "n_views": None if settings.tile_sampling in ("chunks", "all") else settings.n_views,
        "n_tiles": None if settings.tile_sampling == "all" else settings.n_tiles or model.config.n_tiles,
        "seed": settings.seed,
        "concat_mean_pool": settings.concat_mean_pool,
        "top_site_fractions": list(settings.top_site_fractions) if settings.top_site_fractions else None,
        "column_blocks": [list(block) for block in blocks.items()] if blocks else None,
        "n_slides": len(ids),
        "embedding_dim": int(embeddings.shape[1]),
        "features": str(features_dir),
        "skipped_slides": skipped,
        "tile_encoder": features_encoder or model_encoder,
        **statistics,
    }
    out = save_embeddings(settings.out, ids, embeddings, metadata, settings.npy)
    logger.info("wrote %d slide embeddings to %s", len(ids), out)
    return out
