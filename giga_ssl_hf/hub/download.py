"""Downloading slide embeddings from the Hub (or reading a local folder) into a Dataset or the npy pair.

Downloads go through ``huggingface_hub.snapshot_download``: cached in the HF cache (``HF_HOME``), served from
it with ``HF_HUB_OFFLINE=1``, and from any Hub-API server named by ``HF_ENDPOINT``.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from giga_ssl_hf.contracts import METADATA_FILENAME, NPY_EMBEDDINGS, NPY_IDS
from giga_ssl_hf.files import staged_directory
from giga_ssl_hf.settings import SettingsParser, flag_of, option, run_main

logger = logging.getLogger(__name__)


def refuse_existing_out(out: Path, overwrite: bool) -> None:
    """``out`` must be new or empty, unless ``overwrite`` (then the download replaces it whole)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty: pass {flag_of('overwrite')} to replace it")


def download_embeddings(
    source: str | Path, out: str | Path | None = None, npy: bool = False, overwrite: bool = False
) -> Path:
    """Fetch (and validate) slide embeddings; with ``out``, write them there as a saved Dataset or npy pair.

    ``out`` appears complete or not at all (written beside it, then renamed); a non-empty ``out`` is refused
    unless ``overwrite``. Returns ``out``, or without it the folder the embeddings were read from (the
    HF-cache snapshot of a Hub repo).
    """
    if out is not None:
        refuse_existing_out(Path(out), overwrite)  # before any download, and before datasets is imported
    from giga_ssl_hf.contracts.slide_embeddings import load_embeddings, resolve_embeddings_folder

    folder = resolve_embeddings_folder(source)
    if out is None:
        load_embeddings(folder)  # validates the contents
        return folder
    out = Path(out)
    with staged_directory(out) as staging:
        if npy:
            ids, embeddings = load_embeddings(folder)
            np.save(staging / NPY_EMBEDDINGS, embeddings)
            np.save(staging / NPY_IDS, ids.astype(str))  # a plain string array: loads without pickle
        else:
            load_embeddings(folder, as_dataset=True).save_to_disk(str(staging))
        if (folder / METADATA_FILENAME).exists():
            shutil.copy2(folder / METADATA_FILENAME, staging / METADATA_FILENAME)
    logger.info("wrote the slide embeddings of %s to %s", source, out)
    return out


DESCRIPTION = """Download slide embeddings from a Hub dataset repo (or read a local folder) and check them. Files are cached
by huggingface_hub (HF_HOME); with HF_HUB_OFFLINE=1 they are read from the cache; HF_ENDPOINT selects another
Hub-API server (a mirror)."""

EPILOG = f"""examples:
  giga-ssl download me/tcga-gigassl                  # cache only, prints the folder
  giga-ssl download me/tcga-gigassl --out tcga --npy  # {NPY_EMBEDDINGS} + {NPY_IDS}
In Python: ids, embeddings = giga_ssl_hf.load_embeddings('me/tcga-gigassl')"""


@dataclass
class DownloadSettings:
    """Which slide embeddings to fetch and how to write them."""

    source: str = option(
        help="Hub dataset repo id (owner/name), or a local embeddings folder (saved Dataset or npy pair)",
        metavar="REPO_OR_PATH",
        positional=True,
    )
    out: Path | None = option(
        None,
        "write the embeddings there (a saved Dataset with columns slide_id, embedding, plus "
        f"{METADATA_FILENAME}); default: only download into the cache",
        metavar="DIR",
    )
    npy: bool = option(
        False, f"with --out, write {NPY_EMBEDDINGS} (N, E) and {NPY_IDS} (N,), the original Giga-SSL format"
    )

    overwrite: bool = option(False, "replace --out DIR when it is not empty (it is replaced whole)")

    def __post_init__(self):
        if self.overwrite and self.out is None:
            raise ValueError(f"{flag_of('overwrite')} needs {flag_of('out')} DIR")
        if self.npy and self.out is None:
            raise ValueError(f"{flag_of('npy')} needs {flag_of('out')} DIR")


def build_parser() -> SettingsParser:
    return SettingsParser(DownloadSettings, prog="giga-ssl download", description=DESCRIPTION, epilog=EPILOG)


def download(settings: DownloadSettings) -> int:
    print(download_embeddings(settings.source, settings.out, settings.npy, settings.overwrite))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), download, argv)
