"""What the slide pooling costs: one whole-slide pass of the paper-sized encoder (256 -> 512) per pooling.

Side by side in one run, for slides of 1,000 to 150,000 tiles (40% tissue on a square grid): the forward of
``GigaSSLModel`` with ``slide_pooling`` mean, max and top (3%), the top model pooled at several fractions in
one pass (``embed --top-site-fractions 0.03 0.1``: row ``scales``), and the pooling alone on the same output sites
(:func:`~giga_ssl_hf.models.gigassl.modeling_gigassl.pool_sites`). Top pooling sorts a copy of the sites padded
to the batch's largest slide (one slide here: sites x 512 floats) and keeps k = 3% of them per channel.

    python benchmarks/bench_pooling.py                      # 1k, 10k, 50k, 150k tiles
    python benchmarks/bench_pooling.py --tiles 1000 --repeats 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from table import text_table

from giga_ssl_hf import GigaSSLConfig, GigaSSLModel
from giga_ssl_hf.models.gigassl.modeling_gigassl import pool_sites, top_site_means

POOLINGS = ("mean", "max", "top")


def whole_slide(n_tiles: int, feature_dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`(1, n, D)` features and `(1, n, 2)` level-0 coordinates (224-px tiles) of one slide."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_tiles / 0.4)))
    cells = rng.choice(side * side, n_tiles, replace=False)
    coords = np.stack([cells % side, cells // side], 1) * 224
    features = rng.normal(size=(n_tiles, feature_dim)).astype(np.float32)
    return torch.from_numpy(features)[None], torch.from_numpy(coords)[None]


def best_seconds(repeats: int, function, *args, **kwargs) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return min(times)


def output_sites(model: GigaSSLModel, features, coords) -> tuple[torch.Tensor, torch.Tensor]:
    encoder = model.encoder
    mask = torch.ones(features.shape[:2], dtype=torch.bool)
    grid = encoder.layer4(encoder.build_grid(features, coords, mask, torch.tensor([224])))
    return grid.features, grid.batch


def run(args) -> list[dict]:
    torch.manual_seed(0)
    models = {}
    for pooling in POOLINGS:
        config = GigaSSLConfig(slide_pooling=pooling, top_site_fraction=args.top_fraction)
        models[pooling] = GigaSSLModel(config).eval()
        models[pooling].load_state_dict(models[POOLINGS[0]].state_dict())
    rows = []
    with torch.no_grad():
        for n_tiles in args.tiles:
            features, coords = whole_slide(n_tiles, 256)
            sites, slide_of_site = output_sites(models["mean"], features, coords)
            for pooling, model in models.items():
                forward = best_seconds(args.repeats, model, features, coords, patch_size_level0=224)
                pool = best_seconds(
                    args.repeats, pool_sites, sites, slide_of_site, 1, pooling, args.top_fraction
                )
                rows.append(
                    {"tiles": n_tiles, "sites": len(sites), "pooling": pooling, "forward s": forward,
                     "pooling ms": 1000 * pool, "pooling / forward": pool / forward}
                )  # fmt: skip
            forward = best_seconds(
                args.repeats,
                models["top"],
                features,
                coords,
                patch_size_level0=224,
                top_site_fractions=args.scales,
            )
            pool = best_seconds(args.repeats, top_site_means, sites, slide_of_site, 1, args.scales)
            rows.append(
                {"tiles": n_tiles, "sites": len(sites), "pooling": "scales", "forward s": forward,
                 "pooling ms": 1000 * pool, "pooling / forward": pool / forward}
            )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiles", type=int, nargs="+", default=[1_000, 10_000, 50_000, 150_000])
    parser.add_argument("--top-fraction", type=float, default=0.03, help="top pooling's share of the sites")
    parser.add_argument(
        "--scales", type=float, nargs="+", default=[0.03, 0.1], help="the fractions of the 'scales' row"
    )
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs (default: 3)")
    args = parser.parse_args(argv)
    rows = run(args)
    columns = [("tiles", ">7d"), ("sites", ">6d"), ("pooling", "<7"), ("forward s", ">9.2f"),
               ("pooling ms", ">10.1f"), ("pooling / forward", ">17.4f")]  # fmt: skip
    print(
        f"torch threads: {torch.get_num_threads()}, encoder 256 -> 512, top fraction {args.top_fraction}, "
        f"scales {args.scales}"
    )
    print(text_table(rows, columns))
    return rows


if __name__ == "__main__":
    main()
