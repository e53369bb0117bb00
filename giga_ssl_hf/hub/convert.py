"""``giga-ssl convert``: an original Giga-SSL checkpoint -> a Hugging Face model folder, ready for push-model.

The converter lives beside the model (:mod:`giga_ssl_hf.models.gigassl.convert_gigassl_original_to_hf`); this
module is its command line, apart from it because importing anything under the model package imports
transformers and torch, which ``giga-ssl convert --help`` must not wait for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from giga_ssl_hf.contracts import TRAINING_SUMMARY_FILENAME
from giga_ssl_hf.settings import SettingsParser, option, run_main

DESCRIPTION = f"""Convert an original Giga-SSL checkpoint (trislaz/gigassl SimCLRMIL .pth, or a SparseConvMIL 'scm' or
ResidualMLP 'mlp' checkpoint of its successor trislaz/Democratizing_WSI) into a Hugging Face model folder
(config.json, model.safetensors, {TRAINING_SUMMARY_FILENAME}). The converted model reproduces the original: fixed
224-px grid cells and a batch-wide sparse map size (see GigaSSLConfig). The checkpoint is read with
torch.load(weights_only=True): no pickled code runs."""
EPILOG = "Then publish it: giga-ssl push-model OUT --repo-id ORG/NAME [--dry-run DIR]"


@dataclass
class ConvertSettings:
    """What to convert and where to write it."""

    checkpoint: Path = option(help="original checkpoint (.pth / .pth.tar)", positional=True)
    out: Path | None = option(None, "output folder (created)", metavar="OUT", required=True)


def build_parser() -> SettingsParser:
    return SettingsParser(ConvertSettings, prog="giga-ssl convert", description=DESCRIPTION, epilog=EPILOG)


def convert(settings: ConvertSettings) -> int:
    from giga_ssl_hf.models.gigassl.convert_gigassl_original_to_hf import write_converted

    print(f"wrote {write_converted(settings.checkpoint, settings.out)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), convert, argv)
