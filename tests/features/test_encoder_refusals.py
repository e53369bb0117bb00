"""`giga-ssl extract --encoder / --weights` refusals (issue 19): one line saying what to do, exit status 2,
nothing written, and the cheap ones answered before torch is imported."""

import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file

from giga_ssl_hf.features.encoder_presets import resolve_encoder_name
from giga_ssl_hf.features.extract import ExtractionConfig

from .test_extract_errors import CMU, FAST, one_line_error, run_extract


def test_a_preset_typed_in_capitals_is_the_preset():
    assert resolve_encoder_name("UNI") == "uni" and resolve_encoder_name("H-Optimus-0") == "h-optimus-0"
    config = ExtractionConfig(encoder="Virchow2")
    assert config.encoder == "virchow2" and config.tile_size == 224 and config.target_mpp == 0.5
    assert resolve_encoder_name("vit_small_patch16_224.augreg_in21k") == "vit_small_patch16_224.augreg_in21k"


@pytest.mark.parametrize(
    ("encoder", "message"),
    [
        ("h-optimus-2", "did you mean 'h-optimus-1' or 'h-optimus-0'?"),  # refused without torch: not a name
        ("resnet18_layer3", "did you mean 'resnet18-layer3' or 'resnet18'"),  # no word of timm's models
        ("nosuch", "not a preset ('giga-ssl encoders' lists them), a timm model name nor an hf-hub: id"),
        ("torch", "unknown encoder 'torch'"),  # a word of timm's sources, not a model: timm itself says no
    ],
)
def test_an_unknown_encoder_is_one_line_with_the_nearest_names(encoder, message, tmp_path, capsys):
    assert run_extract(CMU, "--out", tmp_path / "out", "--no-aug", *FAST, "--encoder", encoder) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def _weights(tmp_path):
    resnet50 = timm.create_model("resnet50", pretrained=False, num_classes=0).state_dict()
    torch.save(resnet50, tmp_path / "resnet50.pth")
    data = (tmp_path / "resnet50.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.pth").write_text("these are not weights\n")
    save_file(
        timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict(),
        tmp_path / "r18.safetensors",
    )
    data = (tmp_path / "r18.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "no-tensors.pth")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "resnet50.pth",
            "the weights are of another architecture than the encoder (16 tensors of other shapes",
        ),
        ("truncated.pth", "not a readable weights file"),
        ("notes.pth", "not a readable weights file"),
        ("truncated.safetensors", "not a readable weights file"),
        ("garbage.safetensors", "no safetensors header"),
        ("no-tensors.pth", "expected a state dict of tensors"),
    ],
)
def test_a_wrong_weights_file_is_one_line(name, message, tmp_path, capsys):
    _weights(tmp_path)
    out = tmp_path / "out"
    assert run_extract(CMU, "--out", out, "--no-aug", *FAST, "--weights", tmp_path / name) == 2
    err = one_line_error(capsys)
    assert f"{name}: " in err and message in err
    assert not out.exists()


def test_a_whole_weights_file_loads(tmp_path):
    _weights(tmp_path)
    out = tmp_path / "out"
    assert run_extract(CMU, "--out", out, "--no-aug", *FAST, "--weights", tmp_path / "r18.safetensors") == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--encoder", "UNI"], "cannot be downloaded (a gated model: accept its terms"),
        (["--encoder", "nosuch"], "unknown encoder 'nosuch'"),
        (["--weights", "{tmp}/notes.pth"], "notes.pth: not a readable weights file"),
    ],
)
def test_refusals_come_before_torch_is_imported(options, message, tmp_path):
    """An uncached gated preset offline used to build the 300M-parameter model first (12-24 s, 3.3 GB);
    importing torch alone takes seconds and most of a gigabyte."""
    (tmp_path / "notes.pth").write_text("these are not weights\n")
    env = {**os.environ, "HF_HOME": str(tmp_path / "empty-hf-home"), "HF_HUB_OFFLINE": "1"}
    script = (
        "import sys\n"
        "from giga_ssl_hf.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "sys.exit(code)\n"
    )
    out = tmp_path / "out"
    options = [option.format(tmp=tmp_path) for option in options]
    command = [sys.executable, "-c", script, "extract", str(CMU), "--out", str(out), *options]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    (err,) = result.stderr.strip().splitlines()
    assert message in err
    assert not out.exists()
