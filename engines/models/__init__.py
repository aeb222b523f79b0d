"""Architectures written here (no torchvision/timm) and the registry that names them.

Importing this package registers every model: ``create(name, **kwargs)``,
``available()``.
"""

from engines.models import (
    densenet,
    efficientnet,
    hip_multimodal,
    hip_screen,
    hipnet,
    inception,
    osteoporosis,
    resnet,
    resnet3d,
    vgg,
)
from engines.models.registry import available, create, register

__all__ = [
    "available",
    "create",
    "densenet",
    "efficientnet",
    "hip_multimodal",
    "hip_screen",
    "hipnet",
    "inception",
    "osteoporosis",
    "register",
    "resnet",
    "resnet3d",
    "vgg",
]
