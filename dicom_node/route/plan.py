"""From a study's images to engine tasks, one per hip and engine.

An AP-type image a rule selects gives one task per hip it shows (a pelvis both,
an image of one hip that hip). A dual-view engine pairs the hip's AP region with
the study's lateral view of the same side (View Position in
``routing.lateral_views``, laterality R or L); without one it runs on the AP
alone, which the engine handles as a missing view. An engine with a CT input gets
the study's CT series that may show its hip (Body Part Examined one of
``routing.ct_body_parts``, so not a chest or head CT; the one with the most slices: instances,
or the frames of an enhanced multi-frame CT; not one lateralised to the other hip, nor,
without laterality, one whose field's position shows the other hip or no side, as
dicom_node/ct_input.py decides, see there for which part of it); without one the engine
masks the CT. A rule's ``requires`` holds it back unless the study has a CT series that may show
the hip, clinical text, or the named demographics in the image's header. The cascade
adds tasks for hips an earlier engine found with a finding.

A DX image For Processing (raw detector data, not what a viewer or an engine trained on
displayed images sees; a modality may send it beside the For Presentation copy of the same
exposure) is never routed nor paired. A lateral partner is a radiograph (DX or CR) of the
hip or pelvis (or with no body part), like the AP, so a knee or a secondary capture that
carries a lateral View Position is not taken for the hip's lateral.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from dicom_node.clinical import INVALID_WORDS, ClinicalContext, ClinicalError, from_dataset
from dicom_node.config_results import (
    CT_BODY_PARTS,
    RADIOGRAPH_CLASSES,
    RoutingConfig,
    RoutingRule,
)
from dicom_node.models import HipTask, SourceImage, TriageDecision
from dicom_node.route.rules import attributes_of, rule_matches
from engines.catalog import engine_spec
from engines.ct_grid import hip_of_field

log = logging.getLogger(__name__)

# Does engine (first) read text (second)? ``EngineSet.reads_text``: the engine's own
# tokenizer decides, as when it runs (a placeholder "N/A", a script it lacks: not read).
TextReader = Callable[[str, str], bool]


def any_text(engine: str, text: str) -> bool:
    """The :data:`TextReader` without engines: any text that decoded."""
    return bool(text)


SIDES = ("R", "L")
MIN_CT_SLICES = 2
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
# CT Image, Enhanced CT Image and Legacy Converted Enhanced CT Image Storage.
CT_VOLUME_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2"
)  # fmt: skip
# What a lateral partner may be: a radiograph of the hip region (as the default AP rules).
LATERAL_MODALITIES = ("DX", "CR")
LATERAL_BODY_PARTS = ("", "HIP", "PELVIS")


def source_image(ds: Dataset, path: Path, calling_ae: str) -> SourceImage:
    attributes = attributes_of(ds, calling_ae)
    laterality = (
        attributes["ImageLaterality"] or attributes["Laterality"] or _frame_laterality(ds)
    ).upper()
    clinical: ClinicalContext | None = None
    if attributes["Modality"] != "CT":  # the radiographs carry what the engines read
        try:
            clinical = from_dataset(ds)
        except ClinicalError as exc:  # names attributes, never values
            log.warning("SOP instance %s: clinical data not read (%s)", ds.SOPInstanceUID, exc)
    return SourceImage(
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        series_uid=str(ds.SeriesInstanceUID),
        path=path,
        view=attributes["ViewPosition"].upper(),
        laterality=laterality,
        attributes=attributes,
        clinical=clinical,
        frames=_frames(ds),
        x_range=_x_range(ds) if attributes["Modality"] == "CT" else None,
        ct_slice=_is_ct_slice(ds, attributes),
    )


def _frame_laterality(ds: Dataset) -> str:
    """The side an enhanced multi-frame image (Enhanced CT, a Legacy Converted one) gives
    in its Frame Anatomy functional group, where it is required and the series-level
    Laterality is left out: shared, or the same in every frame; else ""."""

    def side(group: Dataset) -> str:
        anatomy = group.get("FrameAnatomySequence") or [Dataset()]
        return str(anatomy[0].get("FrameLaterality") or "").strip()

    shared = ds.get("SharedFunctionalGroupsSequence") or []
    if shared and side(shared[0]):
        return side(shared[0])
    sides = {side(group) for group in ds.get("PerFrameFunctionalGroupsSequence") or []}
    return sides.pop() if len(sides) == 1 else ""


def _is_ct_slice(ds: Dataset, attributes: Mapping[str, str]) -> bool:
    if attributes["Modality"] != "CT" or attributes["SOPClassUID"] not in CT_VOLUME_CLASSES:
        return False
    image_type = ds.get("ImageType") or ()
    values = [image_type] if isinstance(image_type, str) else list(image_type)
    return "LOCALIZER" not in (str(v).strip().upper() for v in values)


def _x_range(ds: Dataset) -> tuple[float, float] | None:
    """The image's extent in patient x: its pixels' outer edges through Image Position and
    Orientation (Patient) and Pixel Spacing (of every frame, from the functional groups, for
    an enhanced CT); None when the geometry is absent or malformed."""
    try:
        positions, orientation, spacing = _geometry(ds)
        row_x, col_x = float(orientation[0]), float(orientation[3])
        row_spacing, col_spacing = (float(v) for v in spacing)
        rows, columns = int(ds.Rows), int(ds.Columns)
        # Column index i moves along the row direction by the column spacing, row index j
        # along the column direction by the row spacing; the edges lie half a pixel out.
        xs = [
            float(position[0]) + i * col_spacing * row_x + j * row_spacing * col_x
            for position in positions
            for i in (-0.5, columns - 0.5)
            for j in (-0.5, rows - 0.5)
        ]
        pad = _half_step([float(p[0]) for p in positions])
    except (AttributeError, TypeError, ValueError, IndexError, KeyError):
        return None
    return (min(xs) - pad, max(xs) + pad) if xs else None


def _half_step(xs: Sequence[float]) -> float:
    """Half the slices' typical step along x: what a volume's bounds add beyond the outer
    slices' planes (dicom_node.ct_input measures the volume so). 0 for axial slices, which
    all lie at one x; half the slice spacing for a sagittal series, whose slice planes have
    no width in x (it was read 2 mm narrower than the volume: a bilateral field near the
    250 mm threshold was dropped for both hips)."""
    steps = np.diff(np.sort(np.asarray(xs, dtype=np.float64)))
    steps = steps[steps > 1e-3]
    return float(np.median(steps)) / 2 if steps.size else 0.0


def _geometry(ds: Dataset) -> tuple[list[Any], Any, Any]:
    """(Image Position (Patient) of each frame, Image Orientation (Patient), Pixel Spacing):
    at the top level of a single-frame image, in the functional groups of an enhanced one."""
    if "PerFrameFunctionalGroupsSequence" not in ds:
        return [ds.ImagePositionPatient], ds.ImageOrientationPatient, ds.PixelSpacing
    frames = ds.PerFrameFunctionalGroupsSequence
    shared = ds.get("SharedFunctionalGroupsSequence") or [Dataset()]

    def group(frame: Dataset, name: str) -> Any:
        found = frame.get(name) or shared[0].get(name)
        return found[0]  # absent: TypeError, as a malformed value

    first = frames[0]
    orientation = group(first, "PlaneOrientationSequence").ImageOrientationPatient
    spacing = group(first, "PixelMeasuresSequence").PixelSpacing
    positions = [group(f, "PlanePositionSequence").ImagePositionPatient for f in frames]
    return positions, orientation, spacing


def _frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):  # a malformed value: counted as one, the reader refuses it
        return 1


def ct_series(
    images: Sequence[SourceImage],
    side: str | None = None,
    body_parts: Collection[str] = CT_BODY_PARTS,
) -> str | None:
    """The study's CT series with the most slices (at least MIN_CT_SLICES) among those whose
    Body Part Examined is one of ``body_parts``, else None; with ``side``, only series that
    may show that hip (not one lateralised to the other)."""
    candidates = ct_candidates(images, side, body_parts)
    return candidates[0] if candidates else None


def ct_candidates(
    images: Sequence[SourceImage],
    side: str | None = None,
    body_parts: Collection[str] = CT_BODY_PARTS,
) -> tuple[str, ...]:
    """Every CT series :func:`ct_series` could pick, the most slices first (ties by UID): a
    study often holds several reconstructions, and the next is used where the first cannot
    be read (dicom_node.analyse)."""
    counts: Counter[str] = Counter()
    for image in images:
        if not image.ct_slice:
            continue
        if image.attributes.get("BodyPartExamined", "") not in body_parts:
            continue
        if side is not None and image.laterality in SIDES and image.laterality != side:
            continue
        counts[image.series_uid] += image.frames
    if side is not None:  # a series without laterality: what its geometry shows
        for series in list(counts):
            slices = [i for i in images if i.series_uid == series and i.ct_slice]
            shown = _shown_by_geometry(slices)
            if shown is not None and shown not in ("B", side):
                del counts[series]
                if shown == "":  # ct_input logs this for a series it reads; this one it never will
                    centre = sum(_field(slices)) / 2
                    log.warning(
                        "CT series %s: one hip without laterality, its field centred at "
                        "x = %.1f mm (too near the table's centre to tell which): not used "
                        "for the %s hip", series, centre, "right" if side == "R" else "left",
                    )  # fmt: skip
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return tuple(series for series, slices in ranked if slices >= MIN_CT_SLICES)


def _shown_by_geometry(series: Sequence[SourceImage]) -> str | None:
    """B, R or L for a series without laterality whose every image has its geometry (as
    dicom_node.ct_input decides from the volume; "" when its field is too near the centre to
    say), else None: nothing to go by, the series stays a candidate."""
    if any(i.laterality for i in series) or any(i.x_range is None for i in series):
        return None
    return hip_of_field(*_field(series)) or ""


def _field(series: Sequence[SourceImage]) -> tuple[float, float]:
    """The series' extent along x (patient's right to left), mm, as its volume's bounds."""
    ranges = [i.x_range for i in series if i.x_range is not None]
    pad = _half_step([(low + high) / 2 for low, high in ranges])
    return min(r[0] for r in ranges) - pad, max(r[1] for r in ranges) + pad


