"""engines.serving: the refusals for networks that are not an engine's."""

from __future__ import annotations

import pytest
from torch import nn

from engines.models.layers import ArchitectureError
from engines.serving import example_inputs, head_weights, serving_graph


class _Convolutional(nn.Module):
    """A network with a convolution but none of the engines' interfaces."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 2)


def test_a_network_without_a_serving_graph_is_refused() -> None:
    with pytest.raises(ArchitectureError, match=r"^no serving graph for _Convolutional$"):
        serving_graph(_Convolutional())


def test_a_network_without_a_classifier_head_is_refused() -> None:
    with pytest.raises(ArchitectureError, match=r"^_Convolutional has no linear classifier head$"):
        head_weights(_Convolutional())


def test_a_network_without_a_convolution_is_refused() -> None:
    assert example_inputs(_Convolutional(), 8, batch=2)[0].shape == (2, 1, 8, 8)
    with pytest.raises(ArchitectureError, match=r"^Sequential has no convolution$"):
        example_inputs(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), 8)
