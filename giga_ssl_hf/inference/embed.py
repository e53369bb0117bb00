"""Slide embeddings from a trained Giga-SSL encoder: the mean of many views, L2-normalised.

Strategies:

- ``random`` (the paper): ``n_views`` views of ``n_tiles`` tiles drawn with replacement from the slide's
  exhaustive (non-augmented) tiles;
- ``chunks`` (the successor package): the tiles in their stored order cut into consecutive chunks of
  ``n_tiles`` that cover every tile exactly once (the last chunk may be shorter);
- ``window``: ``n_views`` spatially contiguous windows, the ``n_tiles`` tiles nearest a random tile (for
  encoders trained with ``--view_sampling window``).

With ``--concat-mean-pool`` the mean of each slide's tile features, standardised over the embedded slides
(z-score per feature, then scaled by 1/sqrt(D) to unit norm on average), is appended to the L2-normalised
embedding: the hybrid embedding, the better of both on composition tasks.

A slide's embedding depends only on its own tiles, the model and the seed: its random stream is derived from
``(seed, slide_id)``, and views are batched so that the model never mixes slides within one sparse map size
computation (``grid_size_mode="batch"`` models see one slide's views per forward).

    giga-ssl embed --model runs/ssl/final --features out/exhaustive --out runs/embeddings --npy
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..files import write_json
from ..runtime import resolve_device, slide_seed

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

STRATEGIES = ("random", "chunks", "window")


def view_indices(
    n_available: int,
    strategy: str,
    n_views: int,
    n_tiles: int,
    rng: np.random.Generator,
    grid_xy: np.ndarray | None = None,
):
    """Tile indices of each view ``(V, n_tiles)`` and a validity mask ``(V, n_tiles)``.

    ``grid_xy`` `(n_available, 2)`, the tiles' grid positions, is needed by the ``window`` strategy only.
    """
    if strategy == "window":
        from ..features.windows import random_windows

        index = random_windows(grid_xy, n_views, n_tiles, rng)
        return index, np.ones_like(index, dtype=bool)
    if strategy == "random":
        index = rng.integers(0, n_available, size=(n_views, n_tiles))
        return index, np.ones_like(index, dtype=bool)
    if strategy == "chunks":
        n_chunks = -(-n_available // n_tiles)
        flat = np.arange(n_chunks * n_tiles)
        mask = (flat < n_available).reshape(n_chunks, n_tiles)
        return np.minimum(flat, n_available - 1).reshape(n_chunks, n_tiles), mask
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def embed_views(
    model, features: np.ndarray, coords: np.ndarray, mask: np.ndarray, patch_size_level0
) -> torch.Tensor:
    """Run the encoder on views ``(V, n, D)``; returns ``(V, E)`` float32."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        output = model(
            tile_features=torch.from_numpy(np.ascontiguousarray(features)).to(device),
            tile_coords=torch.from_numpy(np.ascontiguousarray(coords)).to(device),
            tile_mask=torch.from_numpy(mask).to(device),
            patch_size_level0=torch.as_tensor(patch_size_level0, device=device),
        )
    return output.slide_embedding.float()


def _finish(view_embeddings: torch.Tensor) -> np.ndarray:
    import torch

    return torch.nn.functional.normalize(view_embeddings.mean(dim=0), dim=0).cpu().numpy()


