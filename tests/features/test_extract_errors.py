"""Bad inputs to `giga-ssl extract`: one line on stderr saying what to do, the right exit status, and nothing
finished is changed (issue 10)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from giga_ssl_hf.cli import main as cli_main
from giga_ssl_hf.features.extract import ExtractionConfig, extract_slides, format_summary

WSI_FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "wsi"
CMU = WSI_FIXTURES / "CMU-1-Small-Region.svs"
FAST = ["--no-pretrained", "--tile-size", "64", "--target-mpp", "2", "--n-aug", "3", "--n-tiles-per-aug", "8"]


def run_extract(*args) -> int:
    return cli_main(["extract", *map(str, args), "--no-progress"])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("giga-ssl extract: error: ")
    return err


def test_a_missing_path_is_one_line_and_creates_nothing(tmp_path, capsys):
    assert run_extract(tmp_path / "no-such.svs", "--out", tmp_path / "out", *FAST) == 2
    assert "no such slide or folder" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("contents", [[], ["a.png", "notes.txt"]])
def test_a_folder_without_slides_is_refused_naming_what_was_skipped(contents, tmp_path, capsys):
    folder = tmp_path / "slides"
    folder.mkdir()
    for name in contents:
        (folder / name).write_bytes(b"not a slide")
    assert run_extract(folder, "--out", tmp_path / "out", *FAST) == 2
    err = one_line_error(capsys)
    assert f"no slides found in {folder}" in err
    assert ("(skipped: a.png, notes.txt)" in err) == bool(contents)
    assert not (tmp_path / "out").exists()


def test_skipped_files_are_named_in_the_summary(tmp_path, capsys):
    folder = tmp_path / "slides"
    folder.mkdir()
    (folder / "CMU.svs").symlink_to(CMU)
    (folder / "label.png").write_bytes(b"png")
    assert run_extract(folder, "--out", tmp_path / "out", "--no-aug", *FAST) == 0
    assert "skipped 1 file(s) of unknown type: label.png" in capsys.readouterr().out


def test_other_settings_on_a_finished_folder_are_refused_in_one_line(tmp_path, capsys, snapshot):
    out = tmp_path / "out"
    assert run_extract(CMU, "--out", out, "--no-aug", *FAST) == 0
    capsys.readouterr()
    before = snapshot(out)
    assert run_extract(CMU, "--out", out, "--no-aug", *FAST, "--min-tissue", "0.7") == 2
    err = one_line_error(capsys)
    assert "min_tissue: 0.5 there, 0.7 now" in err and "--overwrite" in err
    assert snapshot(out) == before


def test_a_folder_where_no_slide_finished_takes_new_settings(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_extract(WSI_FIXTURES / "broken.svs", "--out", out, "--no-aug", *FAST) == 1
    assert (out / "extract_config.json").exists()
    assert run_extract(CMU, "--out", out, "--no-aug", *FAST, "--min-tissue", "0.7") == 0
    assert '"min_tissue": 0.7' in (out / "extract_config.json").read_text()


def test_a_folders_recorded_settings_reload_as_a_config_file(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert run_extract(CMU, "--out", first, "--no-aug", *FAST, "--min-tissue", "0.7") == 0
    recorded = first / "extract_config.json"
    assert run_extract(CMU, "--out", second, "--no-aug", "--config", recorded) == 0
    assert json.loads((second / "extract_config.json").read_text()) == json.loads(recorded.read_text())
    # flags still override the file, and a key that is no option is refused like an unknown flag
    assert (
        run_extract(CMU, "--out", tmp_path / "third", "--no-aug", "--config", recorded, "--min-tissue", "0.6")
        == 0
    )
    assert json.loads((tmp_path / "third" / "extract_config.json").read_text())["min_tissue"] == 0.6
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads(recorded.read_text()), "tile_sise": 64}))
    capsys.readouterr()
    assert run_extract(CMU, "--out", tmp_path / "fourth", "--no-aug", "--config", bad) == 2
    assert "tile_sise" in one_line_error(capsys) and not (tmp_path / "fourth").exists()


def test_an_unsafe_weights_file_is_refused_in_one_line(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": {}, "payload": _Payload(str(marker))}, tmp_path / "evil.pth")
    assert (
        run_extract(CMU, "--out", tmp_path / "out", "--no-aug", *FAST, "--weights", tmp_path / "evil.pth")
        == 2
    )
    err = one_line_error(capsys)
    assert "evil.pth: refused to load" in err and "arbitrary code" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_too_coarse_slides_are_failures_and_no_tissue_is_empty(tmp_path):
    summary = extract_slides(
        [WSI_FIXTURES / "boxes.tiff", WSI_FIXTURES / "small.svs"],
        tmp_path / "out",
        ExtractionConfig(pretrained=False, tile_size=64, target_mpp=2.0),
        passes=("exhaustive",),
        progress=False,
    )
    assert [slide_id for slide_id, _ in summary.failed] == ["boxes"] and "too coarse" in summary.failed[0][1]
    assert summary.empty == ["small"]


def test_progress_and_summary_count_both_passes(tmp_path, capsys):
    config = ExtractionConfig(pretrained=False, tile_size=64, target_mpp=2.0, n_aug=3, n_tiles_per_aug=8)
    summary = extract_slides([CMU], tmp_path / "out", config, progress=True)
    bars = capsys.readouterr().err
    assert "exhaustive tiles" in bars and "augmented tiles" in bars
    assert summary.n_tiles == 37 and summary.n_views == 3
    assert summary.n_encoded["exhaustive"] == 37 and 0 < summary.n_encoded["augmented"] <= 3 * 8
    text = format_summary(summary)
    assert "37 tissue tiles, 3 augmented views" in text
    assert f"{37 + summary.n_encoded['augmented']} tile images encoded" in text


@pytest.mark.slow
@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "unreachable endpoint"])
def test_missing_pretrained_weights_fail_fast_naming_the_fixes(how, tmp_path):
    """Offline without the weights in the cache: one line naming --weights and --no-pretrained, within
    seconds, and nothing written, so that the retry with other settings works in the same folder."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "empty-hf-home")}
    env.pop("HF_HUB_OFFLINE", None)
    if how == "HF_HUB_OFFLINE":
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # the discard port: nothing listens, refused at once
    out = tmp_path / "out"
    command = [sys.executable, "-m", "giga_ssl_hf.cli", "extract", str(CMU), "--out", str(out), "--no-aug"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    err = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert "not in the Hugging Face cache" in err and "--weights FILE" in err and "--no-pretrained" in err
    assert not out.exists()
    retry = subprocess.run([*command, *FAST], env=env, capture_output=True, text=True, timeout=300)
    assert retry.returncode == 0, retry.stderr[-2000:]


@pytest.mark.slow
def test_a_full_disk_is_one_line_leaves_no_temporaries_and_the_rerun_resumes(tmp_path, capsys, snapshot):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        slides = tmp_path / "slides"
        slides.mkdir()
        (slides / "a.svs").symlink_to(CMU)
        out = disk / "out"
        assert run_extract(slides, "--out", out, *FAST) == 0
        capsys.readouterr()
        finished = snapshot(out / "parts")
        (slides / "b.svs").symlink_to(CMU)
        filler = disk / "filler"
        with open(filler, "wb") as handle:  # fill the disk to the last byte
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError:
                pass
        assert run_extract(slides, "--out", out, *FAST) == 1
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == [
            f"giga-ssl extract: error: no space left on device while writing slide b into {out}; "
            "free space and rerun to resume"
        ]
        assert not list(out.rglob("*.tmp*")), list(out.rglob("*.tmp*"))
        assert {k: v for k, v in snapshot(out / "parts").items() if k.startswith("a.")} == finished
        filler.unlink()
        assert run_extract(slides, "--out", out, *FAST) == 0
        assert "1 ok" in capsys.readouterr().out and (out / "parts" / "b.json").exists()
    finally:
        subprocess.run(["umount", str(disk)])
        shutil.rmtree(disk, ignore_errors=True)


def test_a_library_call_is_checked_like_the_command_line(tmp_path, capsys):
    """extract_slides' keyword arguments are ExtractionRun's fields: the same checks, the same message."""
    assert run_extract(CMU, "--out", tmp_path / "cli", "--override-mpp", *FAST) == 2
    message = one_line_error(capsys).removeprefix("giga-ssl extract: error: ")
    with pytest.raises(ValueError) as refused:
        extract_slides([CMU], tmp_path / "lib", ExtractionConfig(pretrained=False), override_mpp=True)
    assert (
        str(refused.value) == message == "--override-mpp needs --mpp (or a --slides-csv with an mpp column)"
    )
    with pytest.raises(TypeError, match="unexpected keyword argument 'n_readers'"):
        extract_slides([CMU], tmp_path / "lib", n_readers=2)
    assert not (tmp_path / "cli").exists() and not (tmp_path / "lib").exists()


def test_a_failed_dataset_write_leaves_the_previous_dataset_and_no_temporary(tmp_path):
    from giga_ssl_hf.features.store import write_tile_dataset
    from giga_ssl_hf.features.synthetic_features import synthetic_tile_dataset

    dataset, _ = synthetic_tile_dataset(n_slides=3, feature_dim=4, tiles_per_slide=5, augmented=False, seed=0)
    rows = list(dataset.with_format("numpy", dtype=None))
    final = write_tile_dataset(rows, tmp_path / "exhaustive", 4, "float16", {"v": 1})
    before = {p.name: p.read_bytes() for p in final.iterdir()}

    def killed_midway():
        yield rows[0]
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_tile_dataset(killed_midway(), final, 4, "float16", {"v": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["exhaustive"]
    assert {p.name: p.read_bytes() for p in final.iterdir()} == before
