"""Speed of one full SimCLR step (forward, backward, Adam) of the SparseConvMIL encoder.

256 slides x 2 views, 256 -> 512 channels (ResNet18 ``layer4``), tiles drawn with replacement from a 60x60 grid
with 40% tissue, at 5, 64 and 256 tiles per view. Our gather-matmul-scatter over existing neighbour pairs runs
side by side with a naive baseline that gathers all 9 neighbours of every output site (zero rows included)
and does one matmul per convolution.

    python benchmarks/bench_ssl_step.py            # 5, 64 and 256 tiles
    python benchmarks/bench_ssl_step.py --tiles 5 --steps 5 --device cuda
    python benchmarks/bench_ssl_step.py --contended --tiles 5   # quiet vs beside a competing process

``--contended`` measures each variant alone and beside a competing process (a 2-thread matmul loop, as
another job on the same cores), alternately, ``--repeats`` times, under two OpenMP wait policies, each in
its own process: "passive" (what the `giga-ssl` commands set before torch loads: idle threads sleep at once) and
"spin" (libgomp's default, ``GOMP_SPINCOUNT=300000``: idle threads spin a while before sleeping).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time

import torch
from table import text_table

from giga_ssl_hf import GigaSSLConfig, GigaSSLForContrastivePretraining
from giga_ssl_hf.models.gigassl.sparse_ops import SparseGrid, StridedConv2d, SubmanifoldConv2d


def _neighbour_table(pairs, n_out, device):
    """(n_out, 9) input row of each kernel offset, -1 where the neighbour does not exist."""
    table = torch.full((n_out, len(pairs)), -1, dtype=torch.long, device=device)
    for offset, (input_rows, output_rows) in enumerate(pairs):
        table[output_rows, offset] = input_rows
    return table


def _gather9_matmul(features, table, weight):
    padded = torch.cat([features, features.new_zeros(1, features.shape[1])])  # row -1 is the zero row
    gathered = padded[table].flatten(1)  # (n_out, k*k*C_in), zeros included
    dense_weight = weight.permute(2, 3, 1, 0).reshape(-1, weight.shape[0])  # (k*k*C_in, C_out)
    return gathered @ dense_weight


class NaiveSubmanifoldConv2d(SubmanifoldConv2d):
    def forward(self, grid: SparseGrid) -> SparseGrid:
        if self.kernel_size == 1:
            return super().forward(grid)
        n = grid.features.shape[0]
        centre = torch.arange(n, device=grid.features.device)
        pairs = [p if p is not None else (centre, centre) for p in grid.submanifold_pairs(3)]
        return grid.with_features(
            _gather9_matmul(grid.features, _neighbour_table(pairs, n, centre.device), self.weight)
        )


class NaiveStridedConv2d(StridedConv2d):
    def forward(self, grid: SparseGrid) -> SparseGrid:
        out_grid, pairs = grid.downsample()
        table = _neighbour_table(pairs, out_grid.batch.numel(), grid.features.device)
        return out_grid.with_features(_gather9_matmul(grid.features, table, self.weight))


def naive_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same model and weights with every sparse conv replaced by its gather-9 twin."""
    naive = copy.deepcopy(model)
    for module in naive.modules():
        if type(module) is SubmanifoldConv2d:
            module.__class__ = NaiveSubmanifoldConv2d
        elif type(module) is StridedConv2d:
            module.__class__ = NaiveStridedConv2d
    return naive


