from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from engines.training.optimiser import adamw, one_cycle


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


@pytest.mark.parametrize(
    ("steps", "pct_start"), [(10, 0.1), (5, 0.2), (1, 1.0), (2, 0.5), (30, 0.2), (7, 0.1)]
)
def test_one_cycle_runs_whatever_the_step_count(steps: int, pct_start: float) -> None:
    # torch's OneCycleLR divided by zero for a warm-up of exactly one step (10 fusion steps
    # at 0.1, 5 backbone steps at 0.2), counts the option checks accept.
    optimiser = adamw(nn.Linear(2, 2).parameters(), 1e-2, 0.0)
    schedule = one_cycle(optimiser, 1e-2, steps, pct_start)
    rates = []
    for _ in range(steps):
        optimiser.step()
        rates.append(optimiser.param_groups[0]["lr"])
        if len(rates) < steps:  # OneCycleLR counts total_steps including the first
            schedule.step()
    assert all(0.0 < r <= 1e-2 + 1e-12 for r in rates)
    if steps * pct_start != 1.0:  # unchanged elsewhere
        reference = torch.optim.lr_scheduler.OneCycleLR(
            adamw(nn.Linear(2, 2).parameters(), 1e-2, 0.0), 1e-2, total_steps=steps,
            pct_start=pct_start,
        )  # fmt: skip
        assert schedule.total_steps == reference.total_steps
        assert [p["end_step"] for p in schedule._schedule_phases] == [
            p["end_step"] for p in reference._schedule_phases
        ]