def _has(
    requirement: str,
    rule: RoutingRule,
    image: SourceImage,
    images: Sequence[SourceImage],
    side: str | None,
    routing: RoutingConfig,
    reads: TextReader,
) -> bool:
    if requirement == "ct":
        return ct_series(images, side, routing.ct_body_parts) is not None
    if image.clinical is None:
        return False
    if requirement == "text":
        # What the engine reads: a part whose bytes did not decode is left out of it, and
        # text its tokenizer reads no word of ("N/A", "-") is no text to it.
        return reads(rule.engine, image.clinical.text.request.decoded.text)
    return not image.clinical.variables.is_missing(requirement)


def _unusable(requirement: str, rule: RoutingRule, image: SourceImage, reads: TextReader) -> bool:
    """Does ``image``'s header give the value ``requirement`` names, but one not usable (a
    sex of U, an age the dates contradict, text in bytes its character set does not
    decode or that ``rule``'s engine reads no word of)? Not what "not sent" means."""
    if image.clinical is None:
        return False
    if requirement == "text":
        request = image.clinical.text.request
        return not request.empty and not reads(rule.engine, request.decoded.text)
    return requirement in image.clinical.variables.invalid


def _unmet(
    rule: RoutingRule,
    image: SourceImage,
    images: Sequence[SourceImage],
    routing: RoutingConfig,
    reads: TextReader,
    side: str | None = None,
) -> tuple[str, ...]:
    """What of ``rule``'s requires the study does not give, as a report says it."""
    unmet = []
    for requirement in rule.requires:
        if _has(requirement, rule, image, images, side, routing, reads):
            continue
        if _unusable(requirement, rule, image, reads):
            unmet.append(f"{requirement}: in the header, but not {INVALID_WORDS[requirement]}")
        else:
            unmet.append(f"{requirement}: not in the study")
    return tuple(unmet)


