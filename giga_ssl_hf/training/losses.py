"""Contrastive losses as modules (the function itself lives with the model, which ships as Hub remote code)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..models.gigassl.modeling_gigassl import nt_xent_loss


class _GatherAcrossProcesses(torch.autograd.Function):
    """All processes' rows, concatenated in rank order; the backward hands each process the summed gradient
    of its own rows (every process computes the same global loss, and DDP then averages the parameter
    gradients, which gives exactly the global loss's gradient). Batches must be the same size on every rank."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor) -> torch.Tensor:
        gathered = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, rows.contiguous())
        ctx.own = slice(dist.get_rank() * rows.shape[0], (dist.get_rank() + 1) * rows.shape[0])
        return torch.cat(gathered)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.own]


class NTXentLoss(nn.Module):
    """SimCLR's normalised temperature-scaled cross-entropy between two views of each slide.

    With ``gather_across_processes`` (and a torch.distributed group running), every process's projections join
    the negatives, so the contrastive batch is the global batch, as the learning-rate scaling assumes. The
    gather is differentiable: each process backpropagates into its own slides' projections.
    """

    def __init__(self, temperature: float, gather_across_processes: bool = False):
        super().__init__()
        self.temperature = temperature
        self.gather_across_processes = gather_across_processes

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """first, second: `(batch, dim)` projections of the two views."""
        if self.gather_across_processes and dist.is_available() and dist.is_initialized():
            first = _GatherAcrossProcesses.apply(first)  # (world * batch, dim)
            second = _GatherAcrossProcesses.apply(second)
        return nt_xent_loss(first, second, self.temperature)
