"""An in-memory manifest for tests that need an engine's classes but no artefacts."""

from __future__ import annotations

from engines.catalog import engine_spec
from engines.manifest import Heatmap, Manifest, Preprocessing, TensorSpec


def manifest_for(engine: str, version: str = "1.2.3-test") -> Manifest:
    """A manifest with the catalogue's classes and thresholds; no artefacts on disk."""
    spec = engine_spec(engine)
    return Manifest(
        name=spec.name,
        version=version,
        model=spec.model,
        model_kwargs={},
        title=spec.title,
        classes=spec.findings,
        inputs=(TensorSpec("image", (-1, 1, 64, 64)),),
        outputs=(TensorSpec("logits", (-1, len(spec.findings))),),
        preprocessing=Preprocessing(size=64),
        heatmap=Heatmap(kind=spec.heatmap),
        artefacts={},
        probability_output="logits",
        output_is_logits=True,
    )
