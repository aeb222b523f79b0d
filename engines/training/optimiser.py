"""The optimiser every training loop here uses: AdamW with the fused kernel.

PyTorch's default AdamW on the CPU updates parameter by parameter in Python; the
fused kernel does the whole update in one pass. Same algorithm, same hyper-parameters;
on Hip-Net (121 M parameters, eight backbones) one step of the optimiser takes
~170 ms instead of ~840 ms on two cores, 12 % of a demo training step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def adamw(
    parameters: Iterable[nn.Parameter], learning_rate: float, weight_decay: float
) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay, fused=True)