def _unmet_on_any_side(
    rule: RoutingRule,
    image: SourceImage,
    images: Sequence[SourceImage],
    routing: RoutingConfig,
    reads: TextReader,
) -> str:
    """:func:`_unmet` for every hip ``image`` shows, in one line ("" when all are met)."""
    unmet = {u for side in _sides(image) for u in _unmet(rule, image, images, routing, reads, side)}
    return "; ".join(sorted(unmet))


def requirements_met(
    rule: RoutingRule,
    image: SourceImage,
    images: Sequence[SourceImage],
    routing: RoutingConfig,
    side: str | None = None,
    reads: TextReader = any_text,
) -> bool:
    """Does the study give ``rule`` what it requires (for hip ``side``: a CT that may show
    that hip, not one of the other hip; text ``rule``'s engine reads)?"""
    return all(_has(r, rule, image, images, side, routing, reads) for r in rule.requires)


def _sides(image: SourceImage) -> tuple[str, ...]:
    return (image.laterality,) if image.laterality in SIDES else SIDES


def _laterals(
    images: Sequence[SourceImage], side: str, routing: RoutingConfig
) -> tuple[SourceImage, ...]:
    """The hip's lateral partners, newest first: its partner is the lateral of that side
    received last (``images`` are in arrival order; a retake follows the exposure it
    replaces, which the first match took), the others are for when it cannot be read."""
    return tuple(image for image in reversed(images) if not not_a_lateral_of(image, side, routing))


