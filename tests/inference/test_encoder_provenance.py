"""Tile-encoder provenance end to end: extraction records the encoder, training puts it in the model's config,
and embedding (or continued training) refuses features of another encoder unless told otherwise."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import save_file

from giga_ssl_hf.contracts import read_metadata
from giga_ssl_hf.contracts.tile_features import (
    EncoderMismatchError,
    encoder_mismatch,
    require_same_encoder,
)
from giga_ssl_hf.features import extract
from giga_ssl_hf.features.encoders import build_tile_encoder
from giga_ssl_hf.inference import embed
from giga_ssl_hf.training import train

EXTRACT = [
    "--no-pretrained",
    "--no-progress",
    "--n-aug",
    "2",
    "--n-tiles-per-aug",
    "8",
    "--target-mpp",
    "2.0",
]
TRAIN = ["--batch_size", "2", "--max_steps", "2", "--hidden_dim", "16", "--projection_dims", "16", "8"]
TRAIN += ["--report_to", "none", "--save_steps", "0", "--n_tiles", "3"]


@pytest.fixture(scope="module")
def two_encoders(tmp_path_factory, shared_dir):
    """The same two slides extracted with ResNet18-layer3 at its default init and with another weights file."""
    root = tmp_path_factory.mktemp("provenance")
    slides = root / "slides"
    slides.mkdir()
    for name in ("slide_a", "slide_b"):  # two slides, so that a batch of 2 can train
        (slides / f"{name}.svs").symlink_to(shared_dir / "fixtures" / "wsi" / "CMU-1-Small-Region.svs")
    other = build_tile_encoder("resnet18-layer3", pretrained=False, init_seed=7)
    weights = root / "other_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in other.backbone.state_dict().items()}, weights)
    assert extract.main([str(slides), "--out", str(root / "default"), *EXTRACT]) == 0
    assert extract.main([str(slides), "--out", str(root / "other"), "--weights", str(weights), *EXTRACT]) == 0
    assert train.main(["--features", str(root / "default"), "--output_dir", str(root / "run"), *TRAIN]) == 0
    return root


@pytest.mark.slow
def test_features_record_their_encoder_and_the_model_carries_it(two_encoders):
    record = read_metadata(two_encoders / "default" / "exhaustive")["tile_encoder"]
    assert record == read_metadata(two_encoders / "default" / "augmented")["tile_encoder"]
    assert record["name"] == "resnet18-layer3" and record["source"] == "timm/resnet18.tv_in1k"
    assert record["weights"] == "random init (seed 0)" and record["weights_sha256"] is None
    assert (record["feature_dim"], record["input_size"], record["mpp"]) == (256, 224, 2.0)
    assert record["normalisation"] == "ImageNet" and record["pooling"] == "layer3-mean"
    other = read_metadata(two_encoders / "other" / "exhaustive")["tile_encoder"]
    assert len(other["weights_sha256"]) == 64 and other["weights"] == "local file"
    # A random init has no sha256 to compare: the records differ in how the weights were obtained.
    assert encoder_mismatch(record, other) == ["weights"]
    config = json.loads((two_encoders / "run" / "final" / "config.json").read_text())
    assert config["tile_encoder"] == record


@pytest.mark.slow
def test_embed_refuses_features_of_another_encoder_unless_allowed(two_encoders, capsys):
    model = str(two_encoders / "run" / "final")
    out = two_encoders / "embeddings"
    assert embed.main(["--model", model, "--features", str(two_encoders / "default"), "--out", str(out)]) == 0
    assert read_metadata(out)["tile_encoder"]["name"] == "resnet18-layer3"
    capsys.readouterr()

    refused = two_encoders / "refused"
    assert (
        embed.main(["--model", model, "--features", str(two_encoders / "other"), "--out", str(refused)]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(
        "giga-ssl embed: error: embed: the tile features come"
    )
    assert "weights sha256" in err and "random init (seed 0)" in err and "--allow-encoder-mismatch" in err
    assert not refused.exists()

    args = ["--model", model, "--features", str(two_encoders / "other"), "--out", str(refused)]
    assert embed.main([*args, "--allow-encoder-mismatch"]) == 0
    assert refused.is_dir()


@pytest.mark.slow
def test_train_init_from_refuses_features_of_another_encoder_unless_allowed(two_encoders, capsys):
    args = [
        "--features",
        str(two_encoders / "other"),
        "--init_from",
        str(two_encoders / "run" / "final"),
        *TRAIN,
    ]
    assert train.main([*args, "--output_dir", str(two_encoders / "continued")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train --init-from: the tile features come from" in err
    assert train.main([*args, "--output_dir", str(two_encoders / "allowed"), "--allow_encoder_mismatch"]) == 0
    # Continued on the other features: the new model records the encoder it was trained on last.
    config = json.loads((two_encoders / "allowed" / "final" / "config.json").read_text())
    assert config["tile_encoder"]["weights"] == "local file" and config["hidden_dim"] == 16


def test_require_same_encoder_rules(caplog):
    uni = {"name": "uni", "revision": "abc", "feature_dim": 1024, "input_size": 224, "mpp": 0.5}
    assert encoder_mismatch(uni, {**uni, "revision": None}) == []  # an unknown field is not compared
    assert encoder_mismatch(uni, {**uni, "name": "phikon-v2"}) == ["name"]
    with pytest.raises(EncoderMismatchError, match=r"come from phikon-v2@abc .* trained on uni@abc"):
        require_same_encoder(uni, {**uni, "name": "phikon-v2"}, allow=False, what="embed")
    require_same_encoder(uni, {**uni, "mpp": 1.0}, allow=True, what="embed")
    assert "allowed by --allow-encoder-mismatch" in caplog.text
    require_same_encoder(None, uni, allow=False, what="embed")  # unknown: a warning, not a refusal
    assert "cannot check the tile encoder" in caplog.text
