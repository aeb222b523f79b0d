from __future__ import annotations

import numpy as np
import torch

from engines.catalog import engine_spec
from engines.manifest import Preprocessing
from engines.models import create
from engines.training.data import phantom_set
from engines.training.evaluate import evaluate, peak_hits_mask, predict


def test_peak_hits_mask_checks_the_block_under_the_peak_cell() -> None:
    heat = np.zeros((3, 3))
    heat[1, 2] = 1.0  # peak in the middle row, right column
    mask = np.zeros((96, 96), dtype=bool)
    mask[40, 70] = True  # inside that block (rows 32-63, columns 64-95)
    assert peak_hits_mask(heat, mask)
    mask[:] = False
    mask[10, 10] = True
    assert not peak_hits_mask(heat, mask)
    # Uneven division: 3 cells over 100 pixels, the last block reaches the edge.
    odd = np.zeros((100, 100), dtype=bool)
    odd[99, 99] = True
    heat[:] = 0
    heat[2, 2] = 1
    assert peak_hits_mask(heat, odd)
    # A map with no peak points nowhere: a miss, even over a lesion in the first cell.
    corner = np.zeros((96, 96), dtype=bool)
    corner[0, 0] = True
    assert not peak_hits_mask(np.zeros((3, 3)), corner)


def test_evaluate_reports_accuracy_confusion_and_pointing() -> None:
    torch.manual_seed(0)
    spec = engine_spec("hip_screen")
    data = phantom_set(spec, 1, 64, seed=0)
    model = create("hip_screen")
    result = evaluate(spec, model, data, Preprocessing(size=64))
    assert result.items == 8 and result.positives == 7
    assert np.asarray(result.confusion).sum() == 8
    assert 0.0 <= result.accuracy <= 1.0
    assert result.pointing_game is not None and 0.0 <= result.pointing_game <= 1.0
    assert set(result.recall) == set(spec.class_names)
    probabilities, maps = predict(model, data, Preprocessing(size=64))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert maps is not None and maps.shape == (8, 2, 2) and (maps >= 0).all()


def test_hipnet_pointing_uses_its_probability_maps() -> None:
    torch.manual_seed(0)
    spec = engine_spec("hipnet")
    data = phantom_set(spec, 1, 64, seed=0)
    model = create("hipnet")
    result = evaluate(spec, model, data, Preprocessing(size=64))
    assert result.items == 5 and result.positives == 5
    assert result.pointing_game is not None
    assert result.accuracy_without_lateral is None  # only when asked: validation skips it


def test_ap_alone_is_the_accuracy_with_every_lateral_missing() -> None:
    torch.manual_seed(0)
    spec = engine_spec("hipnet")
    pre = Preprocessing(size=64)
    data = phantom_set(spec, 2, 64, seed=0)
    model = create("hipnet")
    result = evaluate(spec, model, data, pre, heatmaps=False, ap_alone=True)
    alone, _ = predict(model, data.without_laterals(), pre, heatmaps=False)
    truth = data.labels.numpy()
    assert result.accuracy_without_lateral == float((alone.argmax(axis=1) == truth).mean())
    both, _ = predict(model, data, pre, heatmaps=False)
    assert not np.allclose(alone, both)  # the lateral branch did count
    # A single-view engine has no lateral to remove.
    screen = engine_spec("hip_screen")
    single = phantom_set(screen, 1, 64, seed=0)
    result = evaluate(screen, create("hip_screen"), single, pre, heatmaps=False, ap_alone=True)
    assert result.accuracy_without_lateral is None
