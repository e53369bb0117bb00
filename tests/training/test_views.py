import datasets
import numpy as np
import pytest
import torch

from giga_ssl_hf.features.synthetic_features import synthetic_tile_dataset
from giga_ssl_hf.training.views import CoordinateAugmentation, EpochBatchSampler, SlideViews


@pytest.fixture(scope="module")
def augmented():
    dataset, _ = synthetic_tile_dataset(n_slides=12, feature_dim=8, n_aug=3, tiles_per_slide=10, seed=1)
    return dataset


def test_views_shapes_and_tile_origin(augmented):
    views = SlideViews(augmented, n_tiles=5, seed=0, coordinate_augmentation=None)
    batch = views.sample(np.array([3, 0, 7]))
    assert batch["tile_features"].shape == (3, 2, 5, 8)
    assert batch["tile_coords"].shape == (3, 2, 5, 2)
    assert batch["patch_size_level0"].tolist() == [448.0] * 3
    # Every sampled tile is a tile of one augmentation row of that slide, with its own coordinates.
    slide = views.slide_ids[3]
    rows = [i for i, s in enumerate(augmented["slide_id"]) if s == slide]
    for view in range(2):
        features = batch["tile_features"][0, view].numpy().astype(np.float16)
        matches = [
            r for r in rows if all((np.asarray(augmented[r]["features"]) == f).all(1).any() for f in features)
        ]
        assert len(matches) == 1  # one shared augmentation per view
        coords = np.asarray(augmented[matches[0]]["coords"])
        assert all((coords == c).all(1).any() for c in batch["tile_coords"][0, view].numpy())


def test_views_are_deterministic_and_independent_of_batch_order(augmented):
    views = SlideViews(augmented, n_tiles=5, seed=4)
    first = views.sample(np.array([1, 2, 3]), epoch=2)
    again = SlideViews(augmented, n_tiles=5, seed=4).sample(np.array([1, 2, 3]), epoch=2)
    for key in first:
        assert torch.equal(first[key], again[key])
    other_epoch = views.sample(np.array([1, 2, 3]), epoch=3)
    assert not torch.equal(first["tile_features"], other_epoch["tile_features"])
    assert not torch.equal(first["tile_features"][:, 0], first["tile_features"][:, 1])  # two different views


def test_coordinate_augmentation_keeps_view_geometry_up_to_similarity():
    rng = np.random.default_rng(0)
    grid = rng.integers(0, 20, size=(4, 6, 2)).astype(np.float64)
    out = CoordinateAugmentation(scale_range=(1.0, 1.0))(grid, rng)
    # Rotation and flips preserve pairwise distances when the scale is fixed at 1.
    for view in range(4):
        before = np.linalg.norm(grid[view, :, None] - grid[view, None], axis=-1)
        after = np.linalg.norm(out[view, :, None] - out[view, None], axis=-1)
        np.testing.assert_allclose(after, before, atol=1e-9)
    scaled = CoordinateAugmentation(rotation=False, flips=False)(grid, rng)
    spread = np.ptp(scaled, axis=1) / np.maximum(np.ptp(grid, axis=1), 1e-9)
    assert ((spread > 0.69) & (spread < 1.31)).all()


def test_exhaustive_dataset_is_served_too():
    dataset, _ = synthetic_tile_dataset(n_slides=5, feature_dim=8, tiles_per_slide=7, augmented=False)
    views = SlideViews(dataset, n_tiles=4)
    assert not views.has_augmentations
    assert views.sample(np.arange(5))["tile_features"].shape == (5, 2, 4, 8)


def test_batch_sampler_is_a_seeded_permutation_per_epoch():
    sampler = EpochBatchSampler(10, 3, seed=1)
    epoch0 = [key for batch in sampler for key in batch]
    assert len(list(sampler)) == 3 and all(epoch == 0 for epoch, _ in epoch0)
    assert len({index for _, index in epoch0}) == 9
    sampler.set_epoch(1)
    epoch1 = [index for batch in sampler for _, index in batch]
    assert epoch1 != [index for _, index in epoch0]
    sampler.set_epoch(0)
    assert [key for batch in sampler for key in batch] == epoch0


def test_dataloader_workers_give_the_same_batches(augmented, tmp_path):
    augmented.save_to_disk(str(tmp_path / "ds"))
    views = SlideViews(datasets.load_from_disk(str(tmp_path / "ds")), n_tiles=5)
    sampler = EpochBatchSampler(len(views), 4, seed=0)

    def batches(workers):
        loader = torch.utils.data.DataLoader(
            views, batch_sampler=sampler, collate_fn=lambda b: b, num_workers=workers
        )
        return [b["tile_features"] for b in loader]

    for a, b in zip(batches(0), batches(2)):
        assert torch.equal(a, b)


