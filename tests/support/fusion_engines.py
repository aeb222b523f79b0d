"""The two fusion engines packaged untrained at small sizes, for tests of the node's
mechanics (routing, inputs, reports): the osteoporosis engine's reduction is fitted on
random images so its graph is complete; accuracy is the build's business, not theirs."""

from __future__ import annotations

from pathlib import Path

import torch

from dicom_node.clinical import VECTOR_FIELDS
from engines.catalog import engine_spec
from engines.models import create
from engines.osteoporosis.reduction import fit_reduction
from engines.package import package_engine
from engines.training.batch_norm import recompute_running_stats

MULTIMODAL_SIZE = 64
MULTIMODAL_VOLUME = (16, 32, 32)
OSTEOPOROSIS_SIZE = 80
OSTEOPOROSIS_KWARGS = {"clinical_width": len(VECTOR_FIELDS), "components": 6}
# What the importance analysis of a trained engine puts in its evaluation (SR summary).
IMPORTANCE = [
    {"name": "age", "mean": 0.121, "std": 0.01},
    {"name": "image", "mean": 0.08, "std": 0.02},
    {"name": "bmi", "mean": 0.011, "std": 0.004},
]


def package_fusion_engines(cache: Path) -> Path:
    torch.manual_seed(0)
    package_engine(
        engine_spec("hip_multimodal"), create("hip_multimodal"), MULTIMODAL_SIZE,
        cache / "hip_multimodal", "0.0.1-test", clinical_use="untrained test engine",
        volume=MULTIMODAL_VOLUME,
    )  # fmt: skip
    model = create("osteoporosis", **OSTEOPOROSIS_KWARGS).eval()
    images = torch.randn(16, 1, OSTEOPOROSIS_SIZE, OSTEOPOROSIS_SIZE)
    # As training does: without it the random backbones outgrow fp16, and packaging refuses.
    recompute_running_stats(model.backbones, 16, lambda i: model.pooled_features(images[i]), 16)
    with torch.no_grad():
        features = model.pooled_features(images)
        reduction = fit_reduction(
            {k: v.numpy() for k, v in features.items()}, 4, 6, backbones=model.backbone_names
        )
        model.set_reduction(reduction)
        # Standardised inputs keep the untrained head's outputs away from 0 and 1.
        clinical = torch.randn(16, len(VECTOR_FIELDS))
        # As the phantoms: every patient F or M, so no training case sets sex_other.
        female, male, other = (VECTOR_FIELDS.index(f"sex_{s}") for s in ("female", "male", "other"))
        clinical[:, [female, male, other]] = 0.0
        clinical[torch.arange(16), torch.where(torch.arange(16) % 2 == 0, female, male)] = 1.0
        model.head.fit_scaling(model.image_components(images), clinical, torch.zeros_like(clinical))
    package_engine(
        engine_spec("osteoporosis"), model, OSTEOPOROSIS_SIZE, cache / "osteoporosis",
        "0.0.1-test", model_kwargs=OSTEOPOROSIS_KWARGS, clinical=VECTOR_FIELDS,
        evaluation={"data": "held-out phantoms", "importance": IMPORTANCE},
        clinical_use="untrained test engine",
    )  # fmt: skip
    return cache
