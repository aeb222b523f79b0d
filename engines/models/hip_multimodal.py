"""The multimodal hip engine (seed 000): radiograph, CT volume and clinical text, fused by
attention across modality tokens, over 4 classes (normal, osteoarthritis, ONFH, FAI).

Each modality becomes one token: the radiograph through a 2-D ResNet-50, the CT volume
through a 3-D ResNet-50, the text as a sentence embedding (MiniLM, 384-d, computed by the
text encoder engine). A learned query attends over the tokens (multi-head attention) with
absent modalities masked out, so a study without CT or without request text is classified
from what it has; the radiograph is always present. The attention weights, averaged over
heads, are the model's reliance on each input and are reported in the SR.

Grad-CAM needs a linear head over the radiograph's feature map, which the attention fusion
is not; the radiograph branch therefore keeps its own linear classifier (pool -> fc, trained
jointly as an auxiliary loss), and the heat map is that classifier's single-pass Grad-CAM.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from engines.models.base import create_classifier
from engines.models.layers import ArchitectureError
from engines.models.registry import register

MULTIMODAL_CLASSES: tuple[str, ...] = (
    "normal",
    "osteoarthritis",
    "osteonecrosis_of_femoral_head",
    "femoroacetabular_impingement",
)
MODALITIES: tuple[str, ...] = ("radiograph", "ct", "text")
TEXT_DIM = 384


class HipMultimodal(nn.Module):
    def __init__(
        self,
        num_classes: int = len(MULTIMODAL_CLASSES),
        embed_dim: int = 256,
        heads: int = 4,
        text_dim: int = TEXT_DIM,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if embed_dim % heads:
            raise ArchitectureError(
                f"embed_dim: expected a multiple of heads ({heads}), got {embed_dim}"
            )
        self.text_dim = text_dim
        self.radiograph = create_classifier("resnet50", num_classes=num_classes, in_channels=1)
        self.ct = create_classifier("resnet3d50", num_classes=num_classes, in_channels=1)
        self.project = nn.ModuleList(
            [
                nn.Linear(self.radiograph.num_features, embed_dim),
                nn.Linear(self.ct.num_features, embed_dim),
                nn.Linear(text_dim, embed_dim),
            ]
        )
        self.modality = nn.Parameter(torch.zeros(len(MODALITIES), embed_dim))
        self.query = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.normal_(self.modality, std=0.02)
        nn.init.normal_(self.query, std=0.02)
        self.norm = nn.LayerNorm(embed_dim)
        self.attention = nn.MultiheadAttention(embed_dim, heads, dropout=dropout, batch_first=True)
        self.head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Dropout(dropout),
                                  nn.Linear(embed_dim, num_classes))  # fmt: skip

    def forward(
        self, radiograph: Tensor, ct: Tensor, text: Tensor, present: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Inputs: radiograph (N,1,H,W), ct (N,1,D,H,W), text (N,384), present (N,3) of 0/1
        for (radiograph, ct, text). Returns (fused logits (N,K), radiograph logits (N,K),
        radiograph feature map (N,C,h,w), attention over the modalities (N,3))."""
        xr_logits, xr_map = self.radiograph.forward_with_features(radiograph)
        ct_map = self.ct.forward_features(ct)
        logits, weights = self.fuse(xr_map.mean(dim=(2, 3)), ct_map.mean(dim=(2, 3, 4)), text,
                                    present)  # fmt: skip
        return logits, xr_logits, xr_map, weights

    def fuse(
        self, radiograph: Tensor, ct: Tensor, text: Tensor, present: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The fusion alone, from each modality's pooled features: radiograph (N, C_r), ct
        (N, C_ct), text (N, 384), present (N, 3) -> (fused logits (N, K), attention (N, 3)).
        Training fits it on cached features of frozen backbones (a fraction of the cost)."""
        pooled = (radiograph, ct, text)
        tokens = (
            torch.stack([proj(p) for proj, p in zip(self.project, pooled, strict=True)], dim=1)
            + self.modality
        )  # (N, 3, E)
        tokens = self.norm(tokens)
        # The radiograph is always there: forcing its mask keeps the softmax defined.
        keep = present.clone()
        keep[:, 0] = 1.0
        absent = keep < 0.5
        query = self.query.expand(tokens.shape[0], -1, -1)
        fused, weights = self.attention(
            query, tokens, tokens, key_padding_mask=absent, need_weights=True,
            average_attn_weights=True,
        )  # fmt: skip
        logits: Tensor = self.head(fused[:, 0])
        return logits, weights[:, 0]


@register("hip_multimodal")
def hip_multimodal(
    num_classes: int = len(MULTIMODAL_CLASSES),
    embed_dim: int = 256,
    heads: int = 4,
    text_dim: int = TEXT_DIM,
    dropout: float = 0.1,
) -> HipMultimodal:
    return HipMultimodal(num_classes, embed_dim, heads, text_dim, dropout)