class ConvCounter:
    """Counts neighbour pairs and useful multiply-adds of every sparse conv in a forward."""

    def __init__(self, model: torch.nn.Module):
        self.pairs = 0
        self.flops = 0
        self.handles = [
            m.register_forward_hook(self._hook)
            for m in model.modules()
            if isinstance(m, (SubmanifoldConv2d, StridedConv2d))
        ]

    def _hook(self, module, inputs, output):
        grid = inputs[0]
        if isinstance(module, StridedConv2d):
            n_pairs = sum(p[0].numel() for p in grid.downsample()[1])
        else:
            n_pairs = grid.features.shape[0]
            if module.kernel_size > 1:
                n_pairs += sum(
                    p[0].numel() for p in grid.submanifold_pairs(module.kernel_size) if p is not None
                )
        self.pairs += n_pairs
        self.flops += 2 * n_pairs * module.in_channels * module.out_channels

    def remove(self):
        for handle in self.handles:
            handle.remove()


def make_batch(n_slides: int, n_tiles: int, generator: torch.Generator, grid: int = 60, tissue: float = 0.4):
    """Two views per slide, tiles drawn with replacement from the slide's tissue cells of a grid x grid map."""
    cells = grid * grid
    n_tissue = int(tissue * cells)
    tissue_cells = torch.stack(
        [torch.randperm(cells, generator=generator)[:n_tissue] for _ in range(n_slides)]
    )
    pick = torch.randint(0, n_tissue, (n_slides, 2, n_tiles), generator=generator)
    chosen = torch.gather(tissue_cells[:, None].expand(-1, 2, -1), 2, pick)  # (slides, 2, tiles)
    coords = torch.stack([chosen // grid, chosen % grid], dim=-1) * 224
    features = torch.randn(n_slides, 2, n_tiles, 256, generator=generator)
    return features, coords


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(model, features, coords, steps: int, device) -> float:
    """Median seconds of a full SimCLR step, after one warm-up step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    times = []
    for step in range(steps + 1):
        _sync(device)
        start = time.perf_counter()
        loss = model(features, coords).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        if step:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def run(
    tiles=(5, 64, 256), steps: int = 3, n_slides: int = 256, device: str = "cpu", naive: bool = True
) -> list[dict]:
    device = torch.device(device)
    torch.manual_seed(0)
    model = GigaSSLForContrastivePretraining(GigaSSLConfig()).to(device).train()
    variants = [("pairs (ours)", model)] + ([("gather-9 (naive)", naive_copy(model))] if naive else [])
    rows = []
    for n_tiles in tiles:
        features, coords = make_batch(n_slides, n_tiles, torch.Generator().manual_seed(n_tiles))
        features, coords = features.to(device), coords.to(device)
        counter = ConvCounter(model)
        with torch.no_grad():
            model(features, coords)
        counter.remove()
        for name, variant in variants:
            seconds = time_steps(variant, features, coords, steps, device)
            rows.append(
                {
                    "tiles/view": n_tiles,
                    "variant": name,
                    "ms/step": 1e3 * seconds,
                    "neighbour pairs": counter.pairs,
                    # forward + backward (input and weight gradients) = 3x the forward multiply-adds
                    "GFLOP/s": 3 * counter.flops / seconds / 1e9,
                }
            )
    return rows


COMPETITOR = """
import time, torch
torch.set_num_threads(2)
a = torch.randn(1024, 1024)
while True:
    a @ a
"""

# Set explicitly in each child: the commands' default (giga_ssl_hf.runtime) acts only before torch loads.
WAIT_POLICIES = {"passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "spin": {"GOMP_SPINCOUNT": "300000"}}


def run_contended(n_tiles: int, steps: int, n_slides: int, repeats: int) -> list[dict]:
    """Median ms/step of each variant alone ("quiet") and beside a competing process ("contended").

    Quiet and contended alternate, so slow drifts of a shared machine hit both alike.
    """
    torch.manual_seed(0)
    model = GigaSSLForContrastivePretraining(GigaSSLConfig()).train()
    variants = [("pairs (ours)", model), ("gather-9 (naive)", naive_copy(model))]
    features, coords = make_batch(n_slides, n_tiles, torch.Generator().manual_seed(n_tiles))
    device = torch.device("cpu")
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeats):
        for condition in ("quiet", "contended"):
            competitor = None
            if condition == "contended":
                competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR])
                time.sleep(1.0)  # let it start computing
            try:
                for name, variant in variants:
                    times.setdefault((name, condition), []).append(
                        time_steps(variant, features, coords, steps, device)
                    )
            finally:
                if competitor is not None:
                    competitor.kill()
                    competitor.wait()
    median = {key: sorted(v)[len(v) // 2] for key, v in times.items()}
    rows = []
    for name, _ in variants:
        quiet, contended = median[(name, "quiet")], median[(name, "contended")]
        rows.append(
            {
                "variant": name,
                "quiet ms": 1e3 * quiet,
                "contended ms": 1e3 * contended,
                "contended/quiet": contended / quiet,
                "vs gather-9 quiet": median[("gather-9 (naive)", "quiet")] / quiet,
                "vs gather-9 contended": median[("gather-9 (naive)", "contended")] / contended,
                "quiet runs ms": [round(1e3 * t, 1) for t in times[(name, "quiet")]],
                "contended runs ms": [round(1e3 * t, 1) for t in times[(name, "contended")]],
            }
        )
    return rows


def contended_table(n_tiles: int, steps: int, n_slides: int, repeats: int) -> tuple[str, list[dict]]:
    """Run :func:`run_contended` once per OpenMP wait policy, each in a fresh process."""
    rows = []
    for policy, env in WAIT_POLICIES.items():
        command = [
            sys.executable, __file__, "--contended-worker", "--tiles", str(n_tiles), "--steps", str(steps),
            "--slides", str(n_slides), "--repeats", str(repeats),
        ]  # fmt: skip
        result = subprocess.run(
            command, env={**os.environ, **env}, capture_output=True, text=True, check=True
        )
        for row in json.loads(result.stdout.strip().splitlines()[-1]):
            rows.append({"wait policy": policy, **row})
    columns = [
        ("wait policy", "<11"),
        ("variant", "<17"),
        ("quiet ms", ">9.1f"),
        ("contended ms", ">12.1f"),
        ("contended/quiet", ">10.2fx"),
        ("vs gather-9 quiet", ">10.2fx"),
        ("vs gather-9 contended", ">10.2fx"),
    ]
    return text_table(rows, columns), rows


def format_table(rows: list[dict]) -> str:
    columns = [
        ("tiles/view", ">10"),
        ("variant", "<17"),
        ("ms/step", ">9.1f"),
        ("neighbour pairs", ">15,"),
        ("GFLOP/s", ">8.1f"),
    ]
    return text_table(rows, columns)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiles", type=int, nargs="+", default=[5, 64, 256], help="tiles per view")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting (after one warm-up)")
    parser.add_argument("--slides", type=int, default=256, help="slides per batch (2 views each)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-naive", action="store_true", help="skip the gather-9 baseline")
    parser.add_argument(
        "--contended", action="store_true", help="CPU: quiet vs beside a competing process (first --tiles)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="--contended: quiet/contended alternations")
    parser.add_argument("--contended-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.contended_worker:
        print(json.dumps(run_contended(args.tiles[0], args.steps, args.slides, args.repeats)))
        return ""
    if args.contended:
        table, _ = contended_table(args.tiles[0], args.steps, args.slides, args.repeats)
        print(
            f"SimCLR step, {args.slides} slides x 2 views, {args.tiles[0]} tiles/view, CPU, "
            f"{torch.get_num_threads()} threads, median of {args.repeats} alternations of "
            f"{args.steps} steps\n{table}"
        )
        return table
    rows = run(tuple(args.tiles), args.steps, args.slides, args.device, naive=not args.no_naive)
    table = format_table(rows)
    print(
        f"SimCLR step, {args.slides} slides x 2 views, 256 -> 512 channels, device {args.device}, "
        f"{torch.get_num_threads()} threads\n{table}"
    )
    return table


if __name__ == "__main__":
    main()