def not_a_lateral_of(image: SourceImage, side: str, routing: RoutingConfig) -> str:
    """Why ``image`` is no lateral partner of hip ``side`` ("" when it is one): the test
    serving pairs by, which training on a labelled folder applies too (a pair serving never
    makes would teach the engine from an input it never gets)."""
    views = {v.upper() for v in routing.lateral_views}
    if image.view not in views:
        return f"View Position {image.view or 'not given'} is not one of {', '.join(sorted(views))}"
    if image.laterality != side:
        return f"its (Image) Laterality is {image.laterality or 'not given'}, not {side}"
    if image.sop_class_uid not in RADIOGRAPH_CLASSES:
        return f"SOP class {image.sop_class_uid} is not CR or DX For Presentation"
    modality = image.attributes.get("Modality", "")
    if modality not in LATERAL_MODALITIES:
        return f"Modality {modality or 'not given'} is not DX or CR"
    part = image.attributes.get("BodyPartExamined", "")
    if part not in LATERAL_BODY_PARTS:
        return f"Body Part Examined {part} is not HIP or PELVIS"
    return ""


def _task(
    engine: str,
    side: str,
    ap: SourceImage,
    images: Sequence[SourceImage],
    routing: RoutingConfig,
    rule: str,
) -> HipTask:
    spec = engine_spec(engine)
    laterals = _laterals(images, side, routing) if "LATERAL" in spec.views else ()
    ct = ct_candidates(images, side, routing.ct_body_parts) if "ct" in spec.modalities else ()
    return HipTask(engine=engine, side=side, ap=ap, rule=rule,
                   lateral=laterals[0] if laterals else None, lateral_alternatives=laterals[1:],
                   ct_series=ct[0] if ct else None, ct_alternatives=ct[1:])  # fmt: skip


# The most AP images of one study the engines read (the ones received last): each is held
# decoded until the study's results are built, so a study of 300 large images (sent by a
# broken or hostile peer) grew the node past its memory. A hip study has a handful.
MAX_RADIOGRAPHS = 16


def plan_tasks(
    images: Sequence[SourceImage], routing: RoutingConfig, reads: TextReader = any_text
) -> tuple[HipTask, ...]:
    """The tasks the rules select, in a stable order; each image, hip and engine once.

    A hip shown by two AP images (a pelvis and a separate AP of that hip) is run on both.
    Of more than :data:`MAX_RADIOGRAPHS` AP images, the ones received last (:func:`unused`
    names the others).
    """
    tasks = _all_tasks(images, routing, reads)
    aps = list(dict.fromkeys(t.ap.sop_instance_uid for t in tasks))
    if len(aps) <= MAX_RADIOGRAPHS:
        return tasks
    kept = set(aps[-MAX_RADIOGRAPHS:])  # images come in arrival order
    return tuple(t for t in tasks if t.ap.sop_instance_uid in kept)


