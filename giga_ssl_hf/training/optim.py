"""Optimisers and learning-rate schedule of Giga-SSL pretraining."""

from __future__ import annotations

import math

import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017), as SimCLR implements it.

    Biases and normalisation parameters (1-D tensors) get neither weight decay nor trust-ratio scaling, as in
    SimCLR's large-batch recipe.

    Kept rather than ``timm.optim.Lars`` on purpose: SimCLR's trust ratio is ``eta * ||w|| / ||g + wd * w||``
    (the norm of the decayed gradient); timm's is the paper's / apex's ``eta * ||w|| / (||g|| + wd * ||w||)``,
    which is smaller whenever ``g`` is not parallel to ``w``. At initialisation with the default weight decay
    5e-4 the two differ by up to 2e-4 (hidden_dim 32) / 7e-4 (hidden_dim 512) relative per matrix, a gap of
    about ``wd * ||w|| / ||g||`` that grows as the gradients shrink (denominators sqrt(2) ||g|| against 2 ||g|| when
    ``||g|| = wd * ||w||`` and they are orthogonal). With weight decay 0, timm's with the same parameter groups and
    ``always_adapt=True`` gives identical updates (timm scales nothing at weight decay 0 without it). The
    ratio is SimCLR's on purpose: this is SimCLR on slides.
    """

    def __init__(
        self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 1e-3
    ):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if param.ndim > 1:
                    update = update.add(param, alpha=group["weight_decay"])
                    param_norm, update_norm = param.norm(), update.norm()
                    trust = torch.where(
                        (param_norm > 0) & (update_norm > 0), group["eta"] * param_norm / update_norm, 1.0
                    )
                    update = update * trust
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                param.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        from timm.optim import param_groups_weight_decay

        # No weight decay on biases and normalisation parameters (1-D tensors), as every SimCLR recipe does.
        return torch.optim.Adam(param_groups_weight_decay(model, weight_decay), lr=lr)
    if name == "lars":
        return LARS(model.parameters(), lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adam' or 'lars', got {name!r}")


def warmup_cosine(warmup_steps: int, total_steps: int):
    """LambdaLR factor: linear warm-up to 1, then cosine decay to 0 at ``total_steps``.

    Kept rather than ``transformers.get_cosine_schedule_with_warmup`` on purpose. Theirs warms up as
    ``step / warmup`` where this is ``(step + 1) / warmup``: the first optimiser step would run at a learning
    rate of 0 (with 10 warm-up steps: 0, 0.1, ..., 0.9 against 0.1, 0.2, ..., 1.0 here; from step ``warmup``
    on both are equal), and a run resumed from a checkpoint written before would see its warm-up shifted by
    one step. Past ``total_steps`` theirs rises again (0.58 at step 165 of 10 + 100) where this stays 0.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor
