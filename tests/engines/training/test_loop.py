from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from engines.catalog import engine_spec
from engines.losses import ClassBalancedFocalLoss, LossConfigError, lesion_attention_loss
from engines.manifest import Preprocessing
from engines.models import create
from engines.training.batch_norm import recalibrate_batch_norm
from engines.training.data import normalise, phantom_set
from engines.training.loop import (
    Criterion,
    Progress,
    TrainingError,
    TrainOptions,
    channels_last,
    one_cycle_lr,
    run_share,
    train,
)

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


def test_the_kept_weights_come_with_recalibrated_batch_norm_statistics(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = engine_spec("hipnet")
    data = phantom_set(spec, 2, 64, seed=0)
    model = create("hipnet", backbones=("efficientnet_b0",))
    options = TrainOptions(epochs=1, batch_size=5, batch_norm_items=10)
    train(spec, model, data, data, PRE, options, tmp_path)
    kept = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    # Recomputing from the same sample under the final weights changes nothing: the
    # statistics are those of the final weights, not the moving average of training.
    recalibrate_batch_norm(model, data, PRE, items=10, seed=options.seed)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in kept.items())
    saved = torch.load(tmp_path / "best.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in kept.items())


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
        (TrainOptions(learning_rate=0.0), "learning_rate: expected a number > 0, got 0.0"),
        # inf trained to an inf loss; NaN turned the attention term off silently.
        (TrainOptions(learning_rate=math.inf), "learning_rate: expected a number > 0, got inf"),
        (TrainOptions(attention_weight=-1.0), "attention_weight: expected a number >= 0, got -1.0"),
        (
            TrainOptions(attention_weight=math.nan),
            "attention_weight: expected a number >= 0, got nan",
        ),
        (TrainOptions(weight_decay=-1e-4), "weight_decay: expected a number >= 0, got -0.0001"),
        (TrainOptions(max_seconds=math.inf), "max_seconds: expected a number >= 0, got inf"),
        (TrainOptions(batch_norm_items=-1), "batch_norm_items: expected >= 0, got -1"),
    ]:
        with pytest.raises(TrainingError, match=message):
            train(spec, model, data, data, PRE, options, tmp_path)
    for options, message in [
        (TrainOptions(beta=1.0), r"beta: expected 0 <= beta < 1, got 1\.0"),
        (TrainOptions(gamma=-0.5), r"gamma: expected a number >= 0, got -0\.5"),
        (TrainOptions(gamma=math.nan), r"gamma: expected a number >= 0, got nan"),
    ]:
        with pytest.raises(LossConfigError, match=message):
            options.check()  # the loss's own checks, before any data is read
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


def test_a_run_whose_loss_is_not_finite_stops_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It trained on: the inf checkpoints were saved and packaging blamed fp16's range.
    from engines.training import loop

    real = loop._loss
    monkeypatch.setattr(loop, "_loss", lambda *args: real(*args) * math.inf)
    spec = engine_spec("hip_screen")
    data = phantom_set(spec, 1, 64, seed=0)
    with pytest.raises(
        TrainingError,
        match=r"epoch 1 step 1: the training loss is inf; the run diverged \(lower the "
        r"learning rate, 0\.002\)",
    ):
        train(spec, create("hip_screen"), data, data, PRE, TrainOptions(), tmp_path)


def test_one_cycle_rises_from_a_25th_to_the_peak_then_falls_to_a_ten_thousandth() -> None:
    assert one_cycle_lr(0.0, 1.0) == pytest.approx(1 / 25)
    assert one_cycle_lr(0.2, 1.0) == pytest.approx(1.0)
    assert one_cycle_lr(1.0, 1.0) == pytest.approx(1e-4)
    assert one_cycle_lr(7.0, 1.0) == one_cycle_lr(1.0, 1.0)  # past the end stays at the end
    rise = [one_cycle_lr(i / 100, 2e-3) for i in range(21)]
    fall = [one_cycle_lr(i / 100, 2e-3) for i in range(20, 101)]
    assert rise == sorted(rise) and fall == sorted(fall, reverse=True)


def test_a_time_budget_moves_the_schedule_on_when_it_runs_ahead_of_the_steps() -> None:
    assert run_share(0.25, 10.0, None) == 0.25
    assert run_share(0.25, 10.0, 0.0) == 0.25  # no budget
    assert run_share(0.25, 10.0, 20.0) == 0.5  # half the time is gone: half the curve
    assert run_share(0.75, 10.0, 20.0) == 0.75


