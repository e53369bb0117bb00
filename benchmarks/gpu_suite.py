"""Every GPU figure of the package in one command (under 8 minutes on one H100): one table + a JSON file.

- **SSL step**: full SimCLR step (forward, backward, Adam) of the paper-sized model, 256 slides x 2 views,
  256 -> 512, at 5 and 64 tiles per view; eager and ``torch.compile``; fp32 and bf16 autocast.
  Target on one H100: <= 10 ms at 5 tiles.
- **Extraction**: tiles/s of ``extract_slides`` (exhaustive pass, 224 px at 0.5 µm/px, batch 256, random
  weights: no download) on a synthetic JPEG-tiled pyramid the suite writes, with ResNet18-layer3 and
  ViT-B/16, OpenSlide reading + CPU decode vs raw tiles decoded by nvjpeg on the GPU. Target:
  >= 15,000 tiles/s with ResNet18-layer3.
- **Embed**: slides/s of ``embed_tile_dataset`` (10,000 tiles per slide, 100 random views of 5 tiles).
- **Checks** (CUDA correctness, here rather than in CI): the sparse model's loss, embeddings and gradients
  on CUDA against the CPU; eval is bitwise deterministic on CUDA; nvjpeg tiles of the bundled
  CMU-1-Small-Region.svs against OpenSlide's (max / mean grey-level difference); extraction features with
  GPU decode against CPU decode.

    python benchmarks/gpu_suite.py                     # on a CUDA machine; writes benchmarks/gpu_suite.json
    python benchmarks/gpu_suite.py --dry-run --out x.json   # CPU, tiny sizes: every code path, in seconds

A setting that fails (e.g. ``torch.compile`` of the sparse ops) is reported as a failed row; the suite goes on.
The exit status is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_embed import make_exhaustive  # noqa: E402
from bench_ssl_step import make_batch  # noqa: E402
from table import text_table  # noqa: E402

from giga_ssl_hf import GigaSSLConfig, GigaSSLForContrastivePretraining, GigaSSLModel  # noqa: E402
from giga_ssl_hf.features.extract import ExtractionConfig, extract_slides  # noqa: E402
from giga_ssl_hf.inference.embed import embed_tile_dataset  # noqa: E402
from giga_ssl_hf.wsi import iter_tile_blocks, open_slide, tile_grid, tissue_mask  # noqa: E402
from giga_ssl_hf.wsi.raw_tiles import RawTileReader  # noqa: E402
from giga_ssl_hf.wsi.synthetic import write_synthetic_slide  # noqa: E402

CMU = HERE.parent / "giga_ssl_hf" / "data" / "CMU-1-Small-Region.svs"

FULL = {
    "slides": 256,
    "tiles": (5, 64),
    "steps": 10,
    "slide_px": 24576,
    "encoders": ("resnet18-layer3", "vit_base_patch16_224"),
    "embed_slides": 32,
    "embed_tiles": 10_000,
    "model": {},  # the paper's sizes
}
DRY = {
    "slides": 4,
    "tiles": (5,),
    "steps": 1,
    "slide_px": 2048,
    "encoders": ("resnet18-layer3", "vit_tiny_patch16_224"),
    "embed_slides": 2,
    "embed_tiles": 200,
    "model": {"hidden_dim": 32, "projection_dims": (32, 32, 16)},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _row(section: str, setting: str, value, unit: str, **extra) -> dict:
    return {"section": section, "setting": setting, "value": value, "unit": unit, **extra}


def ssl_step_rows(device: torch.device, sizes: dict, dry: bool) -> list[dict]:
    rows = []
    for n_tiles in sizes["tiles"]:
        features, coords = make_batch(sizes["slides"], n_tiles, torch.Generator().manual_seed(n_tiles))
        features, coords = features.to(device), coords.to(device)
        for mode in ("eager", "compile"):
            for precision in ("fp32", "bf16"):
                setting = f"{n_tiles} tiles/view, {mode}, {precision}"
                target = "<= 10 ms" if n_tiles == 5 else ""
                try:
                    ms, first = _time_ssl_step(device, features, coords, mode, precision, sizes, dry)
                    rows.append(
                        _row("ssl step", setting, round(ms, 2), "ms/step", target=target, first_s=first)
                    )
                except Exception as error:  # a failing setting is a result too; the suite goes on
                    rows.append(
                        _row("ssl step", setting, None, "ms/step", target=target, error=_short(error))
                    )
    return rows


def _time_ssl_step(device, features, coords, mode, precision, sizes, dry) -> tuple[float, float]:
    """Median ms of a step after a first (warm-up / compile) step, and that first step's seconds."""
    torch.manual_seed(0)
    model = GigaSSLForContrastivePretraining(GigaSSLConfig(**sizes["model"])).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    # On CPU (dry run) inductor would compile C++ for minutes: the eager backend still traces with dynamo.
    forward = torch.compile(model, backend="eager" if dry else "inductor") if mode == "compile" else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    times = []
    for _ in range(sizes["steps"] + 1):
        _sync(device)
        start = time.perf_counter()
        with autocast:
            loss = forward(features, coords).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        times.append(time.perf_counter() - start)
    first, rest = times[0], sorted(times[1:])
    return 1e3 * rest[len(rest) // 2], round(first, 2)


def extraction_rows(device: torch.device, sizes: dict, dry: bool, workdir: Path) -> tuple[list[dict], dict]:
    """tiles/s per (encoder, decoder); also the features of each run, for the decode check."""
    slide = write_synthetic_slide(workdir / "pyramid.tiff", sizes["slide_px"], sizes["slide_px"], mpp=0.25)
    raw = "cpu-raw" if device.type == "cpu" else "gpu"
    rows, features = [], {}
    for encoder in sizes["encoders"]:
        config = ExtractionConfig(encoder=encoder, pretrained=False, tile_size=224, target_mpp=0.5)
        for decode in ("openslide", raw):
            out = workdir / f"{encoder}-{decode}"
            setting = (
                f"{encoder}, {'OpenSlide + CPU decode' if decode == 'openslide' else decode + ' decode'}"
            )
            target = ">= 15000" if encoder == "resnet18-layer3" else ""
            try:
                summary = extract_slides(
                    [slide], out, config, passes=("exhaustive",), device=str(device), decode=decode,
                    batch_size=256, num_readers=4, progress=False,
                )  # fmt: skip
                if summary.failed:
                    raise RuntimeError(summary.failed[0][1])
                rows.append(
                    _row("extraction", setting, round(summary.tiles_per_second), "tiles/s", target=target,
                         tiles=summary.n_tiles)
                )  # fmt: skip
                import datasets

                row = datasets.load_from_disk(str(out / "exhaustive")).with_format("numpy", dtype=None)[0]
                features[(encoder, decode)] = row["features"].astype(np.float32)
            except Exception as error:
                rows.append(_row("extraction", setting, None, "tiles/s", target=target, error=_short(error)))
    return rows, features


def embed_rows(device: torch.device, sizes: dict) -> list[dict]:
    torch.manual_seed(0)
    model = GigaSSLModel(GigaSSLConfig(**sizes["model"])).to(device).eval()
    dataset = make_exhaustive(sizes["embed_slides"], sizes["embed_tiles"])
    embed_tile_dataset(model, dataset.select(range(1)), n_views=100, progress=False)  # warm-up
    _sync(device)
    start = time.perf_counter()
    embed_tile_dataset(model, dataset, n_views=100, progress=False)
    _sync(device)
    seconds = time.perf_counter() - start
    setting = f"{sizes['embed_tiles']:,} tiles/slide, 100 views x 5 tiles"
    return [_row("embed", setting, round(sizes["embed_slides"] / seconds, 2), "slides/s")]


def checks(device: torch.device, sizes: dict, extraction_features: dict) -> list[dict]:
    results = []

    def check(name: str, function) -> None:
        try:
            passed, detail = function()
        except Exception as error:
            passed, detail = False, _short(error)
        results.append({"check": name, "passed": bool(passed), "detail": detail})

    config = GigaSSLConfig(**sizes["model"])
    check("sparse model on device vs CPU (loss, gradients)", lambda: _device_vs_cpu(device, config))
    check("eval is bitwise deterministic", lambda: _deterministic_eval(device, config))
    check("raw-tile decode vs OpenSlide (CMU-1-Small-Region.svs)", lambda: _decode_vs_openslide(device))
    for (encoder, decode), values in extraction_features.items():
        if decode != "openslide" and (encoder, "openslide") in extraction_features:
            reference = extraction_features[(encoder, "openslide")]

            def compare(values=values, reference=reference):
                difference = np.abs(values - reference)
                scale = float(np.abs(reference).max()) or 1.0
                return difference.max() <= 0.05 * scale, (
                    f"max abs diff {difference.max():.4g} (features up to {scale:.3g}), mean {difference.mean():.3g}"
                )

            check(f"extraction features, {decode} vs OpenSlide decode ({encoder})", compare)
    return results


def _small_views(device, seed=0):
    features, coords = make_batch(16, 12, torch.Generator().manual_seed(seed), grid=12, tissue=0.6)
    return features.to(device), coords.to(device)


def _device_vs_cpu(device: torch.device, config: GigaSSLConfig):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = GigaSSLForContrastivePretraining(config).train()
    results = {}
    for where, target in (("cpu", torch.device("cpu")), ("device", device)):
        copy = GigaSSLForContrastivePretraining(config).to(target).train()
        copy.load_state_dict(model.state_dict())
        features, coords = _small_views(target)
        output = copy(features, coords)
        output.loss.backward()
        grads = torch.cat([p.grad.flatten() for p in copy.parameters() if p.grad is not None]).cpu()
        results[where] = (output.loss.detach().cpu(), grads)
    loss_diff = float((results["cpu"][0] - results["device"][0]).abs())
    grad_diff = float((results["cpu"][1] - results["device"][1]).abs().max() / results["cpu"][1].abs().max())
    return (
        loss_diff <= 1e-4 and grad_diff <= 1e-3,
        f"loss diff {loss_diff:.3g}, max grad diff {grad_diff:.3g} (rel)",
    )


def _deterministic_eval(device: torch.device, config: GigaSSLConfig):
    torch.manual_seed(0)
    model = GigaSSLModel(config).to(device).eval()
    features, coords = _small_views(device, seed=1)
    features, coords = features.flatten(0, 1), coords.flatten(0, 1)  # (32 views, 12 tiles, 256)
    with torch.no_grad():
        first = model(tile_features=features, tile_coords=coords).slide_embedding
        again = model(tile_features=features, tile_coords=coords).slide_embedding
    return torch.equal(
        first, again
    ), f"{first.shape[0]} embeddings, bitwise equal: {torch.equal(first, again)}"


def _decode_vs_openslide(device: torch.device):
    with open_slide(CMU) as slide:
        grid = tile_grid(slide, tile_size=224, target_mpp=0.5, mask=tissue_mask(slide))
        reader = RawTileReader(slide, grid.level, device)
        try:
            raw = torch.cat(
                [t.cpu() for _, t in iter_tile_blocks(slide, grid, read_block=reader, num_workers=0)]
            )
        finally:
            reader.close()
        reference = torch.cat([t for _, t in iter_tile_blocks(slide, grid)])
    difference = (raw.int() - reference.int()).abs().float()
    max_diff, mean_diff = float(difference.max()), float(difference.mean())
    return max_diff <= 16 and mean_diff <= 1.0, (
        f"{len(grid)} tiles, max abs diff {max_diff:.0f}, mean {mean_diff:.4f} grey levels (tolerance 16 / 1.0)"
    )


def _short(error: Exception) -> str:
    lines = traceback.format_exception_only(type(error), error)
    return lines[-1].strip()[:300]


def format_table(rows: list[dict], results: list[dict]) -> str:
    shown = [{**row, "target / note": row.get("error") or row.get("target", "")} for row in rows]
    columns = [
        ("section", "<10"),
        ("setting", "<55"),
        ("value", ">10,"),
        ("unit", "<8"),
        ("target / note", ""),
    ]
    lines = [text_table(shown, columns), ""]
    for result in results:
        lines.append(f"check {'PASS' if result['passed'] else 'FAIL'}: {result['check']}: {result['detail']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU, tiny sizes: runs every code path in seconds"
    )
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --dry-run)")
    parser.add_argument(
        "--out", type=Path, default=HERE / "gpu_suite.json", help="JSON results (default: %(default)s)"
    )
    parser.add_argument(
        "--sections", nargs="+", default=["ssl", "extract", "embed", "checks"],
        choices=["ssl", "extract", "embed", "checks"], help="what to run (default: all)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.dry_run else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --dry-run (CPU, tiny sizes) or on a GPU machine")
    sizes = DRY if args.dry_run else FULL
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    began = time.perf_counter()
    rows: list[dict] = []
    extraction_features: dict = {}
    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as workdir:
        if "ssl" in args.sections:
            rows += ssl_step_rows(device, sizes, args.dry_run)
        if "extract" in args.sections:
            extraction, extraction_features = extraction_rows(device, sizes, args.dry_run, Path(workdir))
            rows += extraction
        if "embed" in args.sections:
            rows += embed_rows(device, sizes)
        results = checks(device, sizes, extraction_features) if "checks" in args.sections else []
    seconds = time.perf_counter() - began
    table = format_table(rows, results)
    print(f"giga-ssl-hf GPU suite on {name} (torch {torch.__version__}), {seconds:.0f} s\n{table}")
    report = {
        "device": name,
        "dry_run": args.dry_run,
        "torch": torch.__version__,
        "seconds": round(seconds, 1),
        "rows": rows,
        "checks": results,
    }
    args.out.write_text(json.dumps(report, indent=1, allow_nan=False))
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
