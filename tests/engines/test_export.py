"""ONNX Runtime against torch on the same input.

Tolerances: fp32 logits within 1e-4 absolute + 1e-4 relative, feature maps
within 1e-3 absolute (accumulated rounding over ~50 layers, values up to ~40).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from engines.export import export_classifier, sha256_of
from engines.models.base import create_classifier


@pytest.mark.parametrize("name", ["resnet50_cbam", "densenet121", "efficientnet_b0"])
def test_onnxruntime_matches_torch(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    model = create_classifier(name, num_classes=8, in_channels=1, pool="gem").eval()
    exported = export_classifier(model, tmp_path / f"{name}.onnx", (1, 96, 96))
    assert exported.sha256 == sha256_of(exported.path)
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "features"]
    batch = torch.rand(3, 1, 96, 96)  # another batch size than the export's example
    logits, features = session.run(None, {"image": batch.numpy()})
    with torch.no_grad():
        expected_logits, expected_features = model.forward_with_features(batch)
    np.testing.assert_allclose(logits, expected_logits.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(features, expected_features.numpy(), rtol=1e-3, atol=1e-3)
