"""Fine-tuning a Giga-SSL slide encoder with its linear head on few labelled slides.

The classifier is a ``GigaSSLForSlideClassification`` (the encoder + the standardised linear head, the loss from
``labels``), trained in two stages, as "linear probing then fine-tuning" (Kumar et al., 2022) recommends so that
a randomly initialised head does not distort the pretrained features:

1. the frozen probe: the standardised linear probe of ``giga-ssl evaluate --standardize`` fitted on the training
   slides' embeddings (mean of ``n_views`` views, L2-normalised), loaded as the model's head and standardisation;
2. fine-tuning: AdamW on the encoder (a small learning rate) and the head, a few epochs; each step draws
   ``train_views`` fresh views per slide (windows, or random tiles, with the coordinate augmentation of
   pretraining) and minimises the model's cross-entropy. Batch-norm statistics stay frozen: a few slides per
   step are too few to re-estimate them.

:class:`FineTuneBaseline` runs this as a slide model of the probe protocol (fitted per split and training size,
scored on the same splits as the embeddings); :func:`finetune_folder` fine-tunes on a label table and saves a
model folder that ``AutoModelForSequenceClassification.from_pretrained(..., trust_remote_code=True)`` loads.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from giga_ssl_hf.contracts.tile_features import TileArrays
from giga_ssl_hf.features.windows import window_indices

logger = logging.getLogger(__name__)

FINETUNE_SUMMARY_FILENAME = (
    "finetune_summary.json"  # beside the fine-tuned model: its encoder, recipe, slides
)


@dataclass(frozen=True)
class FineTuneRecipe:
    """Fine-tuning settings (CPU-friendly defaults: seconds per fit on 100 small slides)."""

    epochs: int = 10
    learning_rate: float = 1e-4  # the encoder's; the head learns at head_learning_rate
    head_learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    slides_per_step: int = 8
    train_views: int = 4  # views per slide and step, averaged as the embedding is
    tile_sampling: str = (
        "window"  # "window" (the encoder was trained on windows) or "random" (the paper's views)
    )
    n_tiles: int | None = None  # tiles per view; None: the encoder's config.n_tiles
    n_views: int = 16  # views averaged per embedding, for the probe and for prediction
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        if min(self.epochs, self.slides_per_step, self.train_views, self.n_views) < 1:
            raise ValueError("fine-tuning epochs, slides_per_step, train_views and n_views must be positive")
        if self.tile_sampling not in ("window", "random"):
            raise ValueError(f"fine-tuning views are 'window' or 'random', got {self.tile_sampling!r}")


class SlideTiles:
    """The slides of an exhaustive tile-feature Dataset as views for the classifier (zero-copy row reads)."""

    def __init__(self, arrays: TileArrays, patch_sizes: np.ndarray, n_tiles: int, tile_sampling: str):
        self.arrays, self.patch_sizes, self.n_tiles, self.tile_sampling = (
            arrays,
            patch_sizes,
            n_tiles,
            tile_sampling,
        )

    def views(self, rows: np.ndarray, n_views: int, rng: np.random.Generator, augment=None) -> dict:
        """Model inputs of ``n_views`` views of each slide ``rows``: `(B, n_views, n_tiles, ...)` tensors."""
        index = np.empty((len(rows), n_views, self.n_tiles), dtype=np.int64)
        for i, row in enumerate(rows):
            _, coords = self.arrays.row(int(row))
            if self.tile_sampling == "window":
                centres = rng.integers(0, len(coords), size=n_views)
                index[i] = window_indices(coords // self.patch_sizes[row], centres, self.n_tiles, rng)
            else:
                index[i] = rng.integers(0, len(coords), size=(n_views, self.n_tiles))
        repeated = np.repeat(np.asarray(rows, dtype=np.int64), n_views)
        features, coords = self.arrays.gather(repeated, index.reshape(-1, self.n_tiles))
        coords = coords.astype(np.float32)
        patch = self.patch_sizes[rows].astype(np.float32)
        if augment is not None:
            cell = np.repeat(patch, n_views)[:, None, None]
            coords = (augment(coords / cell, rng) * cell).astype(np.float32)
        shape = (len(rows), n_views, self.n_tiles)
        return {
            "tile_features": torch.from_numpy(features.reshape(*shape, -1)).float(),
            "tile_coords": torch.from_numpy(coords.reshape(*shape, 2)),
            "patch_size_level0": torch.from_numpy(patch),
        }


def _to(inputs: dict, device: str) -> dict:
    return {name: value.to(device) for name, value in inputs.items()}


@torch.no_grad()
def embed_slides(model, tiles: SlideTiles, rows: np.ndarray, recipe: FineTuneRecipe, batch: int = 32):
    """`(len(rows), hidden_dim)` embeddings (``recipe.n_views`` views each, seeded per call) of a classifier."""
    model.eval()
    rng = np.random.default_rng([recipe.seed, 1])
    chunks = [
        model.embed(**_to(tiles.views(rows[i : i + batch], recipe.n_views, rng), recipe.device))
        for i in range(0, len(rows), batch)
    ]
    return torch.cat(chunks).cpu().numpy()


def fit_probe_head(model, embeddings: np.ndarray, y: np.ndarray) -> None:
    """Stage 1, in place: ``model``'s head and standardisation become the standardised linear probe (the
    package's, C=10) fitted on ``embeddings`` of the training slides (class indices ``y``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from giga_ssl_hf.evaluation.classifier import PAPER_CLASSIFIER
    from giga_ssl_hf.evaluation.export_classifier import load_probe_head
    from giga_ssl_hf.evaluation.saved_probe import SavedProbe

    scaler = StandardScaler().fit(embeddings)
    probe = LogisticRegression(**PAPER_CLASSIFIER).fit(scaler.transform(embeddings), y)
    classes = [model.config.id2label[i] for i in range(model.config.num_labels)]
    load_probe_head(model, SavedProbe(classes, probe.coef_, probe.intercept_, scaler.mean_, scaler.scale_))


