from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from engines.catalog import engine_spec
from engines.manifest import Preprocessing
from engines.models import create
from engines.training.data import phantom_set
from engines.training.loop import Progress, TrainingError, TrainOptions, train

PRE = Preprocessing(size=64)


def test_training_reports_progress_checkpoints_and_keeps_the_best(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = engine_spec("hip_screen")
    data = phantom_set(spec, 2, 64, seed=0)
    seen: list[Progress] = []
    model = create("hip_screen")
    history = train(
        spec, model, data, data, PRE, TrainOptions(epochs=2, batch_size=8), tmp_path, seen.append
    )
    assert [h.epoch for h in history] == [1, 2]
    assert [(p.epoch, p.step, p.steps) for p in seen] == [
        (1, 1, 2),
        (1, 2, 2),
        (2, 1, 2),
        (2, 2, 2),
    ]
    assert all(p.loss > 0 for p in seen)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["best.pt", "epoch-001.pt", "epoch-002.pt"]
    best = max(history, key=lambda h: h.val_accuracy)
    state = torch.load(tmp_path / "best.pt", weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert best.val_accuracy >= history[-1].val_accuracy


def test_time_budget_stops_after_the_step_that_crosses_it(tmp_path: Path) -> None:
    spec = engine_spec("hip_screen")
    data = phantom_set(spec, 2, 64, seed=0)
    seen: list[Progress] = []
    options = TrainOptions(epochs=3, batch_size=4, max_seconds=0.0)
    history = train(spec, create("hip_screen"), data, data, PRE, options, tmp_path, seen.append)
    assert len(history) == 1 and len(seen) == 1


def test_hipnet_trains_each_member_on_both_views(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = engine_spec("hipnet")
    data = phantom_set(spec, 1, 64, seed=0, lateral_missing=0.4)
    model = create("hipnet")
    before = [p.detach().clone() for p in model.members[3].lateral_head.parameters()]
    train(spec, model, data, data, PRE, TrainOptions(epochs=1, batch_size=5), tmp_path)
    after = list(model.members[3].lateral_head.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_bad_options_and_data(tmp_path: Path) -> None:
    spec = engine_spec("hip_screen")
    data = phantom_set(spec, 1, 64, seed=0)
    model = create("hip_screen")
    for options, message in [
        (TrainOptions(epochs=0), "epochs: expected at least 1, got 0"),
        (TrainOptions(batch_size=1), "batch_size: expected at least 2, got 1"),
        (TrainOptions(learning_rate=0.0), "learning_rate: expected > 0, got 0.0"),
    ]:
        with pytest.raises(TrainingError, match=message):
            train(spec, model, data, data, PRE, options, tmp_path)
    without_normal = data.subset(torch.arange(1, 8))
    with pytest.raises(TrainingError, match=r"no item of class\(es\) \['normal'\]"):
        train(spec, model, without_normal, data, PRE, TrainOptions(), tmp_path)
    hipnet = engine_spec("hipnet")
    dual = phantom_set(hipnet, 1, 64, seed=0)
    with pytest.raises(TrainingError, match="Hip-Net needs lateral views"):
        train(
            hipnet,
            create("hipnet"),
            replace(dual, lateral=None),
            dual,
            PRE,
            TrainOptions(batch_size=5),
            tmp_path,
        )
