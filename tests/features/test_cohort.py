"""Cohort inputs of `giga-ssl extract`: --slides-csv (per-slide ids and pixel sizes) and --recursive."""

import numpy as np
import pytest

from giga_ssl_hf.features.cohort import SlideEntry, collect_slides, read_slides_csv
from giga_ssl_hf.features.extract import main

from .test_extract import CMU, FAST, manifest, rows, write_tiff_without_resolution


def test_slides_csv_per_slide_mpp_extracts_a_slide_without_pixel_size(tmp_path):
    write_tiff_without_resolution(tmp_path / "nores.tiff")
    csv = tmp_path / "cohort.csv"
    csv.write_text(f"path,slide_id,mpp\nnores.tiff,patient-7,0.5\n{CMU},,\n")
    out = tmp_path / "out"
    assert main(["--slides-csv", str(csv), "--out", str(out), "--no-aug", "--no-progress", *FAST]) == 0
    records = manifest(out)
    assert set(records) == {"patient-7", "CMU-1-Small-Region"}
    nores = records["patient-7"]
    assert nores["status"] == "ok" and nores["mpp_source"] == "user" and nores["mpp"] == 0.5
    assert nores["patch_size_level0"] == 256 and nores["n_tiles"] > 0  # 64 px at 2 µm/px = 256 px at 0.5
    cmu = records["CMU-1-Small-Region"]
    assert cmu["mpp_source"] == "metadata" and cmu["patch_size_level0"] == 257  # no mpp cell: metadata
    by_id = {r["slide_id"]: r for r in rows(out / "exhaustive")}
    assert by_id["patient-7"]["mpp"] == 0.5 and np.isnan(by_id["patient-7"]["magnification"])


def test_without_csv_mpp_the_slide_fails_with_a_hint(tmp_path):
    write_tiff_without_resolution(tmp_path / "nores.tiff")
    csv = tmp_path / "cohort.csv"
    csv.write_text("path\nnores.tiff\n")
    out = tmp_path / "out"
    assert main(["--slides-csv", str(csv), "--out", str(out), "--no-aug", "--no-progress", *FAST]) == 1
    assert "--mpp" in manifest(out)["nores"]["error"]


def test_csv_mpp_with_override_mpp_wins_over_metadata(tmp_path):
    csv = tmp_path / "cohort.csv"
    csv.write_text(f"path,mpp\n{CMU},0.25\n")
    entries = read_slides_csv(csv)
    assert entries == [SlideEntry(CMU, "CMU-1-Small-Region", 0.25)]
    out = tmp_path / "out"
    argv = ["--slides-csv", str(csv), "--out", str(out), "--override-mpp", "--no-aug", "--no-progress", *FAST]
    assert main(argv) == 0
    record = manifest(out)["CMU-1-Small-Region"]
    assert record["mpp"] == 0.25 and record["mpp_source"] == "user" and record["patch_size_level0"] == 512


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("file\nx.svs\n", "needs a 'path' column"),
        ("path,mpp\n{cmu},-1\n", "line 2: mpp must be a positive number"),
        ("path,mpp\n{cmu},abc\n", "line 2: mpp must be a positive number"),
        ("path\nmissing.svs\n", "line 2: no such slide"),
        ("path,slide_id\n{cmu},a/b\n", "line 2: slide_id 'a/b'"),
        ("path,slide_id\n{cmu},x\n{cmu},x\n", "slide_id 'x' would be used by both"),
        ("path,slide_id\n{cmu},x\n\n{cmu},y,0.5\n", "line 4: 3 fields but the header has 2"),
    ],
)
def test_bad_slides_csv_is_a_one_line_usage_error(tmp_path, capsys, content, message):
    csv = tmp_path / "cohort.csv"
    csv.write_text(content.format(cmu=CMU))
    assert main(["--slides-csv", str(csv), "--out", str(tmp_path / "out"), *FAST]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1 and "Traceback" not in error
    assert not (tmp_path / "out").exists()  # nothing started


def test_a_csv_saved_with_a_byte_order_mark_reads_its_path_column(tmp_path):
    """Spreadsheets' "CSV UTF-8" starts with a BOM, which used to hide the 'path' column."""
    csv = tmp_path / "cohort.csv"
    csv.write_bytes(f"path,slide_id\n{CMU},é-1\n".encode("utf-8-sig"))
    assert read_slides_csv(csv) == [SlideEntry(CMU, "é-1")]


def test_recursive_finds_nested_slides_and_refuses_clashing_stems(tmp_path, capsys):
    (tmp_path / "tree" / "site1" / "2024").mkdir(parents=True)
    (tmp_path / "tree" / "site2").mkdir()
    (tmp_path / "tree" / "site1" / "2024" / "a.svs").symlink_to(CMU)
    (tmp_path / "tree" / "site2" / "b.svs").symlink_to(CMU)
    (tmp_path / "tree" / "notes.txt").write_text("not a slide")
    assert [e.slide_id for e in collect_slides([tmp_path / "tree"])] == []  # not recursive: top level only
    assert [e.slide_id for e in collect_slides([tmp_path / "tree"], recursive=True)] == ["a", "b"]

    (tmp_path / "tree" / "site2" / "a.svs").symlink_to(CMU)
    assert main([str(tmp_path / "tree"), "--recursive", "--out", str(tmp_path / "out"), *FAST]) == 2
    error = capsys.readouterr().err
    assert "slide_id 'a'" in error
    assert str(tmp_path / "tree" / "site1" / "2024" / "a.svs") in error
    assert str(tmp_path / "tree" / "site2" / "a.svs") in error
