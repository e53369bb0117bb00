"""The generated cards carry valid Hub metadata and say what a user needs: provenance, shape, how to load."""

from __future__ import annotations

import re

import torch
from huggingface_hub import DatasetCard, ModelCard

from giga_ssl_hf.hub.cards import dataset_card, model_card

from .conftest import DATASET_REPO, METADATA, MODEL_REPO


def test_model_card_metadata_and_sections(dry_runs):
    card = ModelCard.load(dry_runs["model"] / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "feature-extraction"
    assert card.data.license == "mit"
    assert {"pathology", "whole-slide-image", "self-supervised", "multiple-instance-learning"} <= set(
        card.data.tags
    )
    for section in (
        "## Model",
        "## How it was trained",
        "## How to use",
        "## Reference results",
        "## Citation",
    ):
        assert section in card.text
    assert "| Epochs | 3 |" in card.text and "| Tile encoder | resnet18-layer3 |" in card.text
    assert f'AutoModel.from_pretrained("{MODEL_REPO}", trust_remote_code=True)' in card.text
    assert "| 0.960 |" in card.text and "@inproceedings{lazard2023gigassl" in card.text


def test_the_model_cards_snippet_runs(dry_runs):
    card = (dry_runs["model"] / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    namespace = {}
    exec(snippet.replace(f'"{MODEL_REPO}"', repr(str(dry_runs["model"]))), namespace)
    assert namespace["embedding"].shape == (1, 16) and torch.isfinite(namespace["embedding"]).all()


def test_a_training_summary_with_history_and_nested_arguments(tiny_config):
    summary = {
        "steps": 120,
        "final_loss": 2.5,
        "loss_history": [float(i) for i in range(500)],
        "arguments": {"epochs": 30, "n_tiles": 5},
        "feature_metadata": {"encoder": "resnet18"},
    }
    text = str(model_card(tiny_config(), "org/name", summary))
    assert "| Steps | 120 |" in text and "| Final loss | 2.5 |" in text
    assert "499.0" not in text  # the loss history stays in the JSON file
    assert '"n_tiles": 5' in text and '"encoder": "resnet18"' in text  # nested records in a details block


def test_model_card_without_summary_describes_the_method(tiny_config):
    text = str(model_card(tiny_config(fixed_grid_cell_size=True, grid_size_mode="batch"), "org/name"))
    assert "No training summary" in text and "temperature 0.05" in text
    assert "level-0 coordinates / 224 px" in text and "over the whole batch" in text
    assert "patch_size_level0" not in text.split("## How to use")[1].split("```")[1]


def test_model_card_documents_tile_embeddings(tiny_config):
    text = str(model_card(tiny_config(), "org/name"))
    usage = text.split("## How to use")[1].split("## Reference results")[0]
    assert "output_tile_embeddings=True" in usage and "`(batch, n_tiles, 16)`" in usage
    assert "zeros for padded tiles" in usage and "giga-ssl heatmap" in usage


def test_model_card_names_the_slide_pooling(tiny_config):
    """A max / top model's card says how its sites are pooled and that embed takes each whole slide at once."""
    for config, pooling in [
        (tiny_config(), "mean over sites"),
        (tiny_config(slide_pooling="top", top_site_fraction=0.05), "the mean of the largest 5% over sites"),
        (tiny_config(encoder_type="mlp", slide_pooling="max"), "channel maximum over tiles"),
    ]:
        text = str(model_card(config, "org/name"))
        assert pooling in text and "--tile-sampling all" in text


def test_dataset_card_metadata_and_provenance(dry_runs):
    card = DatasetCard.load(dry_runs["dataset"] / "README.md")
    assert card.data.license == "mit"
    assert card.data.configs == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}
    ]
    assert "slide-embeddings" in card.data.tags and card.data.size_categories == ["n<1K"]
    for row in (
        "| Cohort | TCGA-TINY |",
        f"| Model | [{MODEL_REPO}](https://huggingface.co/{MODEL_REPO}) |",
        "| Model revision | 0123abc |",
        "| Tile sampling | views |",
        "| Number of slides | 12 |",
        "| Embedding dimension | 16 |",
        "| Tile encoder | resnet18-layer3 |",
    ):
        assert row in card.text
    assert card.text.count("| Cohort |") == 1
    assert f'giga_ssl_hf.load_embeddings("{DATASET_REPO}")' in card.text


def test_dataset_card_without_metadata_says_unknown():
    card = dataset_card({}, "org/emb", n_slides=20_000, dim=512, cohort=None)
    parsed = DatasetCard(str(card))
    assert parsed.data.size_categories == ["10K<n<100K"]
    assert "unspecified cohort" in parsed.text and "| Model revision | unknown |" in parsed.text
    override = dataset_card(METADATA, "org/emb", n_slides=3, dim=16, cohort="CPTAC")
    assert "| Cohort | CPTAC |" in str(override)


def test_cards_do_not_publish_local_paths():
    from giga_ssl_hf import GigaSSLConfig
    from giga_ssl_hf.hub.cards import dataset_card, model_card

    summary = {
        "steps": 3,
        "features": "/home/alice/cohort/augmented",
        "arguments": {"output_dir": "/scratch/run"},
    }
    card = str(model_card(GigaSSLConfig(), "org/name", training_summary=summary))
    assert "/home/alice" not in card and "/scratch" not in card and "(local) augmented" in card
    metadata = {"model": "/home/alice/runs/final", "tile_sampling": "random", "n_views": 100}
    card = str(dataset_card(metadata, "org/emb", n_slides=3, dim=8))
    assert "/home/alice" not in card and "(local) final" in card


def test_model_card_names_the_tile_encoder_and_its_intended_use(tiny_config):
    record = {
        "name": "uni",
        "source": "MahmoodLab/UNI",
        "revision": "77ffbca1ee1cdcee6e87f6deebd2db8a5888c721",
        "weights_sha256": None,
        "weights": "pretrained",
        "feature_dim": 1024,
        "input_size": 224,
        "mpp": 0.5,
        "normalisation": "ImageNet",
        "pooling": "cls",
    }
    text = str(model_card(tiny_config(tile_encoder=record), "org/name"))
    assert "### Tile encoder" in text and "| Tile encoder | uni |" in text
    assert "| Encoder revision | 77ffbca1ee1cdcee6e87f6deebd2db8a5888c721 |" in text
    assert "| Tiles | 224 px at 0.5 µm/px |" in text and "| Tile features | 1024-d, cls |" in text
    assert "## Intended use and limitations" in text and "Not for clinical use" in text
    assert "not recorded" in str(model_card(tiny_config(), "org/name"))
