"""Fine-tuning a Giga-SSL encoder with its linear head on few labels: the loss goes down, the saved folder is a
transformers classifier, and the protocol scores it on the same splits as the frozen probe."""

import json

import numpy as np
import pytest
import torch

from giga_ssl_hf.evaluation.finetune import (
    FINETUNE_SUMMARY_FILENAME,
    FineTuneBaseline,
    FineTuneRecipe,
    embed_slides,
    finetune_folder,
    tile_slides,
)
from giga_ssl_hf.evaluation.probe import evaluate_embeddings, slide_auc

from .synthetic import write_tile_cohort

RECIPE = FineTuneRecipe(epochs=12, learning_rate=3e-3, head_learning_rate=3e-3, n_tiles=8, n_views=4)


@pytest.fixture
def encoder_and_cohort(tmp_path, tiny_config):
    """A tiny random-initialised Giga-SSL checkpoint and an exhaustive tile-feature Dataset (arrangement task:
    only neighbourhoods tell the classes apart, so the frozen random encoder leaves room to learn)."""
    from giga_ssl_hf import GigaSSLModel

    torch.manual_seed(0)
    GigaSSLModel(tiny_config(n_tiles=8)).save_pretrained(tmp_path / "encoder")
    labels = write_tile_cohort(tmp_path / "exhaustive", 24, 6, arrangement=True, feature_dim=8)
    return tmp_path, labels


@pytest.mark.slow
def test_finetuning_lowers_the_loss_and_saves_an_auto_loadable_classifier(encoder_and_cohort):
    from transformers import AutoModelForSequenceClassification

    tmp_path, labels = encoder_and_cohort
    out = finetune_folder(
        str(tmp_path / "encoder"), str(tmp_path / "exhaustive"), labels, tmp_path / "ft", RECIPE
    )
    summary = json.loads((out / FINETUNE_SUMMARY_FILENAME).read_text())
    losses = summary["loss_per_epoch"]
    assert len(losses) == RECIPE.epochs and np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    assert sorted(summary["training_slides"]) == sorted(labels.index)

    model = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    assert type(model).__name__ == "GigaSSLForSlideClassification"
    assert model.config.id2label == {0: "a", 1: "b"}
    ids, tiles = tile_slides(str(tmp_path / "exhaustive"), RECIPE.n_tiles, RECIPE.tile_sampling)
    y = torch.as_tensor((labels.loc[ids] == "b").to_numpy().astype(np.int64))
    with torch.no_grad():
        output = model(
            slide_embedding=torch.from_numpy(embed_slides(model, tiles, np.arange(len(ids)), RECIPE)),
            labels=y,
        )
    assert output.loss.item() < losses[0]  # the saved weights are the fine-tuned ones
    scores = (output.logits[:, 1] - output.logits[:, 0]).numpy()
    assert slide_auc(y.numpy(), scores) > 0.8, (losses, slide_auc(y.numpy(), scores))

    with pytest.raises(FileExistsError, match="overwrite"):  # an earlier model is replaced only on request
        finetune_folder(str(tmp_path / "encoder"), str(tmp_path / "exhaustive"), labels, out, RECIPE)


@pytest.mark.slow
def test_the_protocol_scores_finetuning_on_its_splits(encoder_and_cohort):
    from giga_ssl_hf import GigaSSLModel

    tmp_path, labels = encoder_and_cohort
    ids, tiles = tile_slides(str(tmp_path / "exhaustive"), RECIPE.n_tiles, RECIPE.tile_sampling)
    encoder = GigaSSLModel.from_pretrained(tmp_path / "encoder")
    before = {name: value.clone() for name, value in encoder.state_dict().items()}
    baseline = FineTuneBaseline(encoder, tiles, RECIPE, np.arange(len(ids)))
    (result,) = evaluate_embeddings((ids, baseline), labels, folds=2, train_sizes="full", seed=0, task="t")
    assert [split.n_train for split in result.splits] == [12, 12]
    assert all(0.0 <= auc <= 1.0 for auc in result.aucs)
    assert all(torch.equal(before[name], value) for name, value in encoder.state_dict().items())  # copied
    first = baseline.fit_predict(np.arange(12), np.arange(12) % 2, np.arange(12, 16), 2)
    assert np.array_equal(first, baseline.fit_predict(np.arange(12), np.arange(12) % 2, np.arange(12, 16), 2))
