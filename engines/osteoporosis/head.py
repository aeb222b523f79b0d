"""The fully connected network of seed 003: selected image components joined with the
clinical variables (and their missing-value mask) to the osteoporosis probability."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FusionHead(nn.Module):
    """``[image components | clinical values | missing mask] -> logits (2)``.

    Inputs are standardised again with statistics stored in the module (fitted on the
    training set), so the exported graph takes the values as ``as_vector`` gives them
    (the node's own standardisation), not the raw ones.
    """

    def __init__(
        self, image_width: int, clinical_width: int, hidden: int = 64, dropout: float = 0.2
    ):
        super().__init__()
        width = image_width + 2 * clinical_width
        self.image_width = image_width
        self.clinical_width = clinical_width
        self.mean: Tensor
        self.scale: Tensor
        self.register_buffer("mean", torch.zeros(image_width + clinical_width))
        self.register_buffer("scale", torch.ones(image_width + clinical_width))
        self.net = nn.Sequential(
            nn.Linear(width, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden // 2, 2),
        )

    def fit_scaling(self, image: Tensor, clinical: Tensor, missing: Tensor) -> None:
        """Store the training set's mean and spread (missing values left out of them).

        A column that never varies in training (a category no training patient had, such
        as sex O in phantoms of F and M) keeps a spread of 1: dividing by a spread of ~0
        would turn its first nonzero value at serving into logits of ~1e5.
        """
        values = torch.cat([image, clinical], dim=1)
        known = torch.cat([torch.ones_like(image), 1.0 - missing], dim=1)
        count = known.sum(dim=0).clamp_min(1.0)
        mean = (values * known).sum(dim=0) / count
        var = (((values - mean) * known) ** 2).sum(dim=0) / count
        self.mean.copy_(mean)
        self.scale.copy_(torch.where(var > 1e-12, var.sqrt(), torch.ones_like(var)))

    def unseen_clinical_columns(self) -> tuple[int, ...]:
        """The clinical columns that were 0 in every training case where present (mean 0,
        no spread: 1 since the fix above, 1e-6 in a checkpoint from before it)."""
        mean = self.mean[self.image_width :]
        scale = self.scale[self.image_width :]
        constant = (scale == 1.0) | (scale <= 1e-6)
        return tuple(int(i) for i in torch.nonzero((mean == 0.0) & constant).flatten())

    def forward(self, image: Tensor, clinical: Tensor, missing: Tensor) -> Tensor:
        values = (torch.cat([image, clinical], dim=1) - self.mean) / self.scale
        known = torch.cat([torch.ones_like(image), 1.0 - missing], dim=1)
        logits: Tensor = self.net(torch.cat([values * known, missing], dim=1))
        return logits