def test_window_views_hold_neighbouring_tiles_of_one_augmentation():
    # Augmentation rows holding every tile of a 40-tile slide (extract --tile-sampling all).
    dataset, _ = synthetic_tile_dataset(n_slides=6, feature_dim=8, n_aug=3, tiles_per_slide=40, seed=2)
    window = SlideViews(dataset, n_tiles=6, seed=0, coordinate_augmentation=None, tile_sampling="window")
    scattered = SlideViews(dataset, n_tiles=6, seed=0, coordinate_augmentation=None)
    spread = {}
    for name, views in (("window", window), ("random", scattered)):
        batch = views.sample(np.arange(6))
        grid = batch["tile_coords"].numpy() / 448  # (B, V, n, 2)
        spread[name] = np.linalg.norm(grid - grid.mean(axis=2, keepdims=True), axis=-1).mean()
        assert batch["tile_features"].shape == (6, 2, 6, 8)
    assert spread["window"] < 0.6 * spread["random"]
    # Each window is the 6 tiles nearest its first tile within its augmentation row.
    batch = window.sample(np.array([2]))
    coords = batch["tile_coords"][0, 0].numpy() / 448
    row = [i for i, s in enumerate(dataset["slide_id"]) if s == window.slide_ids[2]][0]
    all_coords = np.asarray(dataset[row]["coords"]) / 448
    distances = np.sort(np.linalg.norm(all_coords - coords[0], axis=1))
    assert np.linalg.norm(coords - coords[0], axis=1).max() <= distances[5] + 1e-6


def test_window_pair_views_of_a_slide_are_windows_around_one_place():
    dataset, _ = synthetic_tile_dataset(n_slides=6, feature_dim=8, n_aug=3, tiles_per_slide=40, seed=2)
    paired = SlideViews(dataset, n_tiles=6, seed=0, coordinate_augmentation=None, tile_sampling="window-pair")
    window = SlideViews(dataset, n_tiles=6, seed=0, coordinate_augmentation=None, tile_sampling="window")

    def centre_gap(views):  # grid distance between the centres of a slide's two views, per slide
        grid = views.sample(np.arange(6))["tile_coords"].numpy() / 448  # (B, V, n, 2)
        return np.linalg.norm(grid[:, 0, 0] - grid[:, 1, 0], axis=-1)

    # every row holds every tile, so both windows start at the very same cell (nearest tile first)
    assert np.array_equal(centre_gap(paired), np.zeros(6))
    assert centre_gap(window).mean() > 1.0  # independent windows sit at different places
    batch = paired.sample(np.arange(6))
    assert batch["tile_features"].shape == (6, 2, 6, 8)
    assert not torch.equal(batch["tile_features"][:, 0], batch["tile_features"][:, 1])  # two augmentations


def test_places_per_slide_make_each_place_an_instance_and_offsets_move_the_second_view():
    dataset, _ = synthetic_tile_dataset(n_slides=6, feature_dim=8, n_aug=3, tiles_per_slide=64, seed=2)
    views = SlideViews(
        dataset, n_tiles=6, seed=0, coordinate_augmentation=None, tile_sampling="window-pair",
        places_per_slide=3, view_offset=2,
    )  # fmt: skip
    batch = views.sample(np.array([4, 1]))
    assert batch["slide_index"].tolist() == [4, 4, 4, 1, 1, 1]
    assert batch["tile_features"].shape == (6, 2, 6, 8)
    first = batch["tile_coords"][:, :, 0].numpy() / 448  # (instances, views, 2): each view's centre tile
    gaps = np.abs(first[:, 0] - first[:, 1]).max(axis=1)
    assert gaps.max() <= 2 and gaps.max() > 0  # moved, by at most view_offset cells per axis
    assert len({tuple(centre) for centre in first[:3, 0].tolist()}) > 1  # one slide, several places
    with pytest.raises(ValueError, match="window-pair"):
        SlideViews(dataset, n_tiles=6, tile_sampling="window", places_per_slide=2)


def test_disjoint_views_deal_out_one_window():
    dataset, _ = synthetic_tile_dataset(n_slides=4, feature_dim=8, n_aug=1, tiles_per_slide=64, seed=2)
    views = SlideViews(
        dataset,
        n_tiles=6,
        seed=0,
        coordinate_augmentation=None,
        tile_sampling="window-pair",
        disjoint_views=True,
    )
    grid = views.sample(np.arange(4))["tile_coords"].numpy() / 448  # (B, 2, 6, 2)
    for slide in grid:
        first, second = ({tuple(cell) for cell in view.tolist()} for view in slide)
        assert (
            len(first) == len(second) == 6 and not first & second
        )  # no tile in common (one augmentation row)
        together = np.concatenate(slide)  # together one window: 12 cells around one place
        assert len({tuple(cell) for cell in together.tolist()}) == 12
        assert np.abs(together - together.mean(axis=0)).max() <= 4


def test_unknown_tile_sampling_is_refused(augmented):
    with pytest.raises(ValueError, match="tile_sampling"):
        SlideViews(augmented, n_tiles=5, tile_sampling="grid")
