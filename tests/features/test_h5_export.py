"""export-h5 -> import-h5 round trips on features extracted from a real slide, in both layouts."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from giga_ssl_hf.contracts import read_metadata
from giga_ssl_hf.contracts.tile_features import load_tile_dataset
from giga_ssl_hf.features import extract
from giga_ssl_hf.features.h5_export import main as export_main
from giga_ssl_hf.features.h5_import import main as import_main


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, shared_dir):
    out = tmp_path_factory.mktemp("extracted")
    slides = [str(shared_dir / "fixtures" / "wsi" / name) for name in ("CMU-1-Small-Region.svs", "small.svs")]
    args = ["--out", str(out), "--no-aug", "--no-pretrained", "--no-progress", "--target-mpp", "1.0"]
    assert extract.main([*slides, *args]) == 0
    return out


def _columns(path):
    return load_tile_dataset(path).with_format("numpy", dtype=None)[:]


@pytest.mark.parametrize("layout", ["trident", "clam"])
def test_export_then_import_gives_the_same_dataset(extracted, tmp_path, layout, capsys):
    assert export_main([str(extracted), "--out", str(tmp_path / "h5"), "--layout", layout]) == 0
    files = sorted(p.name for p in (tmp_path / "h5").iterdir())
    original = _columns(extracted / "exhaustive")
    assert files == [f"{slide}.h5" for slide in original["slide_id"]] == ["CMU-1-Small-Region.h5"]
    assert len(original["coords"][0]) > 10

    with h5py.File(tmp_path / "h5" / "CMU-1-Small-Region.h5") as handle:  # what TRIDENT / CLAM readers see
        assert handle["features"].dtype == np.float32 and handle["coords"].dtype == np.int64
        assert handle["features"].shape[1] == 256 and handle["coords"].shape[1] == 2
        attrs = dict(handle["coords"].attrs)
        if layout == "trident":
            assert (
                attrs["patch_size"] == 224 and attrs["patch_size_level0"] == 449
            )  # 224 px at 1 µm/px, 0.499
            assert attrs["level0_magnification"] == 20 and attrs["overlap"] == 0
            assert attrs["target_magnification"] == pytest.approx(20 * 224 / 449)
            assert handle["features"].attrs["encoder"] == "resnet18-layer3"
        else:
            assert (attrs["patch_level"], attrs["patch_size"]) == (0, 449)
            assert list(attrs["downsample"]) == [1.0, 1.0]

    assert import_main([str(tmp_path / "h5"), "--out", str(tmp_path / "back")]) == 0
    back = _columns(tmp_path / "back")
    assert sorted(back) == sorted(original)
    for name, values in original.items():
        np.testing.assert_array_equal(back[name], values, err_msg=name)  # NaN == NaN here
        assert back[name].dtype == values.dtype, name
    assert (
        read_metadata(tmp_path / "back")["tile_encoder"]
        == read_metadata(extracted / "exhaustive")["tile_encoder"]
    )

    # Overwriting needs the flag.
    capsys.readouterr()
    assert export_main([str(extracted), "--out", str(tmp_path / "h5"), "--layout", layout]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_export_refuses_augmented_rows(tmp_path, capsys):
    from giga_ssl_hf.features.synthetic_features import synthetic_tile_dataset

    dataset, _ = synthetic_tile_dataset(n_slides=2, feature_dim=4, n_aug=2, tiles_per_slide=3, seed=0)
    dataset.save_to_disk(str(tmp_path / "augmented"))
    assert export_main([str(tmp_path / "augmented"), "--out", str(tmp_path / "h5")]) == 2
    assert "augmented rows" in capsys.readouterr().err and not (tmp_path / "h5").exists()


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    from giga_ssl_hf.features import h5_export

    args = dict(layout="trident", slide_id="s", patch_size_level0=64, mpp=0.5, magnification=20.0)
    args.update(tile_size=64, tile_encoder=None)
    path = tmp_path / "s.h5"
    h5_export.write_slide_h5(path, features=np.ones((3, 4)), coords=np.zeros((3, 2)), **args)
    before = path.read_bytes()

    def fail_on_coords(handle, name, values, attrs):
        if name == "coords":
            raise OSError("disk full")
        write(handle, name, values, attrs)

    write = h5_export._write_dataset
    monkeypatch.setattr(h5_export, "_write_dataset", fail_on_coords)
    with pytest.raises(OSError, match="disk full"):
        h5_export.write_slide_h5(path, features=np.zeros((5, 4)), coords=np.zeros((5, 2)), **args)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["s.h5"]


def test_import_of_foreign_files_records_the_named_encoder(tmp_path):
    with h5py.File(tmp_path / "s.h5", "w") as handle:
        handle.create_dataset("features", data=np.zeros((2, 3), np.float32))
        handle.create_dataset("coords", data=np.array([[0, 0], [256, 0]])).attrs["patch_size_level0"] = 256
    assert import_main([str(tmp_path / "s.h5"), "--out", str(tmp_path / "ds"), "--encoder", "uni"]) == 0
    assert read_metadata(tmp_path / "ds")["tile_encoder"] == {"name": "uni", "feature_dim": 3}
    assert json.loads((tmp_path / "ds" / "giga_ssl_metadata.json").read_text())["encoder"] == "uni"