def finetune(
    model, tiles: SlideTiles, rows: np.ndarray, y: np.ndarray, recipe: FineTuneRecipe
) -> list[float]:
    """Stage 2, in place: fine-tune ``model`` (encoder and head) on slides ``rows``; returns the epochs' losses."""
    from giga_ssl_hf.training.views import CoordinateAugmentation

    rng = np.random.default_rng([recipe.seed, 2])
    augment = CoordinateAugmentation()
    optimiser = torch.optim.AdamW(
        [
            {"params": model.gigassl.parameters(), "lr": recipe.learning_rate},
            {"params": model.classifier.parameters(), "lr": recipe.head_learning_rate},
        ],
        weight_decay=recipe.weight_decay,
    )
    targets = torch.as_tensor(y, dtype=torch.long)
    losses = []
    model.eval()  # frozen batch-norm statistics; gradients still flow
    for _ in range(recipe.epochs):
        order, total = rng.permutation(len(rows)), 0.0
        for start in range(0, len(rows), recipe.slides_per_step):
            step = order[start : start + recipe.slides_per_step]
            inputs = _to(tiles.views(rows[step], recipe.train_views, rng, augment), recipe.device)
            loss = model(**inputs, labels=targets[step].to(recipe.device)).loss
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.item() * len(step)
        losses.append(total / len(rows))
    return losses


def finetune_classifier(encoder, tiles: SlideTiles, rows: np.ndarray, y: np.ndarray, classes, recipe):
    """Both stages from ``encoder`` (a ``GigaSSLModel``, left unchanged); returns ``(classifier, epoch losses)``."""
    from giga_ssl_hf.evaluation.export_classifier import classifier_of_encoder

    model = classifier_of_encoder(encoder, list(classes)).to(recipe.device)
    fit_probe_head(model, embed_slides(model, tiles, rows, recipe), y)
    return model, finetune(model, tiles, rows, y, recipe)


