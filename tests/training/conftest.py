import pytest

from giga_ssl_hf.features.synthetic_features import synthetic_tile_dataset


@pytest.fixture(scope="session")
def synthetic_features(tmp_path_factory):
    """An augmented tile-feature Dataset on disk with planted classes, and its labels."""
    dataset, labels = synthetic_tile_dataset(n_slides=64, feature_dim=16, n_aug=4, tiles_per_slide=30, seed=0)
    path = tmp_path_factory.mktemp("features") / "augmented"
    dataset.save_to_disk(str(path))
    return path, labels