def _all_tasks(
    images: Sequence[SourceImage], routing: RoutingConfig, reads: TextReader
) -> tuple[HipTask, ...]:
    lateral_views = {v.upper() for v in routing.lateral_views}
    tasks: list[HipTask] = []
    seen: set[tuple[str, str, str]] = set()
    for image in images:
        if image.view in lateral_views:
            continue  # a lateral view is only ever the partner of an AP region
        if image.sop_class_uid not in RADIOGRAPH_CLASSES:
            continue  # whatever a rule says: the engines read radiographs
        for rule in routing.rules:
            if not rule_matches(rule, image.attributes):
                continue
            for side in _sides(image):
                if not requirements_met(rule, image, images, routing, side, reads):
                    continue
                key = (rule.engine, image.sop_instance_uid, side)
                if key not in seen:
                    seen.add(key)
                    tasks.append(_task(rule.engine, side, image, images, routing, rule.name))
    return tuple(tasks)


def why_none(
    images: Sequence[SourceImage], routing: RoutingConfig, reads: TextReader = any_text
) -> str:
    """Why :func:`plan_tasks` gave no task, for the skipped job. Each image a rule matched
    says what held it back (a lateral view, a class the engines never read, a rule's
    ``requires``): otherwise the admin would look for a fault in the rules' ``when``."""
    lateral_views = {v.upper() for v in routing.lateral_views}
    laterals, classes = 0, Counter[str]()
    required: Counter[tuple[str, str]] = Counter()
    for image in images:
        rules = [rule for rule in routing.rules if rule_matches(rule, image.attributes)]
        if not rules:
            continue
        if image.view in lateral_views:
            laterals += 1
        elif image.sop_class_uid not in RADIOGRAPH_CLASSES:
            classes[_class_name(image.sop_class_uid)] += 1
        else:  # a radiograph a rule matched: its requires held it back
            for rule in rules:
                unmet = _unmet_on_any_side(rule, image, images, routing, reads)
                if unmet:
                    required[(rule.name, unmet)] += 1
    held = []
    if laterals:
        are = "is a lateral view" if laterals == 1 else "are lateral views"
        held.append(f"{laterals} matched a rule but {are}, which are only ever an AP's partner")
    held += [
        f"{n} matched a rule but {'is' if n == 1 else 'are'} {name}, which the engines never "
        f"read" + ("; send the For Presentation copy" if name == "DX For Processing" else "")
        for name, n in sorted(classes.items())
    ]
    held += [
        f"{n} matched rule {name!r}, held back by its requires ({what})"
        for (name, what), n in sorted(required.items())
    ]
    reason = "no routing rule selected an image of this study"
    return reason + (f" ({'; '.join(held)})" if held else "")


def _class_name(uid: str) -> str:
    if uid == DX_FOR_PROCESSING:
        return "DX For Processing"
    name = UID(uid).name
    return name if name != uid else f"SOP class {uid}"


def held_back(
    images: Sequence[SourceImage],
    routing: RoutingConfig,
    tasks: Sequence[HipTask],
    reads: TextReader = any_text,
) -> tuple[str, ...]:
    """The engines a rule selected for an AP image but did not run there because a value its
    ``requires`` names is in the header but not usable (a Patient's Sex U, an age the birth
    and study dates contradict), for the report: otherwise the osteoporosis engine left out
    of the SR by a bad header looks like one never asked for. A value not sent at all says
    nothing (``requires`` is how a site says "only when given"). ``tasks`` are all that ran,
    the cascade's too. UIDs, never values."""
    lateral_views = {v.upper() for v in routing.lateral_views}
    ran = {(t.engine, t.ap.sop_instance_uid) for t in tasks}
    notes: list[str] = []
    for image in images:
        if image.view in lateral_views or image.sop_class_uid not in RADIOGRAPH_CLASSES:
            continue
        for rule in routing.rules:
            if (rule.engine, image.sop_instance_uid) in ran or not rule_matches(
                rule, image.attributes
            ):
                continue
            if not any(_unusable(r, rule, image, reads) for r in rule.requires):
                continue
            unmet = _unmet_on_any_side(rule, image, images, routing, reads)
            notes.append(
                f"not run: {rule.engine} on SOP instance {image.sop_instance_uid} (rule "
                f"{rule.name!r} requires {', '.join(rule.requires)}; {unmet})"
            )
    return tuple(dict.fromkeys(notes))


