"""A family of arrangement-only cohorts: the same tissue types in the same numbers in both classes, only where
they lie differs. Members vary the layout (A and B intermixed in one region, or two regions touching), the
regions' size and how close the two tissue types are; class 0 always puts A and B at least ``MIN_GAP`` cells
apart. ``touching`` is the independently built cohort of issue 21 (two regions touching in one class, at least 5
cells apart in the other), on which window-view Giga-SSL was at chance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from bench_representation import TYPE_A, TYPE_B
from scipy.spatial import cKDTree

from giga_ssl_hf.features.windows import window_indices

MIN_GAP = 5  # grid cells between the A and B regions of class 0 (Chebyshev: whole cells between them)


@dataclass(frozen=True)
class ArrangementMember:
    name: str
    layout: str  # "intermixed" (one region, A and B tiles mixed) or "touching" (two regions sharing a border)
    region: tuple[float, float] = (0.08, 0.15)  # each type's share of the tissue, drawn per slide
    type_closeness: float = 0.0  # 0: the usual prototypes; towards 1 the B prototype moves onto A's

    def plant(self, label: int, cells, types, rng: np.random.Generator) -> None:
        plant_arrangement(self, label, cells, types, rng)

    def prototypes(self, prototypes: np.ndarray) -> np.ndarray:
        """The tissue prototypes of the member: B moved ``type_closeness`` of the way onto A."""
        prototypes = prototypes.copy()
        prototypes[TYPE_B] += self.type_closeness * (prototypes[TYPE_A] - prototypes[TYPE_B])
        return prototypes


MEMBERS = {
    member.name: member
    for member in (
        ArrangementMember("intermixed", "intermixed"),
        ArrangementMember("touching", "touching", region=(0.05, 0.10)),
        ArrangementMember("touching-small", "touching", region=(0.02, 0.04)),
        ArrangementMember("touching-close", "touching", region=(0.05, 0.10), type_closeness=0.6),
    )
}


def cell_gap(cells: np.ndarray, first: np.ndarray, second: np.ndarray) -> int:
    """Least Chebyshev distance between a cell of ``first`` and one of ``second`` (1: they touch)."""
    distance, _ = cKDTree(cells[second]).query(cells[first], p=np.inf)
    return int(distance.min())


def plant_arrangement(member: ArrangementMember, label: int, cells, types, rng: np.random.Generator) -> None:
    """Plant A and B tiles (in place; the same number of each in both classes): class 1 per ``member.layout``,
    class 0 two regions at least ``MIN_GAP`` cells apart. A starts at the tissue's edge in both classes (the tile
    farthest from a random one), so that class 0 has room for the gap and A's place tells nothing."""
    n = len(cells)
    half = max(2, int(round(rng.uniform(*member.region) * n)))
    for _ in range(10):
        first = int(np.abs(cells - cells[rng.integers(0, n)]).max(axis=1).argmax())
        if label and member.layout == "intermixed":
            region = window_indices(cells, np.array([first]), 2 * half, rng)[0]
            types[region] = np.where(rng.permutation(2 * half) < half, TYPE_A, TYPE_B)
            return
        region_a = window_indices(cells, np.array([first]), half, rng)[0]
        others = np.setdiff1d(np.arange(n), region_a)
        if label:  # B grows from a tile just outside A: the two regions share a border
            outside = np.abs(cells[others][:, None] - cells[region_a][None]).max(axis=2).min(axis=1) == 1
            seed = others[rng.choice(np.flatnonzero(outside))]
        else:  # B as far from A as the tissue allows
            seed = others[int(np.abs(cells[others] - cells[first]).max(axis=1).argmax())]
        region_b = others[window_indices(cells[others], np.searchsorted(others, [seed]), half, rng)[0]]
        if label or cell_gap(cells, region_a, region_b) >= MIN_GAP:
            types[region_a], types[region_b] = TYPE_A, TYPE_B
            return
    raise ValueError(
        f"a slide of {n} tiles is too small for two regions of {half} tiles {MIN_GAP} cells apart"
    )


def adjacency_histograms(exhaustive, n_clusters: int = 8, seed: int = 0) -> np.ndarray:
    """An unsupervised check that an arrangement signal is there to find: k-means of the tile features, then per
    slide the share of 8-neighbour tile pairs of each (cluster, cluster) pair, ``(n_slides, k (k + 1) / 2)``."""
    from sklearn.cluster import MiniBatchKMeans

    from giga_ssl_hf.contracts.tile_features import TileArrays
    from giga_ssl_hf.evaluation.mil import grid_edges

    arrays = TileArrays.from_dataset(exhaustive)
    patch = np.asarray(exhaustive.data.column("patch_size_level0").to_numpy(), dtype=np.float64)
    rows = [arrays.row(row) for row in range(len(arrays))]
    sample = np.concatenate([features[::10] for features, _ in rows]).astype(np.float32)
    kmeans = MiniBatchKMeans(n_clusters, random_state=seed, n_init=3).fit(sample)
    upper = np.triu_indices(n_clusters)
    histograms = np.zeros((len(rows), len(upper[0])))
    for row, (features, coords) in enumerate(rows):
        cluster = kmeans.predict(np.asarray(features, dtype=np.float32))
        source, target = grid_edges(coords, patch[row])
        pairs = np.zeros((n_clusters, n_clusters))
        np.add.at(pairs, (cluster[source], cluster[target]), 1.0)
        histograms[row] = (pairs + pairs.T)[upper] / max(1, len(source))
    return histograms
