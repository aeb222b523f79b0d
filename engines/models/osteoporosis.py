"""The osteoporosis engine's network (seed 003): three backbones' pooled features, the fitted
PCA + component selection as fixed linear maps, joined with the clinical variables in a
fully connected network.

The backbones (VGG19, InceptionV3, ResNet-50) are feature extractors: the paper uses them
pre-trained and frozen. No ImageNet weights can be fetched here, so the demo uses them
frozen at their random initialisation (engines.training.osteoporosis says why; it can also
train them briefly on phantoms); a site loads its own weights into ``backbones``. Once
:meth:`OsteoporosisNet.set_reduction` has stored a fitted
:class:`engines.osteoporosis.FeatureReduction`, ``forward`` is the whole serving graph:
image, clinical values and their missing mask in, logits out (ONNX-exportable).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from engines.models.base import Classifier, create_classifier
from engines.models.layers import ArchitectureError
from engines.models.registry import register
from engines.models.vgg import VGG
from engines.osteoporosis.head import FusionHead
from engines.osteoporosis.reduction import FeatureReduction

OSTEOPOROSIS_CLASSES: tuple[str, ...] = ("no_osteoporosis", "osteoporosis")
BACKBONES: tuple[str, ...] = ("inception_v3", "resnet50", "vgg19")


class OsteoporosisNet(nn.Module):
    def __init__(
        self,
        clinical_width: int,
        components: int,
        backbones: tuple[str, ...] = BACKBONES,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if components < 1 or clinical_width < 0:
            raise ArchitectureError(
                f"components and clinical_width must be >= 1 and >= 0, got {components} "
                f"and {clinical_width}"
            )
        self.backbone_names = backbones
        self.backbones = nn.ModuleDict(
            {name: create_classifier(name, num_classes=2, in_channels=in_channels)
             for name in backbones}
        )  # fmt: skip
        for module in self.backbones.values():
            if isinstance(module, VGG):
                # Only the pooled convolutional features are used: VGG19's fc6/fc7 would be
                # 120 M unused parameters (480 MB in every checkpoint).
                module.drop_fully_connected()
        self.components = components
        widths = [self._backbone(name).num_features for name in backbones]
        for name, width in zip(backbones, widths, strict=True):
            # Filled by set_reduction from the fitted PCA (mean, components per backbone).
            self.register_buffer(f"mean_{name}", torch.zeros(width))
            self.register_buffer(f"basis_{name}", torch.zeros(0, width))
        self.register_buffer("selected", torch.zeros(components, dtype=torch.long))
        self.head = FusionHead(components, clinical_width)

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self,
        state_dict,
        prefix,
        local_metadata,
        strict,
        missing_keys,
        unexpected_keys,
        error_msgs,
    ) -> None:
        """Take the fitted reduction's shapes from the checkpoint: the PCA basis and the
        selection are sized at fit time, so a fresh network loads a fitted one's weights."""
        for name in self.backbone_names:
            key = f"{prefix}basis_{name}"
            if key in state_dict:
                setattr(self, f"basis_{name}", torch.zeros_like(state_dict[key]))
        if f"{prefix}selected" in state_dict:
            self.selected = torch.zeros_like(state_dict[f"{prefix}selected"])
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
            error_msgs,
        )  # fmt: skip

    def _backbone(self, name: str) -> Classifier:
        module = self.backbones[name]
        if not isinstance(module, Classifier):
            raise ArchitectureError(f"backbone {name!r} has no feature-map interface")
        return module

    def pooled_features(self, image: Tensor) -> dict[str, Tensor]:
        """Each backbone's globally averaged last feature map, (N, C_b)."""
        return {
            name: self._backbone(name).forward_features(image).mean(dim=(2, 3))
            for name in self.backbone_names
        }

    def set_reduction(self, reduction: FeatureReduction) -> None:
        if reduction.backbones != self.backbone_names:
            raise ArchitectureError(
                f"reduction: fitted for backbones {list(reduction.backbones)}, this network has "
                f"{list(self.backbone_names)}"
            )
        if reduction.width != self.components:
            raise ArchitectureError(
                f"reduction: selects {reduction.width} components, the head expects "
                f"{self.components}"
            )
        for name, mean, basis in zip(reduction.backbones, reduction.means, reduction.components,
                                     strict=True):  # fmt: skip
            setattr(self, f"mean_{name}", torch.from_numpy(np.asarray(mean, np.float32)))
            setattr(self, f"basis_{name}", torch.from_numpy(np.asarray(basis, np.float32)))
        self.selected = torch.from_numpy(reduction.selected.astype(np.int64))

    def reduction(self) -> FeatureReduction:
        """The fitted reduction as the network holds it (its clusters are not kept)."""
        if getattr(self, f"basis_{self.backbone_names[0]}").shape[0] == 0:
            raise ArchitectureError("reduction: not set (fit it and call set_reduction)")
        return FeatureReduction(
            backbones=self.backbone_names,
            means=tuple(getattr(self, f"mean_{b}").numpy() for b in self.backbone_names),
            components=tuple(getattr(self, f"basis_{b}").numpy() for b in self.backbone_names),
            selected=self.selected.numpy().astype(np.int64),
        )

    def image_components(self, image: Tensor) -> Tensor:
        """The selected PCA components of the image, exactly as the fitted reduction gives."""
        parts = []
        for name, pooled in self.pooled_features(image).items():
            mean: Tensor = getattr(self, f"mean_{name}")
            basis: Tensor = getattr(self, f"basis_{name}")
            if basis.shape[0] == 0:
                raise ArchitectureError("reduction: not set (fit it and call set_reduction)")
            parts.append((pooled - mean) @ basis.T)
        return torch.cat(parts, dim=1).index_select(1, self.selected)

    def forward(self, image: Tensor, clinical: Tensor, missing: Tensor) -> Tensor:
        logits: Tensor = self.head(self.image_components(image), clinical, missing)
        return logits


@register("osteoporosis")
def osteoporosis(
    clinical_width: int = 4,
    components: int = 16,
    backbones: tuple[str, ...] = BACKBONES,
    in_channels: int = 1,
) -> OsteoporosisNet:
    return OsteoporosisNet(clinical_width, components, backbones, in_channels)
