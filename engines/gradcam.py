"""Grad-CAM in one forward pass, from the exported last feature map.

For a head ``logits = W @ pool(A) + b`` the Grad-CAM channel weights need no
backward pass (so they work on ONNX Runtime and TensorRT, which have no
gradients):

- average pooling: ``alpha_ck = w_ck / (H*W)``;
- GeM with exponent p, pooled value ``g_k``:
  ``alpha_ck = w_ck * g_k**(1-p) * mean(A_k**(p-1)) / (H*W)``, with A clamped at
  GeM's eps and positions below it contributing nothing, as in autograd.

The map is ``ReLU(sum_k alpha_ck A_k)``. A test checks both against autograd.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from dicom_node.errors import DicomNodeError

FloatArray = npt.NDArray[np.floating]


class GradCamError(DicomNodeError, ValueError):
    """Feature map, head weights or class index do not fit together."""


def channel_weights(
    features: FloatArray,
    fc_weight: FloatArray,
    class_index: int,
    gem_p: float | None,
    eps: float = 1e-6,
) -> FloatArray:
    """Grad-CAM's alpha for one class: (N, C) from features (N, C, H, W) and W (K, C)."""
    if features.ndim != 4:
        raise GradCamError(f"features: expected (N, C, H, W), got shape {features.shape}")
    if fc_weight.ndim != 2 or fc_weight.shape[1] != features.shape[1]:
        raise GradCamError(
            f"fc_weight: expected (K, {features.shape[1]}), got shape {fc_weight.shape}"
        )
    if not 0 <= class_index < fc_weight.shape[0]:
        raise GradCamError(f"class_index: expected 0-{fc_weight.shape[0] - 1}, got {class_index}")
    a = features.astype(np.float64)
    area = a.shape[2] * a.shape[3]
    w = fc_weight[class_index].astype(np.float64)[None, :]
    if gem_p is None:
        uniform: FloatArray = np.repeat(w / area, a.shape[0], axis=0).astype(features.dtype)
        return uniform
    clamped = np.maximum(a, eps)
    pooled = np.mean(clamped**gem_p, axis=(2, 3)) ** (1.0 / gem_p)
    active = a >= eps  # clamp passes no gradient below its minimum
    slope = np.mean(np.where(active, clamped ** (gem_p - 1.0), 0.0), axis=(2, 3))
    alpha: FloatArray = (w * pooled ** (1.0 - gem_p) * slope / area).astype(features.dtype)
    return alpha


def grad_cam(
    features: FloatArray, fc_weight: FloatArray, class_index: int, gem_p: float | None = None
) -> FloatArray:
    """The class-discriminative map, (N, H, W), not normalised (see :func:`normalise`)."""
    alpha = channel_weights(features, fc_weight, class_index, gem_p)
    cam: FloatArray = np.maximum(np.einsum("nc,nchw->nhw", alpha, features), 0.0)
    return cam


def normalise(cam: FloatArray) -> FloatArray:
    """Stretch each map from its lowest value (0) to its highest (1) for display.

    Min-max, not division by the peak: Hip-Net's maps are sigmoid probabilities whose
    lowest cell sat at a third of the peak on the demo phantoms, so scaled to the peak the
    whole hip was coloured. A flat map is all 1 (the engine looked everywhere alike), an
    all-zero one stays 0 (it looked nowhere). A Grad-CAM map (ReLU'd, its lowest cell
    usually 0) is nearly unchanged."""
    flat = cam.reshape(cam.shape[0], -1)
    low = flat.min(axis=1)[:, None, None]
    high = flat.max(axis=1)[:, None, None]
    span = high - low
    scaled: FloatArray = np.where(
        span > 0,
        (cam - low) / np.where(span > 0, span, 1),
        np.where(high > 0, np.ones_like(cam), np.zeros_like(cam)),
    ).astype(cam.dtype)
    return scaled