def embed_slide(
    model,
    tile_features: np.ndarray,
    tile_coords: np.ndarray,
    patch_size_level0: int,
    slide_id: str,
    strategy: str = "random",
    n_views: int = 100,
    n_tiles: int | None = None,
    seed: int = 0,
    max_views_per_batch: int = 4096,
) -> np.ndarray:
    """One slide's embedding ``(E,)``, unit L2 norm, from its tile features ``(n, D)`` and level-0 coords ``(n, 2)``.

    Gives the same vector as :func:`embed_tile_dataset` and ``giga-ssl embed`` for that slide: the views are
    drawn from ``seed`` and ``slide_id`` (the Dataset's ``slide_id``, the slide file's stem), which is why
    ``slide_id`` is required.
    """
    import torch

    n_tiles = n_tiles or model.config.n_tiles
    if len(tile_features) == 0:
        raise ValueError(f"slide {slide_id!r} has no tiles to embed")
    rng = np.random.default_rng(slide_seed(seed, slide_id))
    grid_xy = np.asarray(tile_coords) // patch_size_level0
    index, mask = view_indices(len(tile_features), strategy, n_views, n_tiles, rng, grid_xy)
    outputs = []
    for start in range(0, len(index), max_views_per_batch):
        part, part_mask = (
            index[start : start + max_views_per_batch],
            mask[start : start + max_views_per_batch],
        )
        patch = np.full(len(part), patch_size_level0)
        outputs.append(embed_views(model, tile_features[part], tile_coords[part], part_mask, patch))
    return _finish(torch.cat(outputs))


def bad_slides(dataset) -> dict[str, str]:
    """``{slide_id: reason}`` of the rows of a tile-feature Dataset that cannot be embedded (no tiles, NaN/inf)."""
    from ..contracts.tile_features import TileArrays, without_indices_mapping

    dataset = without_indices_mapping(dataset)
    slide_ids = dataset.data.column("slide_id").to_pylist()
    return {
        str(slide_ids[row]): reason
        for row, reason in TileArrays.from_dataset(dataset).unusable_rows().items()
    }


def _refuse_bad_slides(found: dict[str, str]) -> None:
    if not found:
        return
    listed = "; ".join(f"{slide_id} ({reason})" for slide_id, reason in list(found.items())[:10])
    more = f" and {len(found) - 10} more" if len(found) > 10 else ""
    raise ValueError(
        f"{len(found)} slide(s) cannot be embedded: {listed}{more}; re-extract them, or pass --skip-bad-slides "
        "to leave them out"
    )