class FineTuneBaseline:
    """Fine-tuning as a slide model of the probe protocol: fitted on each split's training slides (positions,
    Dataset rows ``rows[i]``), scored on its test slides, beside the frozen probe of the same encoder."""

    def __init__(self, encoder, tiles: SlideTiles, recipe: FineTuneRecipe, rows: np.ndarray):
        self.encoder, self.tiles, self.recipe = encoder, tiles, recipe
        self.rows = np.asarray(rows, dtype=np.int64)

    def fit_predict(self, train: np.ndarray, y_train: np.ndarray, test: np.ndarray, n_classes: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.recipe.seed)
            classes = [str(c) for c in range(n_classes)]
            model, _ = finetune_classifier(
                self.encoder, self.tiles, self.rows[train], y_train, classes, self.recipe
            )
            embeddings = embed_slides(model, self.tiles, self.rows[test], self.recipe)
            logits = model(slide_embedding=torch.from_numpy(embeddings).to(self.recipe.device)).logits
        probabilities = torch.softmax(logits.double(), dim=1).detach().cpu().numpy()
        return probabilities[:, 1] if n_classes == 2 else probabilities


def tile_slides(features: str, n_tiles: int, tile_sampling: str) -> tuple[np.ndarray, SlideTiles]:
    """``(slide ids, SlideTiles)`` of an exhaustive tile-feature Dataset folder (or extraction folder)."""
    from giga_ssl_hf.contracts.extraction_folder import EXHAUSTIVE
    from giga_ssl_hf.contracts.tile_features import (
        load_tile_dataset,
        resolve_tile_dataset_dir,
        without_indices_mapping,
    )

    dataset = without_indices_mapping(load_tile_dataset(resolve_tile_dataset_dir(features, EXHAUSTIVE)))
    ids = np.asarray([str(s) for s in dataset.data.column("slide_id").to_pylist()])
    patch_sizes = np.asarray(dataset.data.column("patch_size_level0").to_numpy(), dtype=np.float64)
    return ids, SlideTiles(TileArrays.from_dataset(dataset), patch_sizes, n_tiles, tile_sampling)


def finetune_folder(
    model: str, features: str, labels, out: str | Path, recipe: FineTuneRecipe, overwrite: bool = False
) -> Path:
    """Fine-tune the Giga-SSL encoder ``model`` on the labelled slides (a ``pd.Series`` slide id -> class) of
    ``features`` and save the classifier (weights, config with ``id2label``, remote code) and
    ``finetune_summary.json`` to ``out`` (an earlier model there is replaced only with ``overwrite``)."""
    from giga_ssl_hf import GigaSSLModel
    from giga_ssl_hf.evaluation.export_classifier import check_classifier_target
    from giga_ssl_hf.files import staged_directory, write_json

    check_classifier_target(out, overwrite)
    encoder = GigaSSLModel.from_pretrained(model)
    ids, tiles = tile_slides(features, recipe.n_tiles or encoder.config.n_tiles, recipe.tile_sampling)
    row = {slide: i for i, slide in enumerate(ids.tolist())}
    labelled = [slide for slide in labels.index.astype(str) if slide in row]
    if not labelled:
        raise ValueError(f"none of the {len(labels)} labelled slides has tile features in {features}")
    classes = sorted(labels.astype(str).unique())
    y = np.array([classes.index(str(labels[slide])) for slide in labelled])
    torch.manual_seed(recipe.seed)
    classifier, losses = finetune_classifier(
        encoder, tiles, np.array([row[s] for s in labelled]), y, classes, recipe
    )
    logger.info("fine-tuned on %d slides; loss per epoch %s", len(labelled), [round(v, 4) for v in losses])
    with staged_directory(Path(out)) as tmp:
        classifier.save_pretrained(tmp)
        summary = {"encoder": str(model), "recipe": asdict(recipe), "training_slides": labelled}
        write_json(tmp / FINETUNE_SUMMARY_FILENAME, {**summary, "loss_per_epoch": losses})
    return Path(out)
