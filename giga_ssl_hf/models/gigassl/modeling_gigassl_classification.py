"""A slide classifier: the Giga-SSL slide encoder and a linear head (a linear probe exported as a model)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_gigassl import GigaSSLConfig
from .modeling_gigassl import GigaSSLModel, GigaSSLPreTrainedModel


@dataclass
class GigaSSLSlideClassifierOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Cross-entropy of the logits against `labels`, when `labels` are given.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            Class logits; their softmax is the class probabilities. For a binary probe `logits[:, 1] -
            logits[:, 0]` is the log-odds of `id2label[1]`.
        slide_embedding (`torch.FloatTensor` of shape `(batch_size, hidden_dim)`):
            The L2-normalised slide embedding the head scored (before the standardisation).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    slide_embedding: torch.FloatTensor | None = None


class GigaSSLForSlideClassification(GigaSSLPreTrainedModel):
    """Slide encoder + linear head: ``logits = W ((e - embedding_mean) / embedding_scale) + b``.

    ``e`` is the slide embedding as ``giga-ssl embed`` writes it: the mean of the encoder's embeddings of the
    given views, L2-normalised (one view: that pass, normalised); or an embedding passed as `slide_embedding`.
    The buffers `embedding_mean` / `embedding_scale` hold a linear probe's standardisation (identity when the
    probe had none), so a probe fitted on those embeddings scores exactly as this model does.
    """

    def __init__(self, config: GigaSSLConfig):
        super().__init__(config)
        self.gigassl = GigaSSLModel(config)
        self.classifier = nn.Linear(config.hidden_dim, config.num_labels)
        self.register_buffer("embedding_mean", torch.zeros(config.hidden_dim))
        self.register_buffer("embedding_scale", torch.ones(config.hidden_dim))
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:  # the standardisation starts as the identity
            init.zeros_(self.embedding_mean)
            init.ones_(self.embedding_scale)

    def embed(self, tile_features, tile_coords, tile_mask=None, patch_size_level0=None) -> torch.Tensor:
        """`(batch, hidden_dim)` L2-normalised mean over the views `(batch, n_views, n_tiles, ...)` (or one
        view, `(batch, n_tiles, ...)`) of each slide's encoder embeddings."""
        if tile_features.dim() == 3:
            tile_features, tile_coords = tile_features[:, None], tile_coords[:, None]
            tile_mask = None if tile_mask is None else tile_mask[:, None]
        batch, n_views = tile_features.shape[:2]
        if patch_size_level0 is not None:
            patch_size_level0 = torch.as_tensor(patch_size_level0, device=tile_features.device).reshape(-1)
            patch_size_level0 = patch_size_level0.expand(batch).repeat_interleave(n_views)
        views = self.gigassl(
            tile_features=tile_features.flatten(0, 1),
            tile_coords=tile_coords.flatten(0, 1),
            tile_mask=None if tile_mask is None else tile_mask.flatten(0, 1),
            patch_size_level0=patch_size_level0,
        ).slide_embedding  # (batch * n_views, hidden_dim)
        return F.normalize(views.unflatten(0, (batch, n_views)).float().mean(dim=1), dim=1)

    def forward(
        self,
        tile_features: torch.Tensor | None = None,
        tile_coords: torch.Tensor | None = None,
        tile_mask: torch.Tensor | None = None,
        patch_size_level0: int | torch.Tensor | None = None,
        slide_embedding: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        return_dict: bool | None = None,
    ) -> GigaSSLSlideClassifierOutput | tuple:
        r"""
        Args:
            tile_features (`torch.Tensor` of shape `(batch_size, n_tiles, feature_dim)` or `(batch_size, n_views, n_tiles, feature_dim)`, *optional*):
                Tile features of one view (e.g. all the slide's tiles) or of several views of each slide; the
                slide embedding is the L2-normalised mean of the views' embeddings, as `giga-ssl embed` computes it.
            tile_coords (`torch.Tensor` with the leading shape of `tile_features` and a last dimension of 2, *optional*):
                Level-0 pixel (x, y) of each tile.
            tile_mask (`torch.BoolTensor` with the leading shape of `tile_features`, *optional*):
                `False` marks padding.
            patch_size_level0 (`int` or `torch.Tensor` of shape `(batch_size,)`, *optional*):
                Tile side in level-0 pixels, per slide.
            slide_embedding (`torch.Tensor` of shape `(batch_size, hidden_dim)`, *optional*):
                Slide embeddings already computed (e.g. read from `giga-ssl embed`'s output): the head scores
                them directly, instead of `tile_features`.
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Class indices (`config.label2id`); the cross-entropy `loss` is returned with them.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (slide_embedding is None) == (tile_features is None):
            raise ValueError("give either tile_features (with tile_coords) or slide_embedding")
        if slide_embedding is None:
            if tile_coords is None:
                raise ValueError("tile_features need their tile_coords")
            slide_embedding = self.embed(tile_features, tile_coords, tile_mask, patch_size_level0)
        elif slide_embedding.shape[-1] != self.config.hidden_dim:
            raise ValueError(
                f"slide_embedding must be (batch, {self.config.hidden_dim}), got {tuple(slide_embedding.shape)}"
            )
        standardized = (slide_embedding.to(self.embedding_mean) - self.embedding_mean) / self.embedding_scale
        logits = self.classifier(standardized.to(self.classifier.weight.dtype))
        loss = F.cross_entropy(logits.float(), labels.to(logits.device)) if labels is not None else None
        if not return_dict:
            return tuple(value for value in (loss, logits, slide_embedding) if value is not None)
        return GigaSSLSlideClassifierOutput(loss=loss, logits=logits, slide_embedding=slide_embedding)


# Loaded through AutoModelForSequenceClassification, the closest Auto class: a sequence (the slide's tiles) in,
# one label out. Saving writes this auto_map entry and copies the code (trust_remote_code=True).
GigaSSLForSlideClassification.register_for_auto_class("AutoModelForSequenceClassification")
