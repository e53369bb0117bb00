"""Contrastive losses as modules (the function itself lives with the model, which ships as Hub remote code)."""

from __future__ import annotations

import torch
from torch import nn

from ..models.gigassl.modeling_gigassl import nt_xent_loss


class NTXentLoss(nn.Module):
    """SimCLR's normalised temperature-scaled cross-entropy between two views of each slide."""

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        self.temperature = temperature

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """first, second: `(batch, dim)` projections of the two views."""
        return nt_xent_loss(first, second, self.temperature)
