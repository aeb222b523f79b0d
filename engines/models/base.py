"""What every backbone here offers: logits, and the last feature map for Grad-CAM.

Subclasses build ``forward_features`` (image to last feature map) and set
``num_features``, ``pool``, ``dropout`` and ``fc``; the head is always
pool -> dropout -> linear, which is what single-pass Grad-CAM relies on.
"""

from __future__ import annotations

import abc

from torch import Tensor, nn
from torch.nn import functional

from engines.models.layers import ArchitectureError, make_pool
from engines.models.registry import create


class Classifier(nn.Module, abc.ABC):
    num_features: int

    def __init__(self, num_classes: int, in_channels: int, num_features: int, pool: str) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1:
            raise ArchitectureError(
                f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}"
            )
        self.num_features = num_features
        self.pool = make_pool(pool)
        self.dropout: nn.Module = nn.Identity()
        self.fc = nn.Linear(num_features, num_classes)

    @abc.abstractmethod
    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map, (N, num_features, H/32, W/32)."""

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.forward_features(x)
        logits: Tensor = self.fc(self.dropout(self.pool(features)))
        return logits, features

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_features(x)[0]

    def class_maps(self, features: Tensor) -> Tensor:
        """The linear head applied to every cell of ``features``: (N, classes, H/32, W/32)."""
        weight = self.fc.weight[:, :, None, None]
        return functional.conv2d(features, weight, self.fc.bias)


def check_dropout(name: str, value: float) -> float:
    """A dropout probability must be in [0, 1)."""
    if not 0.0 <= value < 1.0:
        raise ArchitectureError(f"{name}: expected a probability in [0, 1), got {value}")
    return value


def create_classifier(name: str, **kwargs: object) -> Classifier:
    """``create`` for callers that need the feature-map interface."""
    model = create(name, **kwargs)
    if not isinstance(model, Classifier):
        raise ArchitectureError(f"model {name!r} has no feature-map interface")
    return model
