"""Hip-Net (seed 002): a dual-view ensemble for the causes of hip prosthesis failure.

Each of the four members (ResNet-50, ResNet-50 + CBAM, DenseNet-121, EfficientNet-B0:
three families) has one backbone per view (AP and lateral of the same hip). Its
interpretive head is a 1x1 convolution giving a class-logit map per view;
averaging a map over space is that view's class logits (the class-activation
identity, so the maps explain exactly what that view's classifier sees). A
member fuses its two views with learned per-class weights. The ensemble averages
the members' softmax probabilities and their AP probability maps (resized to the
first member's grid); the PJI risk score is the ensemble's PJI probability on a
0-100 scale.

A missing lateral view is explicit: ``lateral_present`` is 0 for that hip, the
lateral branch still runs on whatever tensor is passed (zeros) so the graph
stays static for ONNX/TensorRT, and the fused logits fall back to the AP view
alone (the lateral weight is masked and the AP weight renormalised).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional

from engines.models.base import create_classifier
from engines.models.registry import register

FAILURE_CLASSES: tuple[str, ...] = (
    "periprosthetic_joint_infection",
    "aseptic_loosening",
    "dislocation",
    "periprosthetic_fracture",
    "polyethylene_wear",
)
PJI_INDEX = 0
MEMBER_BACKBONES: tuple[str, ...] = ("resnet50", "resnet50_cbam", "densenet121", "efficientnet_b0")


class DualViewMember(nn.Module):
    """Two backbones of one family (AP, lateral), an interpretive head each, fused logits."""

    def __init__(self, backbone: str, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.ap = create_classifier(backbone, num_classes=num_classes, in_channels=in_channels)
        self.lateral = create_classifier(backbone, num_classes=num_classes, in_channels=in_channels)
        channels = self.ap.num_features
        self.ap_head = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.lateral_head = nn.Conv2d(channels, num_classes, kernel_size=1)
        # Per-class view weights before the softmax over the two views: equal at start.
        self.view_logits = nn.Parameter(torch.zeros(2, num_classes))

    def forward(
        self, ap: Tensor, lateral: Tensor, lateral_present: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Return (fused logits (N, K), AP logit map (N, K, h, w), lateral map (N, K, h', w'))."""
        ap_map = self.ap_head(self.ap.forward_features(ap))
        lateral_map = self.lateral_head(self.lateral.forward_features(lateral))
        ap_logits = ap_map.mean(dim=(2, 3))
        lateral_logits = lateral_map.mean(dim=(2, 3))
        present = lateral_present.reshape(-1, 1).to(ap_logits.dtype)
        weights = torch.softmax(self.view_logits, dim=0)  # (2, K)
        w_ap = weights[0] + weights[1] * (1 - present)  # all weight to AP when lateral is missing
        w_lateral = weights[1] * present
        fused = w_ap * ap_logits + w_lateral * lateral_logits
        return fused, ap_map, lateral_map


class HipNet(nn.Module):
    """The ensemble: outputs probabilities, AP probability maps and the PJI risk score."""

    def __init__(
        self,
        backbones: tuple[str, ...] = MEMBER_BACKBONES,
        num_classes: int = len(FAILURE_CLASSES),
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        self.members = nn.ModuleList(
            DualViewMember(name, num_classes, in_channels) for name in backbones
        )

    def forward(
        self, ap: Tensor, lateral: Tensor, lateral_present: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Return (probabilities (N, K), probability maps (N, K, h, w), PJI risk (N,) 0-100)."""
        probabilities = []
        maps: list[Tensor] = []
        for member in self.members:
            fused, ap_map, _ = member(ap, lateral, lateral_present)
            probabilities.append(torch.softmax(fused, dim=1))
            # The shape stays symbolic (no int()), so the ONNX graph keeps working at any size.
            size = maps[0].shape[-2:] if maps else ap_map.shape[-2:]
            maps.append(
                functional.interpolate(
                    torch.sigmoid(ap_map), size=size, mode="bilinear", align_corners=False
                )
            )
        probability = torch.stack(probabilities).mean(dim=0)
        probability_maps = torch.stack(maps).mean(dim=0)
        pji_risk = 100.0 * probability[:, PJI_INDEX]
        return probability, probability_maps, pji_risk


@register("hipnet")
def hipnet(
    backbones: tuple[str, ...] = MEMBER_BACKBONES,
    num_classes: int = len(FAILURE_CLASSES),
    in_channels: int = 1,
) -> HipNet:
    return HipNet(backbones=backbones, num_classes=num_classes, in_channels=in_channels)