def embed_tile_dataset(
    model,
    dataset,
    strategy: str = "random",
    n_views: int = 100,
    n_tiles: int | None = None,
    seed: int = 0,
    max_views_per_batch: int = 4096,
    progress: bool = True,
    exclude: Collection[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embed the slides of an exhaustive tile-feature Dataset; returns ``(ids (N,), embeddings (N, E))``.

    Slides without tiles or with NaN / inf features raise a ValueError naming them, before any work, unless
    the caller passes them as ``exclude`` (then they are left out of the result).
    Views of several slides share a forward pass (up to ``max_views_per_batch`` views) when the model's sparse
    map size is per slide; otherwise each slide's views go alone.
    """
    from tqdm.auto import tqdm

    from ..contracts import NO_AUGMENTATION
    from ..contracts.tile_features import TileArrays, without_indices_mapping

    if exclude is None:
        _refuse_bad_slides(bad_slides(dataset))
        exclude = ()
    n_tiles = n_tiles or model.config.n_tiles
    dataset = without_indices_mapping(dataset)
    aug_ids = np.asarray(dataset.data.column("aug_id").to_numpy())
    if (aug_ids != NO_AUGMENTATION).any():
        raise ValueError(
            "embedding needs the exhaustive (non-augmented) tile features: pass DIR/exhaustive of giga-ssl extract"
        )
    slide_ids = [str(s) for s in dataset.data.column("slide_id").to_pylist()]
    if len(set(slide_ids)) != len(slide_ids):
        raise ValueError("the exhaustive tile-feature Dataset has several rows for one slide")
    arrays = TileArrays.from_dataset(dataset)
    patch_sizes = np.asarray(dataset.data.column("patch_size_level0").to_numpy())
    share_batches = getattr(model.config, "grid_size_mode", "per_slide") == "per_slide"

    embeddings = np.zeros((len(slide_ids), model.config.hidden_dim), dtype=np.float32)
    pending: list[
        tuple[int, np.ndarray, np.ndarray, np.ndarray]
    ] = []  # (slide, features, coords, mask) views

    def flush():
        if not pending:
            return
        features = np.concatenate([p[1] for p in pending])
        coords = np.concatenate([p[2] for p in pending])
        mask = np.concatenate([p[3] for p in pending])
        patch = np.concatenate([np.full(len(p[1]), patch_sizes[p[0]]) for p in pending])
        out = embed_views(model, features, coords, mask, patch)
        start = 0
        for slide, slide_features, _, _ in pending:
            embeddings[slide] = _finish(out[start : start + len(slide_features)])
            start += len(slide_features)
        pending.clear()

    excluded = set(exclude)
    kept = [slide for slide, slide_id in enumerate(slide_ids) if slide_id not in excluded]
    for slide in tqdm(kept, desc="embedding slides", unit="slide", disable=not progress):
        features, coords = arrays.row(slide)
        rng = np.random.default_rng(slide_seed(seed, slide_ids[slide]))
        index, mask = view_indices(
            len(features), strategy, n_views, n_tiles, rng, coords // patch_sizes[slide]
        )
        if len(index) > max_views_per_batch or not share_batches:
            flush()
            embeddings[slide] = embed_slide(
                model, features, coords, patch_sizes[slide], slide_ids[slide], strategy, n_views, n_tiles, seed,
                max_views_per_batch,
            )  # fmt: skip
            continue
        if sum(len(p[1]) for p in pending) + len(index) > max_views_per_batch:
            flush()
        pending.append((slide, features[index], coords[index], mask))
    flush()
    return np.asarray(slide_ids)[kept], embeddings[kept]


def model_identity(model) -> dict:
    return {
        "model": str(getattr(model.config, "_name_or_path", "")),
        "model_revision": getattr(model.config, "_commit_hash", None),
    }


def save_embeddings(
    out_dir: str | Path, ids: np.ndarray, embeddings: np.ndarray, metadata: dict, npy: bool
) -> Path:
    """Write the slide-embeddings Dataset (+ metadata sidecar, + the paper's npy pair with ``npy``)."""
    from ..contracts import METADATA_FILENAME, NPY_EMBEDDINGS, NPY_IDS
    from ..contracts.slide_embeddings import embeddings_dataset

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    embeddings_dataset(ids, embeddings).save_to_disk(str(tmp))
    write_json(tmp / METADATA_FILENAME, metadata)
    if npy:
        np.save(tmp / NPY_EMBEDDINGS, embeddings)
        np.save(tmp / NPY_IDS, ids.astype(str))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def load_model(model_name_or_path: str, device: str, trust_remote_code: bool = False):
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    from transformers import AutoModel

    import giga_ssl_hf  # noqa: F401  (registers the GigaSSL classes with AutoModel)

    if not Path(model_name_or_path).exists():
        try:
            validate_repo_id(model_name_or_path)
        except HFValidationError:
            raise FileNotFoundError(
                f"no model folder at {model_name_or_path} (and not a Hub repo id)"
            ) from None

    model = AutoModel.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    return model.to(device).eval()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="giga-ssl embed",
        description="Embed every slide of an exhaustive tile-feature Dataset with a trained Giga-SSL encoder: "
        "the mean of many views' embeddings, L2-normalised. Writes an HF Dataset (slide_id, embedding).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="examples:\n"
        "  giga-ssl embed --model runs/ssl/final --features out/exhaustive --out runs/embeddings\n"
        "  giga-ssl embed --model org/giga-ssl-tcga --features out --out emb --strategy chunks --npy",
    )
    parser.add_argument("--model", required=True, help="trained model folder or Hub repo id")
    parser.add_argument(
        "--features", required=True, help="exhaustive tile-feature Dataset, or a giga-ssl extract folder"
    )
    parser.add_argument("--out", required=True, help="output folder of the embeddings Dataset")
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="random",
        help="random views (the paper), tile chunks, or spatially contiguous windows (for encoders trained "
        "with --view_sampling window)",
    )
    parser.add_argument("--n-views", type=int, default=100, help="views per slide (random and window)")
    parser.add_argument(
        "--n-tiles", type=int, default=None, help="tiles per view (default: the model's n_tiles)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random views")
    parser.add_argument("--max-views-per-batch", type=int, default=4096, help="views per forward pass")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--npy", action="store_true", help="also write embeddings.npy + ids.npy (paper format)"
    )
    parser.add_argument(
        "--concat-mean-pool",
        action="store_true",
        help="append each slide's mean tile feature, standardised over the embedded slides, to its embedding "
        "(the hybrid: better on composition tasks)",
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="load Hub models with their own code"
    )
    parser.add_argument(
        "--skip-bad-slides",
        action="store_true",
        help="leave out slides without tiles or with NaN / inf features (listed in the log and the metadata) "
        "instead of refusing to start",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the embeddings already in --out")
    parser.add_argument(
        "--allow-encoder-mismatch",
        action="store_true",
        help="embed tile features of another tile encoder than the model was trained on (refused by default: "
        "the model's config.tile_encoder and the features' metadata must agree)",
    )
    return parser


def _model_config(model, trust_remote_code: bool):
    """A loaded model's config, or the config of a model folder / Hub id (read before any weight)."""
    if not isinstance(model, (str, Path)):
        return model.config
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    from transformers import AutoConfig

    import giga_ssl_hf  # noqa: F401  (registers GigaSSLConfig with AutoConfig)

    if not Path(model).exists():
        try:
            validate_repo_id(str(model))
        except HFValidationError:
            return None  # load_model says what is wrong with the name
    return AutoConfig.from_pretrained(str(model), trust_remote_code=trust_remote_code)


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
    """
    from ..contracts import read_metadata
    from ..contracts.tile_features import (
        load_tile_dataset,
        require_same_encoder,
        resolve_tile_dataset_dir,
    )

    features_dir = resolve_tile_dataset_dir(features, "exhaustive")
    dataset = load_tile_dataset(features_dir)
    skipped = bad_slides(dataset)
    if not skip_bad_slides:
        _refuse_bad_slides(skipped)
    elif skipped:
        logger.warning("left out %d slide(s) that cannot be embedded: %s", len(skipped), skipped)
    features_encoder = read_metadata(features_dir).get("tile_encoder")
    model_encoder = getattr(_model_config(model, trust_remote_code), "tile_encoder", None)
    require_same_encoder(model_encoder, features_encoder, allow_encoder_mismatch, "embed")
    if isinstance(model, (str, Path)):
        model = load_model(str(model), resolve_device(device), trust_remote_code)
    ids, embeddings = embed_tile_dataset(
        model, dataset, strategy, n_views, n_tiles, seed, max_views_per_batch, exclude=set(skipped)
    )
    if concat_mean_pool:
        from ..features.pooling import mean_pool, standardise_over_slides

        mean_ids, means = mean_pool(dataset, exclude=set(skipped))
        assert mean_ids.tolist() == ids.tolist()  # both in the Dataset's row order, same slides left out
        embeddings = np.concatenate([embeddings, standardise_over_slides(means)], axis=1)
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
    }
    out = save_embeddings(out, ids, embeddings, metadata, npy)
    logger.info("wrote %d slide embeddings to %s", len(ids), out)
    return out


def run(args: argparse.Namespace) -> Path:
    if args.n_views < 1 or (args.n_tiles is not None and args.n_tiles < 1):
        raise ValueError("--n-views and --n-tiles must be positive")
    if Path(args.out).exists() and not args.overwrite:
        raise ValueError(
            f"{args.out} already exists: choose another --out, or pass --overwrite to replace it"
        )
    return embed_to_folder(
        args.model, args.features, args.out, args.strategy, args.n_views, args.n_tiles, args.seed,
        args.max_views_per_batch, args.npy, args.skip_bad_slides, args.device, args.trust_remote_code,
        args.allow_encoder_mismatch, args.concat_mean_pool,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"giga-ssl embed: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
