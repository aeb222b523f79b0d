from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.gradcam import GradCamError, channel_weights, grad_cam, normalise
from engines.models import create


def autograd_cam(model: torch.nn.Module, x: torch.Tensor, class_index: int) -> np.ndarray:
    logits, features = model.forward_with_features(x)
    features.retain_grad()
    logits[:, class_index].sum().backward()
    assert features.grad is not None
    alpha = features.grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((alpha * features).sum(dim=1))
    return cam.detach().numpy()


@pytest.mark.parametrize("pool", ["avg", "gem"])
def test_single_pass_equals_autograd(pool: str) -> None:
    torch.manual_seed(0)
    model = create("resnet50", num_classes=4, in_channels=1, pool=pool).eval()
    x = torch.rand(2, 1, 96, 96)
    expected = autograd_cam(model, x, class_index=2)
    with torch.no_grad():
        _, features = model.forward_with_features(x)
    p = float(model.pool.p.detach()) if pool == "gem" else None
    cam = grad_cam(features.numpy().astype(np.float64), model.fc.weight.detach().numpy(), 2, p)
    assert cam.shape == (2, 3, 3)
    np.testing.assert_allclose(cam, expected, rtol=1e-4, atol=1e-6)


def test_normalise_stretches_each_map_from_its_lowest_to_its_highest_value() -> None:
    # A Hip-Net map of sigmoid probabilities: its lowest cell was a third of its peak, so
    # divided by the peak every cell of the hip stayed over the overlay's 20 % colour floor.
    sigmoid = np.array([[[0.35, 0.55], [1.0, 0.68]]], dtype=np.float32)
    np.testing.assert_allclose(
        normalise(sigmoid), [[[0.0, 0.2 / 0.65], [1.0, 0.33 / 0.65]]], rtol=1e-6
    )
    assert normalise(sigmoid).dtype == np.float32
    flat = np.full((1, 2, 2), 0.7)
    np.testing.assert_array_equal(normalise(flat), np.ones((1, 2, 2)))  # looked everywhere alike


def test_normalise_and_errors() -> None:
    cam = np.array([[[0.0, 2.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    out = normalise(cam)
    assert out.max() == 1.0 and out[1].max() == 0.0
    features = np.ones((1, 3, 2, 2))
    assert channel_weights(np.ones((4, 3, 2, 2)), np.ones((2, 3)), 1, None).shape == (4, 3)
    with pytest.raises(GradCamError, match=r"features: expected \(N, C, H, W\)"):
        channel_weights(np.ones((3, 2, 2)), np.ones((2, 3)), 0, None)
    with pytest.raises(GradCamError, match=r"fc_weight: expected \(K, 3\)"):
        channel_weights(features, np.ones((2, 4)), 0, None)
    with pytest.raises(GradCamError, match=r"class_index: expected 0-1, got 2"):
        channel_weights(features, np.ones((2, 3)), 2, None)
