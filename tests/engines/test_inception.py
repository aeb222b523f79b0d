"""Inception-v3: published parameter counts, reference layout, small inputs, ONNX parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from engines.export import export_onnx
from engines.models import available, create
from engines.models.base import create_classifier
from engines.models.inception import BasicConv2d, Inception3, InceptionAux, inception_v3
from engines.models.layers import ArchitectureError, AvgPool, GeM

# torchvision's published count for inception_v3 (1000 classes, 3 channels, with the
# auxiliary classifier); without it, 3,326,696 fewer (the AuxLogits head, counted here).
WITH_AUX_PARAMS = 27_161_264
WITHOUT_AUX_PARAMS = 23_834_568


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def small() -> Inception3:
    torch.manual_seed(0)
    return inception_v3(num_classes=4, in_channels=1).eval()


def test_parameter_counts_match_the_reference() -> None:
    with torch.device("meta"):
        with_aux = inception_v3(aux_logits=True)
        without = inception_v3()
    assert count(with_aux) == WITH_AUX_PARAMS
    assert count(without) == WITHOUT_AUX_PARAMS
    assert with_aux.AuxLogits is not None and without.AuxLogits is None
    assert count(with_aux.AuxLogits) == WITH_AUX_PARAMS - WITHOUT_AUX_PARAMS


def test_reference_layout_and_names() -> None:
    with torch.device("meta"):
        model = inception_v3(aux_logits=True)
    shapes = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    # torchvision's state-dict names and shapes, so its checkpoints load as they are.
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Conv2d_4a_3x3.bn.running_var"] == (192,)
    assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert shapes["Mixed_6e.branch7x7dbl_5.conv.weight"] == (192, 192, 1, 7)
    assert shapes["Mixed_7a.branch3x3_2.conv.weight"] == (320, 192, 3, 3)
    assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    assert shapes["AuxLogits.conv1.conv.weight"] == (768, 128, 5, 5)
    assert shapes["AuxLogits.fc.weight"] == (1000, 768)
    assert shapes["fc.weight"] == (1000, 2048)
    blocks = [m for m in model.modules() if isinstance(m, BasicConv2d)]
    assert len(blocks) == 96  # 94 in the trunk, 2 in the auxiliary head
    assert all(b.conv.bias is None and b.bn.eps == 0.001 for b in blocks)


@pytest.mark.parametrize("size", [96, 75])
def test_small_single_channel_inputs(small: Inception3, size: int) -> None:
    x = torch.rand(2, 1, size, size)
    with torch.no_grad():
        logits, features = small.forward_with_features(x)
        # forward and forward_with_aux give the same logits (no auxiliary head by default).
        again, aux = (small(x), None) if size == 96 else small.forward_with_aux(x)
    assert logits.shape == (2, 4)
    assert features.shape == (2, 2048, 1, 1)  # 1x1 for any input from 75 to 106 pixels
    assert torch.allclose(again, logits) and aux is None
    assert small.num_features == 2048


def test_head_is_pool_dropout_linear(small: Inception3) -> None:
    assert isinstance(small.pool, AvgPool)
    assert isinstance(small.dropout, nn.Dropout) and small.dropout.p == 0.5
    assert (small.fc.in_features, small.fc.out_features) == (2048, 4)
    features = torch.rand(2, 2048, 3, 3)
    assert torch.allclose(small.fc(small.pool(features)), small.fc(features.mean(dim=(2, 3))))


@pytest.mark.parametrize(("size", "grid"), [(299, 8), (128, 2), (107, 2)])
def test_feature_map_grid(size: int, grid: int) -> None:
    with torch.device("meta"):  # shapes only
        model = inception_v3(num_classes=3, aux_logits=size >= 299).eval()
        logits, aux = model.forward_with_aux(torch.empty(1, 3, size, size))
        _, features = model.forward_with_features(torch.empty(1, 3, size, size))
    assert logits.shape == (1, 3)
    assert features.shape == (1, 2048, grid, grid)
    if size >= 299:
        assert isinstance(model.AuxLogits, InceptionAux)
        assert aux is not None and aux.shape == (1, 3)


def test_registered_with_gem_and_checked_arguments() -> None:
    assert "inception_v3" in available()
    with torch.device("meta"):
        model = create("inception_v3", num_classes=2, in_channels=1, pool="gem")
        assert isinstance(model, Inception3) and isinstance(model.pool, GeM)
        assert create_classifier("inception_v3", num_classes=2).num_features == 2048
    with pytest.raises(ArchitectureError, match=r"pool: expected 'avg' or 'gem', got 'max'"):
        create("inception_v3", pool="max")
    with pytest.raises(ArchitectureError, match=r"got 0 and 3"):
        create("inception_v3", num_classes=0)
    with pytest.raises(ArchitectureError, match=r"dropout: expected a probability"):
        create("inception_v3", dropout=-0.1)


def test_onnxruntime_matches_torch(small: Inception3, tmp_path: Path) -> None:
    exported = export_onnx(small, tmp_path / "inception_v3.onnx", 75)
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "features"]
    batch = torch.rand(3, 1, 75, 75)  # another batch size than the export's example
    logits, features = session.run(None, {"image": batch.numpy()})
    with torch.no_grad():
        expected_logits, expected_features = small.forward_with_features(batch)
    # With the reference initialisation (std 0.1 everywhere) and BatchNorm still at its
    # initial statistics, activations grow through the 94 layers (logits ~1e6 before any
    # training), so the float32 rounding is compared relative to each output's scale.
    for actual, expected in ((logits, expected_logits), (features, expected_features)):
        scale = float(expected.abs().max())
        np.testing.assert_allclose(actual, expected.numpy(), rtol=1e-4, atol=1e-4 * scale)
