"""The screening engine's network (seed 001): ResNet-50 + CBAM + GeM, eight classes per hip.

The input is one hip region of an AP radiograph, mirrored to one canonical
side by preprocessing (the seed counts hips, not images). ``forward`` gives
logits; ``forward_with_features`` also gives the last feature map, which with
the linear head and GeM's exponent is all single-pass Grad-CAM needs.
"""

from __future__ import annotations

from torch import Tensor, nn

from engines.models.base import create_classifier
from engines.models.registry import register

SCREEN_CLASSES: tuple[str, ...] = (
    "normal",
    "osteoarthritis",
    "osteonecrosis_of_femoral_head",
    "femoral_neck_fracture",
    "intertrochanteric_fracture",
    "developmental_dysplasia_of_hip",
    "total_hip_arthroplasty",
    "metallic_internal_fixation",
)


class HipScreen(nn.Module):
    """ResNet-50 with CBAM in every bottleneck and GeM pooling (p initialised to 3)."""

    def __init__(
        self,
        num_classes: int = len(SCREEN_CLASSES),
        in_channels: int = 1,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = create_classifier(
            "resnet50_cbam",
            num_classes=num_classes,
            in_channels=in_channels,
            pool="gem",
            zero_init_residual=zero_init_residual,
        )

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.backbone(x)
        return logits

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.backbone.forward_with_features(x)

    def class_maps(self, features: Tensor) -> Tensor:
        """Per-cell class logits of the last feature map (what training guides to the lesion;
        the heat map, GeM Grad-CAM, weighs its channels further: engines.gradcam)."""
        return self.backbone.class_maps(features)


@register("hip_screen")
def hip_screen(
    num_classes: int = len(SCREEN_CLASSES), in_channels: int = 1, zero_init_residual: bool = False
) -> HipScreen:
    """``zero_init_residual`` starts each residual branch at zero (Goyal et al. 2017), which
    speeds up training from scratch; it changes the initialisation only."""
    return HipScreen(num_classes, in_channels, zero_init_residual)
