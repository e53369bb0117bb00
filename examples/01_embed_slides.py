"""From a real whole-slide image to one slide embedding, with ``transformers.AutoModel``.

What it shows:

1. tiling the bundled real H&E crop (``CMU-1-Small-Region.svs``, Aperio, 0.499 µm/px) into 224 px tiles at
   1 µm/px and encoding every tile with ResNet18 cut after ``layer3`` (256 features per tile): the exhaustive
   tile-feature Dataset of ``giga-ssl extract``;
2. loading a Giga-SSL slide encoder with ``AutoModel.from_pretrained`` (``giga_ssl_hf.register_auto_classes()`` registers it);
3. ``embed_slide``: the mean of many random views of the slide's tiles, L2-normalised -> one vector.

Everything runs offline: the tile encoder is randomly initialised (real use takes pretrained weights: pass
``--pretrained``, which downloads the ImageNet ResNet18 through timm and so needs the Hub), and without ``--model`` a small random-init GigaSSLModel is saved to ``OUT/model`` and reloaded through
AutoModel, standing in for a trained one (``giga-ssl train`` output, or a Hub repo id).

Run (about 10 s on 2 CPU cores):

    python examples/01_embed_slides.py
    python examples/01_embed_slides.py --slide my_slide.svs --model runs/ssl/final --out runs/example01
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

import datasets
import numpy as np
import torch
import transformers
from transformers import AutoModel

import giga_ssl_hf
from giga_ssl_hf.contracts.extraction_folder import EXHAUSTIVE
from giga_ssl_hf.contracts.tile_features import load_tile_dataset
from giga_ssl_hf.features.extract import ExtractionConfig, extract_slides
from giga_ssl_hf.inference.embed import embed_slide

DEFAULT_OUT = Path("examples_output") / "01_embed_slides"


def bundled_slide() -> Path:
    """Path of the real sample slide shipped as package data."""
    return Path(str(resources.files("giga_ssl_hf.data") / "CMU-1-Small-Region.svs"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slide", default=None, help="whole-slide image (default: the bundled CMU crop)")
    parser.add_argument(
        "--model", default=None, help="trained Giga-SSL folder or Hub id (default: a small random-init model)"
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder")
    parser.add_argument(
        "--pretrained",
        action="store_true",
        help="ImageNet tile encoder weights (downloads them; needs the Hub)",
    )
    parser.add_argument("--n-views", type=int, default=50, help="views averaged into the embedding")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    # no per-file progress bars from datasets / transformers: the example prints its own results
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    out = Path(args.out)
    slide = Path(args.slide) if args.slide else bundled_slide()

    # 1. Slide -> exhaustive tile features (resumable: a rerun into the same folder skips the done slide).
    #    pretrained=False: a seeded random-init ResNet18, so the example needs no network. Real use takes
    #    pretrained weights (ImageNet as in the paper, or a histology encoder via --encoder on giga-ssl extract).
    config = ExtractionConfig(encoder="resnet18-layer3", pretrained=args.pretrained, seed=args.seed)
    summary = extract_slides(
        [slide], out / "features", config, passes=(EXHAUSTIVE,), device=args.device, progress=False
    )
    if summary.failed:
        raise SystemExit(f"extraction failed: {summary.failed}")
    tiles = load_tile_dataset(out / "features" / EXHAUSTIVE).with_format("numpy")[0]
    features, coords = tiles["features"], tiles["coords"]  # (n, 256), (n, 2) level-0 (x, y) px
    print(f"{tiles['slide_id']}: {len(features)} tiles of {int(tiles['patch_size_level0'])} level-0 px, "
          f"features {features.shape}")  # fmt: skip

    # 2. A Giga-SSL slide encoder through AutoModel, once the Giga-SSL classes are registered with it.
    giga_ssl_hf.register_auto_classes()
    model_path = args.model
    if model_path is None:
        torch.manual_seed(args.seed)
        stand_in = giga_ssl_hf.GigaSSLModel(
            giga_ssl_hf.GigaSSLConfig(feature_dim=features.shape[1], hidden_dim=128, n_tiles=5)
        )
        model_path = str(out / "model")
        stand_in.save_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).to(args.device).eval()

    # 3. One embedding: mean of n_views views of model.config.n_tiles tiles each, L2-normalised.
    embedding = embed_slide(
        model,
        features,
        coords,
        patch_size_level0=int(tiles["patch_size_level0"]),
        slide_id=str(tiles["slide_id"]),
        n_views=args.n_views,
        seed=args.seed,
    )
    norm = float(np.linalg.norm(embedding))
    print(
        f"slide embedding: shape {embedding.shape}, L2 norm {norm:.4f} ({type(model).__name__} from {model_path})"
    )

    np.save(out / "embedding.npy", embedding)
    result = {
        "slide_id": str(tiles["slide_id"]),
        "n_tiles": len(features),
        "embedding_shape": list(embedding.shape),
        "norm": norm,
        "model": model_path,
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'embedding.npy'}")
    return result


if __name__ == "__main__":
    main()
