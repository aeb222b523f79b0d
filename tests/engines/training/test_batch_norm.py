from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from engines.catalog import engine_spec
from engines.manifest import Preprocessing
from engines.models import create
from engines.models.hipnet import HipNet
from engines.training.batch_norm import recalibrate_batch_norm
from engines.training.data import HipSet, normalise, phantom_set

PRE = Preprocessing(size=64)


def _images(n: int, seed: int = 0) -> HipSet:
    g = torch.Generator().manual_seed(seed)
    ap = torch.rand(n, 1, 8, 8, generator=g) * 3.0 + 1.0
    return HipSet(ap=ap, labels=torch.zeros(n, dtype=torch.long), masks=torch.zeros(n, 8, 8))


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())


def _bn(module: nn.Module) -> nn.BatchNorm2d:
    assert isinstance(module, nn.BatchNorm2d)
    return module


def _stats(module: nn.Module) -> tuple[Tensor, Tensor]:
    bn = _bn(module)
    assert bn.running_mean is not None and bn.running_var is not None
    return bn.running_mean, bn.running_var


def test_running_statistics_become_those_of_the_sample_under_the_final_weights() -> None:
    net = _net()
    data = _images(64)
    mean, var = _stats(net[1])
    mean.fill_(50.0)  # stale statistics, as left by a short training run
    var.fill_(9.0)
    net.eval()
    used = recalibrate_batch_norm(net, data, PRE, items=64, batch_size=16)
    assert used == 64
    with torch.no_grad():
        conv = net[0](normalise(data.ap, PRE))
    mean, var = _stats(net[1])
    # Equal batches: the average of the batch means is the sample mean.
    assert torch.allclose(mean, conv.mean(dim=(0, 2, 3)), atol=1e-5)
    # The average of the batches' unbiased variances: close to the sample variance.
    assert torch.allclose(var, conv.var(dim=(0, 2, 3)), rtol=0.15)
    assert _bn(net[1]).momentum == pytest.approx(0.1)  # restored
    assert not net.training  # the mode it was in


def test_a_sample_is_drawn_so_batches_mix_and_the_result_is_reproducible() -> None:
    data = _images(40)
    first, second, third = _net(), _net(), _net()
    assert recalibrate_batch_norm(first, data, PRE, items=24, batch_size=8, seed=3) == 24
    assert recalibrate_batch_norm(second, data, PRE, items=24, batch_size=8, seed=3) == 24
    recalibrate_batch_norm(third, data, PRE, items=24, batch_size=8, seed=4)
    assert torch.equal(_stats(first[1])[0], _stats(second[1])[0])
    assert not torch.equal(_stats(first[1])[0], _stats(third[1])[0])


def test_nothing_changes_without_batch_norm_or_items() -> None:
    data = _images(8)
    net = _net()
    before = _stats(net[1])[0].clone()
    assert recalibrate_batch_norm(net, data, PRE, items=0) == 0
    assert torch.equal(_stats(net[1])[0], before)
    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    assert recalibrate_batch_norm(plain, data, PRE, items=8) == 0


def test_a_trailing_batch_of_one_is_skipped() -> None:
    # A batch of one has no variance: BatchNorm would fail on it in training mode.
    assert recalibrate_batch_norm(_net(), _images(9), PRE, items=9, batch_size=4) == 8


def test_hipnet_is_fed_both_views() -> None:
    spec = engine_spec("hipnet")
    data = phantom_set(spec, 1, 64, seed=0, lateral_missing=0.4)
    torch.manual_seed(0)
    model = create("hipnet", backbones=("efficientnet_b0",))
    assert isinstance(model, HipNet)
    lateral_bn = _bn(model.members[0].lateral.features[1])
    assert int(lateral_bn.num_batches_tracked) == 0
    assert recalibrate_batch_norm(model, data, PRE, items=5) == 5
    assert int(lateral_bn.num_batches_tracked) == 1
    assert bool(_stats(lateral_bn)[0].abs().sum() > 0)
