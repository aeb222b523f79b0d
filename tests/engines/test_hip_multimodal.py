from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from engines.models.hip_multimodal import MODALITIES, HipMultimodal
from engines.models.layers import ArchitectureError


def inputs(n: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, 1, 64, 64, generator=g),
        torch.randn(n, 1, 16, 32, 32, generator=g),
        torch.nn.functional.normalize(torch.randn(n, 384, generator=g), dim=1),
    )


@pytest.fixture(scope="module")
def model() -> HipMultimodal:
    torch.manual_seed(0)
    return HipMultimodal().eval()


def test_outputs_and_attention_over_the_modalities(model: HipMultimodal) -> None:
    xr, ct, text = inputs()
    with torch.no_grad():
        logits, xr_logits, xr_map, weights = model(xr, ct, text, torch.ones(2, 3))
    assert logits.shape == xr_logits.shape == (2, 4)
    assert xr_map.shape == (2, 2048, 2, 2)
    assert weights.shape == (2, len(MODALITIES))
    assert torch.allclose(weights.sum(dim=1), torch.ones(2), atol=1e-5)


def test_a_missing_modality_gets_no_attention_and_its_input_does_not_matter(
    model: HipMultimodal,
) -> None:
    xr, ct, text = inputs()
    present = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    with torch.no_grad():
        logits, _, _, weights = model(xr, ct, text, present)
    assert weights[0, 1] == 0.0 and weights[1, 2] == 0.0
    # Sample 0 has no CT, sample 1 no text: changing those inputs changes nothing there.
    with torch.no_grad():
        only_ct_changed = model(xr, torch.randn_like(ct), text, present)[0]
        only_text_changed = model(xr, ct, torch.randn_like(text), present)[0]
    assert torch.allclose(only_ct_changed[0], logits[0], atol=1e-5)
    assert torch.allclose(only_text_changed[1], logits[1], atol=1e-5)
    # A radiograph marked absent is still used: the engine always has one.
    with torch.no_grad():
        forced = model(xr, ct, text, torch.tensor([[0.0, 1.0, 1.0]] * 2))[3]
    assert torch.all(forced[:, 0] > 0)


def test_embed_dim_must_split_into_heads() -> None:
    with pytest.raises(
        ArchitectureError, match=r"embed_dim: expected a multiple of heads \(3\), got 256"
    ):
        HipMultimodal(heads=3)


def test_onnx_runtime_matches_torch(model: HipMultimodal, tmp_path: Path) -> None:
    xr, ct, text = inputs()
    present = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    path = tmp_path / "multimodal.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        # torch 2.13 announces the TorchScript exporter's retirement; engines/export.py
        # uses it on purpose (dynamo=False, see DESIGN.md) and silences the same warning.
        # MultiheadAttention's fast-path checks warn while traced (they are constants).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model, (xr, ct, text, present), str(path), dynamo=False, opset_version=17,
            input_names=["radiograph", "ct", "text", "present"],
            output_names=["logits", "radiograph_logits", "features", "attention"],
            dynamic_axes={n: {0: "batch"} for n in ("radiograph", "ct", "text", "present",
                                                     "logits", "radiograph_logits", "features",
                                                     "attention")},
        )  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    xr3, ct3, text3 = inputs(3, seed=1)
    present3 = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    got = session.run(None, {"radiograph": xr3.numpy(), "ct": ct3.numpy(), "text": text3.numpy(),
                             "present": present3.numpy()})  # fmt: skip
    with torch.no_grad():
        want = model(xr3, ct3, text3, present3)
    # Tolerance: fp32 on both sides, different kernels: within 1e-4 absolute or relative
    # (the feature map reaches ~50, where fp32 kernels differ by ~1e-4).
    for g, w in zip(got, want, strict=True):
        assert np.allclose(g, w.numpy(), rtol=1e-4, atol=1e-4)
