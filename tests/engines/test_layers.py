from __future__ import annotations

import pytest
import torch

from engines.models.layers import (
    CBAM,
    ArchitectureError,
    ChannelAttention,
    GeM,
    SpatialAttention,
    channel_max_by_folding,
    channel_mean_by_conv,
)


def test_gem_is_the_generalised_mean_with_learnable_p() -> None:
    gem = GeM()
    assert isinstance(gem.p, torch.nn.Parameter)
    assert float(gem.p.detach()) == 3.0
    x = torch.rand(2, 4, 5, 6) + 0.1
    expected = (x**3).mean(dim=(2, 3)) ** (1 / 3)
    assert torch.allclose(gem(x), expected, atol=1e-6)
    gem(x).sum().backward()
    assert gem.p.grad is not None and float(gem.p.grad.abs()) > 0


def test_gem_with_p_one_is_average_pooling() -> None:
    x = torch.rand(2, 3, 4, 4)
    assert torch.allclose(GeM(p=1.0)(x), x.mean(dim=(2, 3)), atol=1e-6)
    with pytest.raises(ArchitectureError, match=r"GeM exponent p must be positive, got 0"):
        GeM(p=0)


def test_cbam_gates_are_bounded_and_shapes_kept() -> None:
    x = torch.randn(2, 32, 8, 8)
    channel, spatial = ChannelAttention(32, 16), SpatialAttention(7)
    c, s = channel.gate(x), spatial.gate(x)
    assert c.shape == (2, 32, 1, 1) and s.shape == (2, 1, 8, 8)
    assert bool(((c > 0) & (c < 1)).all()) and bool(((s > 0) & (s < 1)).all())
    assert CBAM(32)(x).shape == x.shape
    assert channel.mlp[0].out_features == 2  # reduction 16
    assert spatial.conv.kernel_size == (7, 7)


def test_gem_stays_finite_for_silent_channels_and_a_large_exponent() -> None:
    pool = GeM(p=8.0)  # eps**8 underflows float32
    x = torch.zeros(2, 4, 3, 3, requires_grad=True)
    out = pool(x)
    torch.autograd.backward(out.sum())
    assert torch.isfinite(out).all()
    assert pool.p.grad is not None and torch.isfinite(pool.p.grad).all()


@pytest.mark.parametrize("channels", [1, 2, 6, 7, 12, 256])
def test_export_forms_of_the_channel_reductions_equal_the_plain_ones(channels: int) -> None:
    x = torch.randn(3, channels, 5, 4)
    # 256 folds by 4 down to 1; 12 -> 3 and 6 -> 3 end with a direct reduction; 7 needs only it.
    assert torch.equal(channel_max_by_folding(x), x.amax(dim=1, keepdim=True))
    mean = channel_mean_by_conv(x)
    assert mean.shape == (3, 1, 5, 4)
    assert torch.allclose(mean, x.mean(dim=1, keepdim=True), atol=1e-6)


def test_spatial_gate_takes_the_export_forms_only_while_exporting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    gate = SpatialAttention(7).eval()
    x = torch.randn(2, 9, 6, 6)
    with torch.no_grad():
        plain = gate.gate(x)
        monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
        exported_form = gate.gate(x)
    assert torch.allclose(exported_form, plain, atol=1e-6)
