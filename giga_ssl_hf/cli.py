"""`giga-ssl` command line: one subcommand per pipeline stage.

Each stage lives in its own module and exposes ``main(argv) -> int``, whose parser is generated from the
stage's settings dataclasses (:mod:`giga_ssl_hf.settings`), so that ``giga-ssl STAGE --help`` documents the
stage and tests can call the stage in-process.
"""

from __future__ import annotations

import importlib
import logging
import sys

from giga_ssl_hf.runtime import prefer_passive_openmp_wait

# subcommand -> (module, one-line summary); modules are imported lazily so `giga-ssl --help` stays fast.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "extract": (
        "giga_ssl_hf.features.extract",
        "tile whole-slide images and encode tiles into feature Datasets",
    ),
    "encoders": (
        "giga_ssl_hf.features.encoder_presets",
        "list the tile-encoder presets (UNI, Virchow, H-optimus, ...) that extract --encoder accepts",
    ),
    "import-h5": (
        "giga_ssl_hf.features.h5_import",
        "convert TRIDENT / CLAM patch-feature h5 files to a feature Dataset",
    ),
    "export-h5": (
        "giga_ssl_hf.features.h5_export",
        "write a tile-feature Dataset as TRIDENT / CLAM patch-feature h5 files",
    ),
    "train": ("giga_ssl_hf.training.train", "slide-level SimCLR pretraining (Accelerate)"),
    "embed": ("giga_ssl_hf.inference.embed", "embed slides with a trained model (ensemble of views)"),
    "evaluate": (
        "giga_ssl_hf.evaluation.evaluate_command",
        "linear-probe AUC on slide embeddings (paper protocol)",
    ),
    "heatmap": (
        "giga_ssl_hf.inference.heatmap",
        "per-tile scores of a saved probe: heatmap PNGs and a parquet table",
    ),
    "search": (
        "giga_ssl_hf.evaluation.retrieval",
        "the most similar slides (cosine) to given slides, from slide embeddings",
    ),
    "push-model": ("giga_ssl_hf.hub.push", "write a model card and push a trained model to the Hub"),
    "push-embeddings": ("giga_ssl_hf.hub.push", "write a dataset card and push slide embeddings to the Hub"),
    "download": (
        "giga_ssl_hf.hub.download",
        "download slide embeddings from the Hub (or read a local folder)",
    ),
    "convert": (
        "giga_ssl_hf.hub.convert",
        "convert an original trislaz/gigassl checkpoint to a Hugging Face folder",
    ),
    "pipeline": ("giga_ssl_hf.pipeline", "extract -> train -> embed -> evaluate in one resumable command"),
    "demo": ("giga_ssl_hf.demo", "run the whole pipeline on bundled sample data"),
}

USAGE = """usage: giga-ssl COMMAND [options]

Giga-SSL: self-supervised slide embeddings for whole-slide images.

commands:
{commands}

Run `giga-ssl COMMAND --help` for the options of a command.
"""


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = [f"  {name.ljust(width)}  {summary}" for name, (_, summary) in SUBCOMMANDS.items()]
    return USAGE.format(commands="\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(f"giga-ssl: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per checkpoint file is noise here
    prefer_passive_openmp_wait()  # before the command's module imports torch
    module = importlib.import_module(SUBCOMMANDS[command][0])
    entry = getattr(module, "main_" + command.replace("-", "_"), None) or module.main
    return int(entry(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
