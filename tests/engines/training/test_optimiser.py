from __future__ import annotations

import copy

import torch
from torch import nn

from engines.training.optimiser import adamw


def test_adamw_is_the_fused_kernel_and_steps_like_the_reference() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    reference_model = copy.deepcopy(model)
    fused = adamw(model.parameters(), 1e-2, 1e-4)
    reference = torch.optim.AdamW(reference_model.parameters(), lr=1e-2, weight_decay=1e-4)
    assert fused.defaults["fused"] is True
    assert (fused.defaults["lr"], fused.defaults["weight_decay"]) == (1e-2, 1e-4)
    x = torch.randn(5, 8)
    for _ in range(5):
        for net, optimiser in ((model, fused), (reference_model, reference)):
            optimiser.zero_grad()
            net(x).square().sum().backward()
            optimiser.step()
    for p, q in zip(model.parameters(), reference_model.parameters(), strict=True):
        assert not torch.equal(p, torch.zeros_like(p))
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