def test_the_criterion_adds_the_lesion_term_only_where_masks_are_given() -> None:
    torch.manual_seed(0)
    focal = ClassBalancedFocalLoss([1, 1, 1], beta=0.0, gamma=0.5)
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    maps = torch.randn(4, 3, 2, 2)
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[1, 0, 0] = True
    plain = focal(logits, labels)
    attention = lesion_attention_loss(maps, labels, masks)
    assert attention.item() > 0
    assert torch.allclose(
        Criterion(focal, 0.5)(logits, labels, maps, masks), plain + 0.5 * attention
    )
    assert torch.equal(Criterion(focal, 0.0)(logits, labels, maps, masks), plain)
    assert torch.equal(Criterion(focal, 0.5)(logits, labels), plain)


def test_training_with_lesion_masks_moves_the_screening_heat_map_to_the_lesion(
    tmp_path: Path,
) -> None:
    """Four steps: the attention term falls when it is on, not when it is off (measured with
    batch statistics: BatchNorm's running statistics are still near their start)."""
    spec = engine_spec("hip_screen")
    data = phantom_set(spec, 2, 64, seed=0)  # 16 hips, 14 with a lesion
    results = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        model = create("hip_screen", zero_init_residual=True)
        options = TrainOptions(epochs=1, batch_size=4, learning_rate=1e-3, attention_weight=weight)
        train(spec, model, data, data, PRE, options, tmp_path / str(weight))
        with torch.no_grad():
            _, features = model.train().forward_with_features(normalise(data.ap, PRE))
            maps = model.class_maps(features)
        results[weight] = lesion_attention_loss(maps, data.labels, data.masks).item()
    assert results[1.0] < 0.5 * results[0.0], results


def _kernel(model: torch.nn.Module) -> torch.Tensor:
    """A convolution kernel whose two layouts differ (more than one input channel, 3x3)."""
    return next(p for p in model.parameters() if p.dim() >= 4 and p.shape[1] > 1 and p.shape[2] > 1)


def test_training_holds_2d_kernels_channels_last_and_restores_the_layout() -> None:
    model = create("resnet50", num_classes=5, in_channels=1)
    kernel = _kernel(model)
    with channels_last(model):
        assert kernel.is_contiguous(memory_format=torch.channels_last)
        assert not kernel.is_contiguous()
    assert kernel.is_contiguous()
    with pytest.raises(RuntimeError, match="interrupted"), channels_last(model):
        raise RuntimeError("interrupted")
    assert kernel.is_contiguous()


def test_a_network_with_3d_kernels_keeps_its_layout() -> None:
    model = create("resnet3d50", num_classes=2, in_channels=1)
    kernel = _kernel(model)
    with channels_last(model):
        assert kernel.is_contiguous()


def test_a_run_removes_an_earlier_runs_checkpoints(tmp_path: Path) -> None:
    spec = engine_spec("hip_screen")
    data = phantom_set(spec, 2, 64, seed=0)
    model = create("hip_screen")
    train(spec, model, data, data, PRE, TrainOptions(epochs=2, batch_size=8), tmp_path)
    (tmp_path / "notes.txt").write_text("the engineer's")
    options = TrainOptions(epochs=3, batch_size=8, max_seconds=0.0)  # stops after epoch 1
    train(spec, model, data, data, PRE, options, tmp_path)
    names = sorted(f.name for f in tmp_path.iterdir())
    assert names == ["best.pt", "epoch-001.pt", "notes.txt"]  # no epoch-002.pt of the first run
    state = torch.load(tmp_path / "best.pt", weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_a_last_batch_of_one_is_left_out_of_the_steps(tmp_path: Path) -> None:
    # 16 hips in batches of 5: three batches and one hip BatchNorm cannot train on alone.
    spec = engine_spec("hip_screen")
    data = phantom_set(spec, 2, 64, seed=0)
    seen: list[Progress] = []
    options = TrainOptions(epochs=1, batch_size=5, batch_norm_items=0)
    train(spec, create("hip_screen"), data, data, PRE, options, tmp_path, seen.append)
    # The last event ends the epoch (the progress bar closes its line on it).
    assert [(p.step, p.steps) for p in seen] == [(1, 3), (2, 3), (3, 3)]
