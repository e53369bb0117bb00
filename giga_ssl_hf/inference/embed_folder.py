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

import numpy as np

from ..files import staged_directory
from ..runtime import resolve_device
from .slides import bad_slides, embed_tile_dataset, refuse_bad_slides

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


def _checked_features(model, features, skip_bad_slides, trust_remote_code, allow_encoder_mismatch):
    """The exhaustive tile features to embed, after the checks that need no weight: ``(folder, dataset, slides
    to leave out, tile encoder of the features, tile encoder of the model)``."""
    from ..contracts import read_metadata
    from ..contracts.extraction_folder import EXHAUSTIVE
    from ..contracts.tile_features import load_tile_dataset, require_same_encoder, resolve_tile_dataset_dir

    features_dir = resolve_tile_dataset_dir(features, EXHAUSTIVE)
    dataset = load_tile_dataset(features_dir)
    skipped = bad_slides(dataset)
    if not skip_bad_slides:
        refuse_bad_slides(skipped)
    elif skipped:
        logger.warning("left out %d slide(s) that cannot be embedded: %s", len(skipped), skipped)
    features_encoder = read_metadata(features_dir).get("tile_encoder")
    model_encoder = getattr(_model_config(model, trust_remote_code), "tile_encoder", None)
    require_same_encoder(model_encoder, features_encoder, allow_encoder_mismatch, "embed")
    return features_dir, dataset, skipped, features_encoder, model_encoder


def _append_mean_pool(dataset, ids: np.ndarray, embeddings: np.ndarray, skipped) -> tuple[np.ndarray, dict]:
    """The hybrid embeddings and the statistics of their standardised half (the heatmap applies them to tiles)."""
    from ..features.pooling import mean_pool, standardise_over_slides

    mean_ids, means = mean_pool(dataset, exclude=set(skipped))
    assert mean_ids.tolist() == ids.tolist()  # both in the Dataset's row order, same slides left out
    mean, std = means.mean(axis=0, dtype=np.float64), means.std(axis=0, dtype=np.float64)
    hybrid = np.concatenate([embeddings, standardise_over_slides(means, mean, std)], axis=1)
    return hybrid, {"mean_pool_mean": mean.tolist(), "mean_pool_std": std.tolist()}


def embed_to_folder(
    model,
    features: str | Path,
    out: str | Path,
    strategy: str = "random",
    n_views: int = 100,
    n_tiles: int | None = None,
    seed: int = 0,
    max_views_per_batch: int = 4096,
    npy: bool = False,
    skip_bad_slides: bool = False,
    device: str = "auto",
    trust_remote_code: bool = False,
    allow_encoder_mismatch: bool = False,
    concat_mean_pool: bool = False,
) -> Path:
    """Embed an exhaustive tile-feature Dataset (or an extraction folder) into an embeddings folder.

    ``model`` is a loaded model, or a model folder / Hub id loaded (on ``device``) once the features passed
    their checks. Slides that cannot be embedded (no tiles, NaN / inf features) are refused before any work,
    or, with ``skip_bad_slides``, left out and listed in the metadata (``skipped_slides``). Features of
    another tile encoder than the model's (``config.tile_encoder``) are refused with an
    :class:`~giga_ssl_hf.contracts.tile_features.EncoderMismatchError` unless ``allow_encoder_mismatch``.
    The other arguments are ``giga-ssl embed``'s options (:class:`~giga_ssl_hf.inference.embed.EmbedSettings`).
    """
    features_dir, dataset, skipped, features_encoder, model_encoder = _checked_features(
        model, features, skip_bad_slides, trust_remote_code, allow_encoder_mismatch
    )
    if isinstance(model, (str, Path)):
        model = load_model(str(model), resolve_device(device), trust_remote_code)
    ids, embeddings = embed_tile_dataset(
        model, dataset, strategy, n_views, n_tiles, seed, max_views_per_batch, exclude=set(skipped)
    )
    statistics = {}
    if concat_mean_pool:
        embeddings, statistics = _append_mean_pool(dataset, ids, embeddings, skipped)
    metadata = {
        **model_identity(model),
        "strategy": strategy,
        "n_views": None if strategy == "chunks" else n_views,
        "n_tiles": n_tiles or model.config.n_tiles,
        "seed": seed,
        "concat_mean_pool": concat_mean_pool,
        "n_slides": len(ids),
        "embedding_dim": int(embeddings.shape[1]),
        "features": str(features_dir),
        "skipped_slides": skipped,
        "tile_encoder": features_encoder or model_encoder,
        **statistics,
    }
    out = save_embeddings(out, ids, embeddings, metadata, npy)
    logger.info("wrote %d slide embeddings to %s", len(ids), out)
    return out
