"""Slides per second of `giga-ssl embed` on CPU: 10,000 tiles per slide, paper-sized encoder (256 -> 512).

Strategies side by side in one run: ``random`` (100 views of 5 tiles) and ``chunks`` (every tile once, in
chunks of 5: 2,000 views per slide).

    python benchmarks/bench_embed.py --slides 4
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from table import text_table

from giga_ssl_hf import GigaSSLConfig, GigaSSLModel
from giga_ssl_hf.contracts.tile_features import tile_features_schema
from giga_ssl_hf.inference.embed import embed_tile_dataset


def make_exhaustive(n_slides: int, n_tiles: int, seed: int = 0):
    import datasets

    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_tiles / 0.4)))  # 40% tissue on a square grid
    rows = {name: [] for name in tile_features_schema(256)}
    for slide in range(n_slides):
        cells = np.sort(
            rng.choice(side * side, n_tiles, replace=False)
        )  # row-major, as extraction stores them
        rows["slide_id"].append(f"slide_{slide}")
        rows["aug_id"].append(-1)
        rows["features"].append(rng.normal(size=(n_tiles, 256)).astype(np.float16))
        rows["coords"].append(np.stack([cells % side, cells // side], 1) * 448)
        rows["patch_size_level0"].append(448)
        rows["mpp"].append(0.25)
        rows["magnification"].append(40.0)
    return datasets.Dataset.from_dict(rows, features=tile_features_schema(256))


def run(n_slides: int = 4, n_tiles: int = 10_000) -> list[dict]:
    torch.manual_seed(0)
    model = GigaSSLModel(GigaSSLConfig()).eval()
    dataset = make_exhaustive(n_slides, n_tiles)
    rows = []
    for tile_sampling, n_views in (("random", 100), ("chunks", None)):
        start = time.perf_counter()
        embed_tile_dataset(model, dataset, tile_sampling=tile_sampling, n_views=n_views or 1, progress=False)
        seconds = time.perf_counter() - start
        views = n_views or -(-n_tiles // 5)
        rows.append({"tile_sampling": tile_sampling, "views/slide": views, "slides/s": n_slides / seconds})
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slides", type=int, default=4)
    parser.add_argument("--tiles", type=int, default=10_000, help="tiles per slide")
    args = parser.parse_args(argv)
    rows = run(args.slides, args.tiles)
    lines = [
        f"giga-ssl embed on CPU ({torch.get_num_threads()} threads), {args.tiles:,} tiles/slide, 5 tiles/view, 256 -> 512",
        text_table(rows, [("tile_sampling", "<8"), ("views/slide", ">11,"), ("slides/s", ">8.2f")]),
    ]
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