def unused(
    images: Sequence[SourceImage],
    routing: RoutingConfig,
    tasks: Sequence[HipTask],
    reads: TextReader = any_text,
) -> tuple[str, ...]:
    """The study's hip radiographs (DX or CR of the hip or pelvis) no engine read, each
    with why, for the report: a lateral with no AP of its hip, or none an engine that reads
    laterals ran on; an image no routing rule selects (View Position missing). Was silent:
    the SR read COMPLETE while a lateral showing a dislocated prosthesis went unread. An
    earlier lateral a retake replaced is not named (the one received last is the hip's),
    nor an image a rule's ``requires`` kept out (:func:`held_back` names an unusable value;
    one not sent is how a site says "only when given"). UIDs, never values."""
    lateral_views = {v.upper() for v in routing.lateral_views}
    every = _all_tasks(images, routing, reads)
    selected = {t.ap.sop_instance_uid for t in every}
    capped = f"the study holds more than {MAX_RADIOGRAPHS} AP images the rules select"
    used = {t.ap.sop_instance_uid for t in tasks}
    used |= {t.lateral.sop_instance_uid for t in tasks if t.lateral is not None}
    used |= {i.sop_instance_uid for t in tasks for i in t.lateral_alternatives}
    ap_sides = {t.side for t in tasks}
    selected_sides = {t.side for t in every}  # an AP of the hip, read or not (the bound)
    # Of several laterals of one hip, the one received last is the hip's; the earlier ones
    # its retakes replaced are not named, whether or not an engine read the last.
    newest = {side: found[0].sop_instance_uid for side in SIDES
              if (found := _laterals(images, side, routing))}  # fmt: skip
    notes: list[str] = []
    for image in images:
        if image.sop_instance_uid in used:
            continue
        if image.sop_instance_uid in selected:  # whatever its body part: a rule chose it
            why = f"{capped}: the {MAX_RADIOGRAPHS} received last were read"
            notes.append(f"not used: SOP instance {image.sop_instance_uid} ({why})")
            continue
        if (
            image.sop_class_uid not in RADIOGRAPH_CLASSES
            or image.attributes.get("Modality") not in LATERAL_MODALITIES
            or image.attributes.get("BodyPartExamined", "") not in LATERAL_BODY_PARTS
        ):
            continue
        if image.view in lateral_views:
            side = {"R": "right", "L": "left"}.get(image.laterality, "")
            if side and newest.get(image.laterality) != image.sop_instance_uid:
                continue  # replaced by a retake
            if image.laterality in ap_sides:
                why = f"a lateral of the {side} hip: no engine that reads laterals ran on it"
            elif side and image.laterality in selected_sides:
                why = f"a lateral of the {side} hip, whose AP images were not read ({capped})"
            elif side:
                why = f"a lateral of the {side} hip, and the study has no AP of that hip"
            else:
                why = "a lateral whose laterality is not R or L: its hip is not known"
        elif any(rule_matches(rule, image.attributes) for rule in routing.rules):
            continue  # a rule's requirements kept it out: held_back's, or a site's choice
        else:
            why = f"no routing rule selects it (View Position {image.view or 'not given'})"
        notes.append(f"not used: SOP instance {image.sop_instance_uid} ({why})")
    return tuple(notes)


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
            started = _task(rule.engine, task.side, task.ap, images, routing, name)
            tasks.append(replace(started, trigger=(rule.after, rule.finding)))
    return tuple(tasks)
