import math

import pytest
import torch

from giga_ssl_hf.training.losses import NTXentLoss
from giga_ssl_hf.training.optim import LARS, build_optimizer, warmup_cosine


def test_warmup_then_cosine_to_zero():
    factor = warmup_cosine(warmup_steps=10, total_steps=110)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.5)
    assert factor(110) == pytest.approx(0.0, abs=1e-12) and factor(500) == pytest.approx(0.0, abs=1e-12)
    values = [factor(step) for step in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_lars_scales_weight_updates_by_the_trust_ratio_and_leaves_biases_plain():
    weight = torch.nn.Parameter(torch.full((4, 4), 2.0))
    bias = torch.nn.Parameter(torch.zeros(4))
    optimizer = LARS([weight, bias], lr=1.0, momentum=0.0, weight_decay=0.0, eta=0.01)
    weight.grad = torch.full((4, 4), 100.0)
    bias.grad = torch.full((4,), 0.5)
    optimizer.step()
    # ||w|| = 8, ||g|| = 400: the update is eta * 8 / 400 * g = 0.02 per entry, whatever the gradient's scale.
    torch.testing.assert_close(weight.detach(), torch.full((4, 4), 2.0 - 0.01 * 8 / 400 * 100))
    torch.testing.assert_close(bias.detach(), torch.full((4,), -0.5))


def test_lars_trains_a_linear_model():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = LARS(model.parameters(), lr=0.5, eta=0.01)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    losses = []
    for _ in range(200):
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 1e-3 * losses[0]
    assert isinstance(build_optimizer(model, "lars", lr=0.1, weight_decay=5e-4), LARS)
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer(model, "sgd", lr=1.0, weight_decay=0.0)


def _model_with_norms():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2)
    )


def test_adam_leaves_biases_and_normalisation_parameters_without_weight_decay():
    model = _model_with_norms()
    optimizer = build_optimizer(model, "adam", lr=0.1, weight_decay=0.5)
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert [decay[id(p)] for p in model.parameters()] == [
        0.5 if p.ndim > 1 else 0.0 for p in model.parameters()
    ]
    before = [p.detach().clone() for p in model.parameters()]
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()  # zero gradients: only weight decay moves a parameter
    for old, new in zip(before, model.parameters()):
        assert torch.equal(old, new) == (new.ndim == 1), new.shape


def test_nt_xent_module_prefers_aligned_views():
    loss = NTXentLoss(temperature=0.1)
    z = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    aligned, shuffled = loss(z, z), loss(z, z[torch.randperm(8)])
    assert aligned < shuffled
    assert aligned >= 0 and math.isfinite(shuffled.item())
