import json
from pathlib import Path

import datasets
import h5py
import numpy as np
import pytest

from giga_ssl_hf.contracts import METADATA_FILENAME, read_metadata
from giga_ssl_hf.features.h5_import import import_h5, main

CMU = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "wsi" / "CMU-1-Small-Region.svs"


def tiles(n: int, dim: int, step: int, seed: int):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n, dim)).astype(np.float32)
    coords = np.stack([np.arange(n) % 7 * step, np.arange(n) // 7 * step], axis=1).astype(np.int64)
    return features, coords


def write_trident(path: Path, features, coords) -> None:
    # TRIDENT: features_<encoder>/<slide>.h5, attributes on coords
    with h5py.File(path, "w") as handle:
        handle.create_dataset("features", data=features)
        dataset = handle.create_dataset("coords", data=coords)
        dataset.attrs.update(
            {
                "patch_size": 256,
                "patch_size_level0": 512,
                "level0_magnification": 40,
                "target_magnification": 20,
                "overlap": 0,
                "name": path.stem,
            }
        )


def write_clam(path: Path, features, coords, attrs: dict | None) -> None:
    # CLAM: h5_files/<slide>.h5 with (n, D) features and int32 coords; patch attributes only in patches/
    with h5py.File(path, "w") as handle:
        handle.create_dataset("features", data=features)
        dataset = handle.create_dataset("coords", data=coords.astype(np.int32))
        if attrs:
            dataset.attrs.update(attrs)


CLAM_ATTRS = {
    "patch_size": 256,
    "patch_level": 1,
    "downsample": np.array([4.0, 4.0]),
    "downsampled_level_dim": np.array([5000, 4000]),
    "level_dim": np.array([20000, 16000]),
    "name": "x",
}


def test_trident_round_trip(tmp_path):
    written = {}
    for seed, slide_id in enumerate(["s2", "s1"]):
        written[slide_id] = tiles(10 + seed, 16, 512, seed)
        write_trident(tmp_path / f"{slide_id}.h5", *written[slide_id])
    out = import_h5([tmp_path], tmp_path / "ds", encoder="conch_v15", dtype="float32")
    dataset = datasets.load_from_disk(str(out)).with_format("numpy", dtype=None)
    assert list(dataset["slide_id"]) == ["s1", "s2"]
    for row in dataset:
        features, coords = written[row["slide_id"]]
        assert np.array_equal(row["features"], features) and np.array_equal(row["coords"], coords)
        assert row["patch_size_level0"] == 512 and row["aug_id"] == -1
        assert row["magnification"] == 40 and row["mpp"] == pytest.approx(0.25)  # 10 / 40x
        assert np.all(row["coords"] % row["patch_size_level0"] == 0)
    metadata = read_metadata(out)
    assert metadata["encoder"] == "conch_v15" and metadata["feature_dim"] == 16
    assert metadata["h5_layouts"] == ["trident"]


def test_clam_round_trip_with_attributes_and_patches_dir(tmp_path):
    features, coords = tiles(12, 8, 1024, 3)
    write_clam(tmp_path / "with_attrs.h5", features, coords, CLAM_ATTRS)
    (tmp_path / "h5_files").mkdir()
    (tmp_path / "patches").mkdir()
    write_clam(tmp_path / "h5_files" / "slide.h5", features, coords, None)
    with h5py.File(tmp_path / "patches" / "slide.h5", "w") as handle:
        handle.create_dataset("coords", data=coords.astype(np.int32)).attrs.update(CLAM_ATTRS)

    out = tmp_path / "a"
    assert main([str(tmp_path / "with_attrs.h5"), "--out", str(out), "--mpp", "0.25"]) == 0
    (row,) = datasets.load_from_disk(str(out)).with_format("numpy", dtype=None)
    assert row["patch_size_level0"] == 1024  # 256 px at level 1, downsample 4
    assert row["features"].dtype == np.float16 and np.allclose(row["features"], features, atol=1e-2)
    assert np.array_equal(row["coords"], coords) and row["coords"].dtype == np.int64
    assert row["mpp"] == 0.25 and np.isnan(row["magnification"])

    out = import_h5([tmp_path / "h5_files"], tmp_path / "b", patches_dir=tmp_path / "patches")
    (row,) = datasets.load_from_disk(str(out)).with_format("numpy", dtype=None)
    assert row["slide_id"] == "slide" and row["patch_size_level0"] == 1024 and np.isnan(row["mpp"])
    assert read_metadata(out)["h5_layouts"] == ["clam"]


def test_clam_level_downsample_from_the_slide(tmp_path):
    features, coords = tiles(5, 4, 256, 0)
    attrs = {"patch_size": 256, "patch_level": 0}
    write_clam(tmp_path / "CMU-1-Small-Region.h5", features, coords, attrs)
    out = import_h5([tmp_path / "CMU-1-Small-Region.h5"], tmp_path / "ds", slides_dir=CMU.parent)
    (row,) = datasets.load_from_disk(str(out)).with_format("numpy", dtype=None)
    assert (
        row["patch_size_level0"] == 256 and row["mpp"] == pytest.approx(0.499) and row["magnification"] == 20
    )


def test_missing_patch_size_names_the_options(tmp_path):
    features, coords = tiles(3, 4, 256, 0)
    write_clam(tmp_path / "bare.h5", features, coords, None)
    with pytest.raises(ValueError, match="--patch-size-level0"):
        import_h5([tmp_path / "bare.h5"], tmp_path / "ds")
    write_clam(tmp_path / "level1.h5", features, coords, {"patch_size": 256, "patch_level": 1})
    with pytest.raises(ValueError, match="--slides-dir"):
        import_h5([tmp_path / "level1.h5"], tmp_path / "ds")
    out = import_h5([tmp_path / "bare.h5"], tmp_path / "ds", patch_size_level0=256)
    assert datasets.load_from_disk(str(out))[0]["patch_size_level0"] == 256


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("giga-ssl import-h5: error: ")
    return err


def test_out_never_deletes_what_import_h5_did_not_write(tmp_path, capsys, snapshot):
    """Issue 19: --out used to be replaced whatever it was (the input folder, an extraction, slides)."""
    h5_dir = tmp_path / "h5"
    h5_dir.mkdir()
    write_trident(h5_dir / "s1.h5", *tiles(4, 8, 512, 0))
    other = tmp_path / "extraction"
    (other / "exhaustive").mkdir(parents=True)
    (other / "manifest.jsonl").write_text("{}\n")
    before = snapshot(tmp_path)
    for out, expected in [
        (h5_dir, "is or holds the input"),
        (tmp_path, "is or holds the input"),
        (other, "is not an earlier giga-ssl import-h5 output"),
        (h5_dir / "s1.h5", "is or holds the input"),
    ]:
        assert main([str(h5_dir), "--out", str(out)]) == 2
        assert expected in one_line_error(capsys)
    assert snapshot(tmp_path) == before

    out = tmp_path / "ds"
    out.mkdir()  # an empty folder is taken
    assert main([str(h5_dir), "--out", str(out)]) == 0
    capsys.readouterr()  # the success's progress bars
    first = snapshot(out)
    assert main([str(h5_dir), "--out", str(out), "--dtype", "float32"]) == 2
    assert "pass --overwrite" in one_line_error(capsys)
    assert snapshot(out) == first
    assert main([str(h5_dir), "--out", str(out), "--dtype", "float32", "--overwrite"]) == 0
    assert read_metadata(out)["dtype"] == "float32"
    capsys.readouterr()

    metadata = json.loads((out / METADATA_FILENAME).read_text())
    (out / METADATA_FILENAME).write_text(json.dumps({**metadata, "source": "giga-ssl extract"}))
    assert main([str(h5_dir), "--out", str(out), "--overwrite"]) == 2  # another command's Dataset
    assert "is not an earlier giga-ssl import-h5 output" in one_line_error(capsys)
    (out / METADATA_FILENAME).write_text(json.dumps(metadata))

    (out / "notes.txt").write_text("mine")  # a file the user added: the folder is no longer only ours
    assert main([str(h5_dir), "--out", str(out), "--overwrite"]) == 2
    assert "is not an earlier giga-ssl import-h5 output" in one_line_error(capsys)
    assert (out / "notes.txt").read_text() == "mine"


def test_float16_overflow_is_refused_naming_the_slide(tmp_path, capsys):
    features, coords = tiles(6, 8, 512, 0)
    write_trident(tmp_path / "fine.h5", features, coords)
    features[2, 3] = 1e6  # beyond float16's 65504: would be stored as inf
    write_trident(tmp_path / "loud.h5", features, coords)
    out = tmp_path / "ds"
    assert main([str(tmp_path / "fine.h5"), str(tmp_path / "loud.h5"), "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "slide loud" in err and "--dtype float32" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fine.h5", "loud.h5"]  # no output, no temporary
    assert (
        main([str(tmp_path / "fine.h5"), str(tmp_path / "loud.h5"), "--out", str(out), "--dtype", "float32"])
        == 0
    )
    rows = datasets.load_from_disk(str(out)).with_format("numpy", dtype=None)
    assert rows[1]["slide_id"] == "loud" and rows[1]["features"].max() == pytest.approx(1e6)


def test_coords_must_be_pairs_and_the_tile_side_positive(tmp_path, capsys):
    features, _ = tiles(4, 8, 512, 0)
    write_trident(tmp_path / "triples.h5", features, np.arange(12).reshape(4, 3))
    assert main([str(tmp_path / "triples.h5"), "--out", str(tmp_path / "a")]) == 2
    assert "coords must be (n, 2)" in one_line_error(capsys)
    write_trident(tmp_path / "ok.h5", *tiles(4, 8, 512, 0))
    assert main([str(tmp_path / "ok.h5"), "--out", str(tmp_path / "b"), "--patch-size-level0", "-224"]) == 2
    assert "positive" in one_line_error(capsys)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
