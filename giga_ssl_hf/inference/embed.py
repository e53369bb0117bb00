"""``giga-ssl embed``: slide embeddings from a trained Giga-SSL encoder, the mean of many views, L2-normalised.

Its settings are :class:`EmbedSettings`, from which the command line is generated; the work is
:func:`~giga_ssl_hf.inference.embed_folder.embed_to_folder`, which takes them (the pipeline calls it directly). The embedding itself: :mod:`.views` (one slide) and :mod:`.slides` (a tile-feature Dataset); the
library names are importable from here.

    giga-ssl embed --model runs/ssl/final --features out/exhaustive --out runs/embeddings --npy
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ..contracts.tile_sampling import EmbeddingSampling
from ..settings import SettingsParser, flag_of, option, run_main
from .embed_folder import embed_to_folder, load_model, save_embeddings
from .slides import embed_tile_dataset
from .views import embed_slide, view_indices

# The library's names, importable from the command's module as the README and examples do.
__all__ = [
    "EmbedSettings",
    "embed_slide",
    "embed_tile_dataset",
    "embed_to_folder",
    "load_model",
    "main",
    "save_embeddings",
    "view_indices",
]


# The inputs of embed and heatmap.
MODEL_HELP = "Trained model folder or Hub repo id. Required."
FEATURES_HELP = "Exhaustive tile-feature Dataset, or a giga-ssl extract folder. Required."


@dataclass
class EmbedSettings:
    """embedding: the views of each slide and their mean (what :func:`embed_to_folder` does)"""

    model: str | None = option(None, MODEL_HELP, required=True, managed=True)
    features: str | None = option(None, FEATURES_HELP, required=True, managed=True)
    out: str | None = option(None, "Output folder of the embeddings Dataset.", required=True, managed=True)
    tile_sampling: EmbeddingSampling = option(
        "random",
        "random views (the paper), tile chunks, spatially contiguous windows (for encoders trained with "
        "--tile-sampling window), or all: one view of the whole slide (for encoders trained with "
        "--slide-pooling max or top).",
        managed=True,
    )
    n_views: int = option(100, "Views per slide (random and window).")
    n_tiles: int | None = option(None, "Tiles per view (default: the model's n_tiles).", managed=True)
    seed: int = option(0, "Seed of the random views.", managed=True)
    max_views_per_batch: int = option(4096, "Views per forward pass.", affects_results=False)
    device: str = option("auto", "auto, cpu, cuda, cuda:1, ...", managed=True)
    npy: bool = option(False, "Also write embeddings.npy + ids.npy (paper format).", managed=True)
    concat_mean_pool: bool = option(
        False,
        "Append each slide's mean tile feature, standardised over the embedded slides, to its embedding (the "
        "hybrid: better on composition tasks).",
    )
    top_site_fractions: tuple[float, ...] | None = option(
        None,
        "For a model trained with --slide-pooling top: pool each slide at several fractions of its sites (e.g. "
        "0.03 0.1, from one pass), one L2-normalised block each; giga-ssl evaluate then chooses the block per "
        "task by inner cross-validation, since the best fraction depends on how large the signal is. Default: "
        "the model's own fraction, one block.",
        metavar="Q",
    )
    trust_remote_code: bool = option(False, "Load Hub models with their own code.", managed=True)
    skip_bad_slides: bool = option(
        False,
        "Leave out slides without tiles or with NaN / inf features (listed in the log and the metadata) "
        "instead of refusing to start.",
    )
    overwrite: bool = option(False, "Replace the embeddings already in --out.", managed=True)
    allow_encoder_mismatch: bool = option(
        False,
        "Embed tile features of another tile encoder than the model was trained on (refused by default: the "
        "model's config.tile_encoder and the features' metadata must agree).",
        managed=True,
    )

    def __post_init__(self):
        if self.n_views < 1 or (self.n_tiles is not None and self.n_tiles < 1):
            raise ValueError(f"{flag_of('n_views')} and {flag_of('n_tiles')} must be positive")
        if self.top_site_fractions is not None:
            from ..contracts.slide_embeddings import top_block_name

            fractions = self.top_site_fractions
            names = {top_block_name(q) for q in fractions}  # the blocks' names tell the fractions apart
            if not fractions or not all(0 < q <= 1 for q in fractions) or len(names) != len(fractions):
                raise ValueError(
                    f"{flag_of('top_site_fractions')} takes distinct values in (0, 1], got {fractions}"
                )


DESCRIPTION = """Embed every slide of an exhaustive tile-feature Dataset with a trained Giga-SSL encoder: the mean
of many views' embeddings, L2-normalised. Writes an HF Dataset (slide_id, embedding)."""

EPILOG = """examples:
  giga-ssl embed --model runs/ssl/final --features out/exhaustive --out runs/embeddings
  giga-ssl embed --model org/giga-ssl-tcga --features out --out emb --tile-sampling chunks --npy
  giga-ssl embed --model runs/top/final --features out --out emb --tile-sampling all --top-site-fractions 0.03 0.1"""


def build_parser() -> SettingsParser:
    return SettingsParser(EmbedSettings, prog="giga-ssl embed", description=DESCRIPTION, epilog=EPILOG)


def main(argv: list[str] | None = None) -> int:
    def run(settings: EmbedSettings) -> int:
        embed_to_folder(settings)
        return 0

    return run_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
