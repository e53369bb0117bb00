"""How a stage picks a slide's tiles: one vocabulary, one setting (``tile_sampling``, ``--tile-sampling``) in every
stage that draws tiles, each taking the words that mean something to it:

- ``random``: tiles drawn at random with replacement (the paper's augmentation rows, training views and
  embedding views);
- ``window``: the ``n`` tiles nearest a random tile, a spatially contiguous patch, so that the sparse CNN sees
  neighbourhoods (:mod:`giga_ssl_hf.features.windows`);
- ``all``: every tissue tile (an augmentation row of ``extract``; ``embed``: one view of the whole slide, so that
  every tile's neighbourhood is complete, e.g. for an encoder that pools its sites by their maximum);
- ``chunks``: every tile once, in consecutive chunks of ``n`` (the views of ``embed``);
- ``window-pair``: every view of a slide is a window around the same place (training's views; two windows at
  different places share only what is constant over the slide, such as composition and stain). Embedding
  draws its views of such a model as ``window``.

Training's views and embedding's views are drawn alike, so ``giga-ssl pipeline`` embeds with training's word\n(``window-pair`` embeds as ``window``).
"""

from typing import Literal, get_args

# extract: the tiles of each shared augmentation row
AugmentationSampling = Literal["random", "window", "all"]
# train: the tiles of each view
ViewSampling = Literal["random", "window", "window-pair"]
# embed: the views of each slide
EmbeddingSampling = Literal["random", "window", "chunks", "all"]

AUGMENTATION_SAMPLINGS: tuple[str, ...] = get_args(AugmentationSampling)
VIEW_SAMPLINGS: tuple[str, ...] = get_args(ViewSampling)
EMBEDDING_SAMPLINGS: tuple[str, ...] = get_args(EmbeddingSampling)
