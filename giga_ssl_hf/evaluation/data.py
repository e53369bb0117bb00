"""Reading the other inputs of the linear probe: label tables and fixed train/test splits (the slide
embeddings are read through :mod:`giga_ssl_hf.contracts.slide_embeddings`)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

logger = logging.getLogger(__name__)

_SPLIT_FILE = re.compile(r"split_(\d+)\.csv$")


def load_labels(path: str | Path) -> pd.Series:
    """Slide label table: a Series of string labels indexed by slide ``ID`` (other columns are ignored).

    Labels are kept as strings so that ``0``/``1`` tables and named classes are handled alike; rows
    without a label are dropped with a warning.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, skipinitialspace=True)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a readable CSV label table ({error})") from error
    table.columns = table.columns.str.strip()
    missing = {"ID", "label"} - set(table.columns)
    if missing:
        raise ValueError(
            f"{path}: a labels CSV needs columns 'ID' and 'label'; missing {sorted(missing)}, "
            f"found {list(table.columns)}"
        )
    table = table[["ID", "label"]].apply(lambda column: column.str.strip())
    unlabelled = table["label"].isna() | (table["label"] == "") | table["ID"].isna()
    if unlabelled.any():
        logger.warning("%s: %d rows without an ID or label ignored", path, int(unlabelled.sum()))
        table = table[~unlabelled]
    table = table.drop_duplicates()
    conflicting = table["ID"][table["ID"].duplicated()].unique()
    if len(conflicting):
        raise ValueError(f"{path}: {len(conflicting)} IDs have several labels, e.g. {conflicting[0]!r}")
    return require_two_classes(table.set_index("ID")["label"], str(path))


def require_two_classes(labels: pd.Series, where: str) -> pd.Series:
    """``labels`` itself, or a ValueError if it holds fewer than two classes (nothing to separate)."""
    if labels.nunique() < 2:
        raise ValueError(
            f"{where}: a linear probe needs at least two classes; found {labels.nunique()} "
            f"({sorted(labels.unique())}) over {len(labels)} slides"
        )
    return labels


def read_split(path: str | Path) -> tuple[list[str], list[str]]:
    """Train and test slide IDs of a ``split_k.csv`` (columns of unequal length padded with empty cells)."""
    path = Path(path)
    table = pd.read_csv(path, dtype=str)
    table.columns = table.columns.str.strip()
    if not {"train", "test"} <= set(table.columns):
        raise ValueError(f"{path}: a split CSV needs columns 'train' and 'test', found {list(table.columns)}")
    return tuple(
        table[column].dropna().str.strip().loc[lambda s: s != ""].tolist() for column in ("train", "test")
    )


def find_split_sets(path: str | Path) -> dict[str, list[Path]]:
    """Split files grouped by split folder: ``{folder name: [split_0.csv, split_1.csv, ...]}``.

    ``path`` is either one folder of ``split_k.csv`` files or a folder of such folders (the paper's
    ``splitdirs/<task>/`` with ``full``, ``25p``, ``50``, ``100``).
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: --splits must be a folder of split_k.csv files or of such folders")
    own = _split_files(path)
    if own:
        return {path.name: own}
    nested = {
        child.name: files
        for child in sorted(path.iterdir())
        if child.is_dir() and (files := _split_files(child))
    }
    if not nested:
        raise ValueError(f"{path}: no split_k.csv files in this folder nor in its sub-folders")
    return nested


def _split_files(folder: Path) -> list[Path]:
    """``split_k.csv`` files in numeric order of k (so split_10 comes after split_9)."""
    matches = [(int(m.group(1)), p) for p in folder.glob("split_*.csv") if (m := _SPLIT_FILE.search(p.name))]
    return [p for _, p in sorted(matches)]
