"""VGG19 (configuration E): published parameter counts, layout, shapes and the head."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.nn import functional

from engines.models import available, create
from engines.models.base import create_classifier
from engines.models.layers import ArchitectureError
from engines.models.vgg import VGG, AdaptiveAvgPool, vgg19

# torchvision's published counts for vgg19 and vgg19_bn (1000 classes, 3 channels); Keras
# reports the same 143,667,240 for its VGG19.
VGG19_PARAMS = 143_667_240
VGG19_BN_PARAMS = 143_678_248


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def small() -> VGG:
    torch.manual_seed(0)
    return vgg19(num_classes=4, in_channels=1).eval()


@pytest.mark.parametrize(
    ("batch_norm", "expected"), [(False, VGG19_PARAMS), (True, VGG19_BN_PARAMS)]
)
def test_parameter_counts_match_the_reference(batch_norm: bool, expected: int) -> None:
    with torch.device("meta"):  # counted without allocating 575 MB
        model = vgg19(batch_norm=batch_norm)
    assert count(model) == expected


def test_configuration_e(small: VGG) -> None:
    convs = [m for m in small.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 16
    assert [c.out_channels for c in convs] == [64] * 2 + [128] * 2 + [256] * 4 + [512] * 8
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert all(c.bias is not None for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in small.features) == 5
    assert not any(isinstance(m, nn.BatchNorm2d) for m in small.modules())
    linears = [m for m in small.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 3
    hidden = [m for m in small.classifier if isinstance(m, nn.Linear)]
    assert [(f.in_features, f.out_features) for f in [*hidden, small.fc]] == [
        (512 * 7 * 7, 4096),
        (4096, 4096),
        (4096, 4),
    ]
    assert [d.p for d in small.modules() if isinstance(d, nn.Dropout)] == [0.5, 0.5]


def test_batch_norm_follows_every_convolution() -> None:
    with torch.device("meta"):
        model = vgg19(num_classes=2, batch_norm=True)
    layers = list(model.features)
    for index, layer in enumerate(layers):
        if isinstance(layer, nn.Conv2d):
            bn = layers[index + 1]
            assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == layer.out_channels
            assert isinstance(layers[index + 2], nn.ReLU)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in layers) == 16


def test_small_single_channel_input(small: VGG) -> None:
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        logits, features = small.forward_with_features(x)
        plain = small(x)
        alone = small.forward_features(x)
    assert logits.shape == (2, 4)
    assert features.shape == (2, 512, 2, 2)  # H/32, after the last block's max-pool
    assert small.num_features == 512
    assert torch.allclose(plain, logits)
    assert torch.allclose(alone, features)
    assert float(features.min()) >= 0.0


def test_standard_input_gives_a_7x7_map() -> None:
    with torch.device("meta"):  # shapes only
        model = vgg19(num_classes=3).eval()
        logits, features = model.forward_with_features(torch.empty(1, 3, 224, 224))
    assert logits.shape == (1, 3)
    assert features.shape == (1, 512, 7, 7)


@pytest.mark.parametrize("size", [(2, 2), (1, 3), (7, 7), (14, 9), (5, 16)])
def test_pooling_is_adaptive_average_pooling(size: tuple[int, int]) -> None:
    x = torch.rand(2, 3, *size)
    expected = functional.adaptive_avg_pool2d(x, 7)
    assert torch.allclose(AdaptiveAvgPool(7)(x), expected, atol=1e-6)


def test_pooling_exports_to_onnx_from_a_smaller_map(tmp_path: Path) -> None:
    # torch's exporter refuses nn.AdaptiveAvgPool2d(7) on a 2x2 map (a 64-pixel input).
    path = tmp_path / "pool.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter
        torch.onnx.export(
            AdaptiveAvgPool(7),
            (torch.rand(1, 8, 2, 3),),
            str(path),
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    x = torch.rand(3, 8, 2, 3)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x.numpy()})
    np.testing.assert_allclose(y, functional.adaptive_avg_pool2d(x, 7).numpy(), atol=1e-6)


def test_registered_and_a_classifier() -> None:
    assert "vgg19" in available()
    with torch.device("meta"):
        model = create("vgg19", num_classes=3, in_channels=1, batch_norm=True)
        assert isinstance(model, VGG)
        assert create_classifier("vgg19", num_classes=3).num_features == 512


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 0}, r"num_classes and in_channels must be >= 1, got 0 and 3"),
        ({"in_channels": 0}, r"num_classes and in_channels must be >= 1, got 1000 and 0"),
        ({"dropout": 1.0}, r"dropout: expected a probability in \[0, 1\), got 1.0"),
    ],
)
def test_invalid_arguments_raise_architecture_error(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ArchitectureError, match=message), torch.device("meta"):
        create("vgg19", **kwargs)
