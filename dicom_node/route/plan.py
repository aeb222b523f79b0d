"""From a study's images to engine tasks, one per hip and engine.

An AP-type image a rule selects gives one task per hip it shows (a pelvis both,
an image of one hip that hip). A dual-view engine pairs the hip's AP region with
the study's lateral view of the same side (View Position in
``routing.lateral_views``, laterality R or L); without one it runs on the AP
alone, which the engine handles as a missing view. The cascade adds tasks for
hips an earlier engine found with a finding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset

from dicom_node.config_results import RoutingConfig
from dicom_node.models import HipTask, SourceImage, TriageDecision
from dicom_node.route.rules import attributes_of, rule_matches
from engines.catalog import engine_spec

SIDES = ("R", "L")


def source_image(ds: Dataset, path: Path, calling_ae: str) -> SourceImage:
    attributes = attributes_of(ds, calling_ae)
    laterality = (attributes["ImageLaterality"] or attributes["Laterality"]).upper()
    return SourceImage(
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        series_uid=str(ds.SeriesInstanceUID),
        path=path,
        view=attributes["ViewPosition"].upper(),
        laterality=laterality,
        attributes=attributes,
    )


def _sides(image: SourceImage) -> tuple[str, ...]:
    return (image.laterality,) if image.laterality in SIDES else SIDES


def _lateral(
    images: Sequence[SourceImage], side: str, routing: RoutingConfig
) -> SourceImage | None:
    views = {v.upper() for v in routing.lateral_views}
    for image in images:
        if image.view in views and image.laterality == side:
            return image
    return None


def _task(
    engine: str,
    side: str,
    ap: SourceImage,
    images: Sequence[SourceImage],
    routing: RoutingConfig,
    rule: str,
) -> HipTask:
    dual = "LATERAL" in engine_spec(engine).views
    lateral = _lateral(images, side, routing) if dual else None
    return HipTask(engine=engine, side=side, ap=ap, lateral=lateral, rule=rule)


def plan_tasks(images: Sequence[SourceImage], routing: RoutingConfig) -> tuple[HipTask, ...]:
    """The tasks the rules select, in a stable order; each image, hip and engine once.

    A hip shown by two AP images (a pelvis and a separate AP of that hip) is run on both.
    """
    lateral_views = {v.upper() for v in routing.lateral_views}
    tasks: list[HipTask] = []
    seen: set[tuple[str, str, str]] = set()
    for image in images:
        if image.view in lateral_views:
            continue  # a lateral view is only ever the partner of an AP region
        for rule in routing.rules:
            if not rule_matches(rule, image.attributes):
                continue
            for side in _sides(image):
                key = (rule.engine, image.sop_instance_uid, side)
                if key not in seen:
                    seen.add(key)
                    tasks.append(_task(rule.engine, side, image, images, routing, rule.name))
    return tuple(tasks)


def cascade_tasks(
    decisions: Sequence[TriageDecision],
    images: Sequence[SourceImage],
    routing: RoutingConfig,
    done: Sequence[HipTask] = (),
) -> tuple[HipTask, ...]:
    """Tasks for hips whose decision by a cascade's first engine has its finding present."""
    seen = {(t.engine, t.ap.sop_instance_uid, t.side) for t in done}
    tasks: list[HipTask] = []
    for rule in routing.cascade:
        for decision in decisions:
            task = decision.prediction.task
            if task.engine != rule.after:
                continue
            if not any(f.name == rule.finding and f.present for f in decision.findings):
                continue
            key = (rule.engine, task.ap.sop_instance_uid, task.side)
            if key in seen:
                continue
            seen.add(key)
            name = f"cascade:{rule.after}:{rule.finding}"
            tasks.append(_task(rule.engine, task.side, task.ap, images, routing, name))
    return tuple(tasks)
