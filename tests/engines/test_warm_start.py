from __future__ import annotations

import torch

from engines.models import create
from engines.models.hipnet import HipNet
from engines.models.warm_start import backbone_state, warm_start


def test_backbone_state_drops_the_prefix_and_the_head() -> None:
    state = {
        "backbone.conv1.weight": torch.zeros(1),
        "backbone.fc.weight": torch.zeros(1),
        "backbone.pool.p": torch.zeros(1),
        "other.weight": torch.zeros(1),
    }
    assert list(backbone_state(state)) == ["conv1.weight"]


def test_the_screening_backbone_starts_every_resnet_branch_of_hipnet() -> None:
    torch.manual_seed(0)
    screen = create("hip_screen")
    source = backbone_state(screen.state_dict())
    model = create("hipnet")
    assert isinstance(model, HipNet)
    dense_before = {k: v.clone() for k, v in model.members[2].ap.state_dict().items()}
    head_before = model.members[1].ap.fc.weight.detach().clone()

    started = warm_start(model, source)

    # ResNet-50 (all but the CBAM gates) and ResNet-50 + CBAM, both views; not DenseNet
    # or EfficientNet, whose tensors have other names.
    assert sorted(started) == [
        "members.0.ap",
        "members.0.lateral",
        "members.1.ap",
        "members.1.lateral",
    ]
    cbam = model.members[1].ap.state_dict()
    assert started["members.1.ap"] == len([k for k in cbam if not k.startswith(("fc.", "pool."))])
    assert started["members.0.ap"] < started["members.1.ap"]  # no gates in plain ResNet-50
    for key, value in model.members[1].lateral.state_dict().items():
        if key in source:
            assert torch.equal(value, source[key]), key
    assert torch.equal(model.members[1].ap.fc.weight, head_before)  # the head stays fresh
    after = model.members[2].ap.state_dict()
    assert all(torch.equal(after[k], v) for k, v in dense_before.items())


def test_a_backbone_of_another_shape_starts_nothing() -> None:
    three_channel = backbone_state(create("hip_screen", in_channels=3).state_dict())
    assert warm_start(create("hipnet"), three_channel) == {}
    assert warm_start(create("hipnet"), {}) == {}
