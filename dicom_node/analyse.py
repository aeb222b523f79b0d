"""One completed study through the engines: route, preprocess, infer, triage, cascade.

``analyse_study`` is the readable middle of the pipeline::

    images    = headers of the study's instances          (route.source_image)
    tasks     = the rules' engine tasks per hip            (route.plan_tasks)
    decisions = infer each engine's batch, then triage     (infer, triage)
    tasks     = the cascade's tasks from those decisions   (route.cascade_tasks) ... repeat
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pydicom

from dicom_node.config import Config
from dicom_node.ct_input import CtCache
from dicom_node.errors import UNREADABLE_DICOM, DicomNodeError, describe, one_line
from dicom_node.infer import EngineOutputError, EngineSet, EngineUnavailableError, HipBatchItem
from dicom_node.models import HipTask, Prediction, SourceImage, TriageDecision
from dicom_node.preprocess import HipInput, ImageCache, PreprocessError, hip_input
from dicom_node.report.patient import stored_text
from dicom_node.route import cascade_tasks, held_back, plan_tasks, source_image, unused
from dicom_node.triage import decide, study_priority
from engines.manifest import Preprocessing
from engines.runtimes.base import EngineRuntimeError

log = logging.getLogger(__name__)

_MAX_CASCADE_DEPTH = 4  # a cascade that keeps adding tasks is a configuration loop


@dataclass(frozen=True)
class HipOutcome:
    decision: TriageDecision
    ap: HipInput  # how the hip's AP region maps back onto its source image


@dataclass(frozen=True, eq=False)
class StudyAnalysis:
    study_uid: str
    images: tuple[SourceImage, ...]
    hips: tuple[HipOutcome, ...]
    priority: str
    cache: ImageCache
    inference: tuple[tuple[str, float], ...]  # (engine, seconds) per batch run
    # AP images that could not be analysed, or not by one of their engines, (SOP Instance
    # UID, why): the others' results are reported, and the report says the study was not
    # analysed whole.
    not_analysed: tuple[tuple[str, str], ...] = ()
    # Why the report is PARTIAL: "pixel_data" (an image, or an instance's header, could not
    # be read) and "engine" (an engine failed on some hips), for the metrics.
    partial_reasons: tuple[str, ...] = ()
    # Engines a rule chose for an image but whose requires a header value, present but not
    # usable, held back (route.held_back), then the hip radiographs no engine read
    # (route.unused): the report names them, each a Comment; neither makes it PARTIAL.
    held_back: tuple[str, ...] = ()

    @property
    def inference_seconds(self) -> float:
        return sum(seconds for _, seconds in self.inference)

    @property
    def decisions(self) -> tuple[TriageDecision, ...]:
        return tuple(h.decision for h in self.hips)


class MixedPatientsError(DicomNodeError, ValueError):
    """The study's instances name more than one patient."""


def read_sources(
    sources: Sequence[tuple[Path, str]], unreadable: dict[str, str] | None = None
) -> tuple[SourceImage, ...]:
    """The headers of the study's instances (path, calling AE), without pixels.

    An instance whose header cannot be read fails the study; given ``unreadable``, it is
    named there instead (its SOP Instance UID, as the spool names its file: why) and left
    out, as long as another instance can be read (one missing or damaged file, even of an
    image no engine would read, failed the whole study, its good AP unreported).

    A study whose instances carry different Patient IDs (a Study Instance UID reused by a
    misconfigured modality, a wrong-patient correction half done in the PACS) is refused:
    its one SR would report every hip under the first patient's name.
    """
    images = []
    first_failure: PreprocessError | None = None
    patients: dict[tuple[str, str], list[str]] = {}
    for path, calling_ae in sources:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            image = source_image(ds, path, calling_ae)
        except UNREADABLE_DICOM as exc:
            why = f"cannot read its header ({describe(exc)})"
            if unreadable is None:
                raise PreprocessError(f"{path.name}: {why}") from exc
            log.warning("SOP instance %s not analysed: %s", path.stem, why)
            unreadable[path.stem] = why
            first_failure = first_failure or PreprocessError(f"{path.name}: {why}")
            continue
        images.append(image)
        patient = _patient(ds)
        if patient[0]:
            patients.setdefault(patient, []).append(image.sop_instance_uid)
    patients = _issuers_merged(patients)
    if len(patients) > 1:
        groups = "; ".join(", ".join(sorted(uids)) for uids in patients.values())
        # UIDs only: the Patient IDs themselves never go into a message or a log.
        raise MixedPatientsError(
            f"instances of {len(patients)} patients (Patient ID and Issuer) under one Study "
            f"Instance UID, refused rather than reported under one patient's name: correct "
            f"the study in the PACS and resend it (SOP instances by patient: {groups})"
        )
    if first_failure is not None and not images:
        raise first_failure
    return tuple(images)


def _issuers_merged(
    patients: dict[tuple[str, str], list[str]],
) -> dict[tuple[str, str], list[str]]:
    """A Patient ID without an Issuer beside the same ID with one issuer is that patient:
    an absent issuer is not a second one (the study was refused as '2 patients'). With two
    issuers for one ID, the one without stays apart: which of them it is cannot be told."""
    issuers: dict[str, set[str]] = {}
    for pid, issuer in patients:
        if issuer:
            issuers.setdefault(pid, set()).add(issuer)
    merged: dict[tuple[str, str], list[str]] = {}
    for (pid, issuer), uids in patients.items():
        named = issuers.get(pid, set())
        key = (pid, issuer or (next(iter(named)) if len(named) == 1 else ""))
        merged.setdefault(key, []).extend(uids)
    return merged


def _patient(ds: pydicom.Dataset) -> tuple[str, str]:
    """(Patient ID, Issuer of Patient ID), stripped; read raw, so pydicom's checks of
    them, which quote the value, are not run."""
    return stored_text(ds, "PatientID"), stored_text(ds, "IssuerOfPatientID")


def _run(
    tasks: Sequence[HipTask],
    engines: EngineSet,
    cache: ImageCache,
    volumes: CtCache,
    cfg: Config,
    not_analysed: dict[str, str],
    failed: _EngineFailures,
    final_attempt: bool,
) -> tuple[list[HipOutcome], list[tuple[str, float]]]:
    by_engine: dict[str, list[HipBatchItem]] = {}
    for task in tasks:
        pre = engines.manifest(task.engine).preprocessing
        try:
            ap = hip_input(cache.get(task.ap), task.side, pre)
        except PreprocessError as exc:
            # One AP that cannot be decoded (a compression the node has no codec for, a
            # damaged file) must not cost the study's other images their triage.
            uid = task.ap.sop_instance_uid
            if uid not in not_analysed:
                log.warning("SOP instance %s not analysed: %s", uid, _why(exc, uid))
            not_analysed.setdefault(uid, _why(exc, uid))
            continue
        lateral, task, notes = _lateral_input(task, cache, pre, not_analysed)
        ct = None
        if pre.volume is not None:
            # The first usable series: a thin reconstruction that cannot be read (a missing
            # slice, over the voxel limit) leaves the study's thicker one.
            for series in (task.ct_series, *task.ct_alternatives):
                ct = volumes.get(series, pre, task.side)
                if ct is not None:
                    task = replace(task, ct_series=series, ct_alternatives=())
                    break
            if ct is None:
                # A CT the study holds for this hip, unused: the SR said only that the
                # engine had none, as for a study sent without one.
                notes += tuple(
                    f"not used: CT series {series} "
                    f"({why.removeprefix(f'series {series}: ').removeprefix(f'series {series}, ')}"
                    "; read as missing)"
                    for series in (task.ct_series, *task.ct_alternatives)
                    if series is not None and (why := volumes.unusable(series)) is not None
                )
        item = HipBatchItem(task, ap, lateral, ct, task.ap.clinical, notes)
        by_engine.setdefault(task.engine, []).append(item)
    outcomes: list[HipOutcome] = []
    seconds: list[tuple[str, float]] = []
    for engine, batch in by_engine.items():
        started = time.perf_counter()
        try:
            answered = _predict(engines, engine, batch, failed)
        except (EngineRuntimeError, EngineUnavailableError) as exc:
            if not final_attempt:  # passing, perhaps (Triton restarting): the job is retried
                raise
            failed.add(engine, batch, exc)
            continue
        seconds.append((engine, time.perf_counter() - started))
        manifest = engines.manifest(engine)
        for item, prediction in answered:
            outcomes.append(HipOutcome(decide(prediction, manifest, cfg.triage), item.ap))
    return outcomes, seconds


def _predict(
    engines: EngineSet, engine: str, batch: Sequence[HipBatchItem], failed: _EngineFailures
) -> list[tuple[HipBatchItem, Prediction]]:
    """The batch's predictions. Where the engine answers values no finding can be read from
    (EngineOutputError), each hip is asked again alone, and only the hips it cannot answer
    are left out (one hip's NaN cost the engine's other hips, an urgent finding included)."""
    try:
        return list(zip(batch, engines.predict(engine, batch), strict=True))
    except EngineOutputError as exc:
        if len(batch) == 1:
            failed.add(engine, batch, exc)
            return []
    answered: list[tuple[HipBatchItem, Prediction]] = []
    for item in batch:
        answered += _predict(engines, engine, [item], failed)
    return answered


@dataclass
class _EngineFailures:
    """Engines that failed on their batch: those hips are left out, named in the report (a
    Hip-Net answering NaN for a prosthesis failed the whole study, and the same study's
    urgent fracture went unreported)."""

    errors: list[DicomNodeError] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)  # AP's SOP Instance UID: why

    def add(self, engine: str, items: Sequence[HipBatchItem], exc: DicomNodeError) -> None:
        self.errors.append(exc)
        sides: dict[str, list[str]] = {}
        for item in items:
            sides.setdefault(item.task.ap.sop_instance_uid, []).append(item.task.side)
        for uid, hips in sides.items():
            why = f"{engine} could not analyse hip {'+'.join(hips)}: {one_line(describe(exc))}"
            self.left_out[uid] = f"{self.left_out[uid]}; {why}" if uid in self.left_out else why
        log.warning("engine %s failed on %d hip(s), reported as not analysed: %s",
                    engine, len(items), one_line(describe(exc)))  # fmt: skip


def _why(exc: Exception, uid: str) -> str:
    """Why an image was left out, as the report says it beside its UID: one line, without
    the UID the reader's message starts with (the SR's Comment read "not analysed: SOP
    instance X (SOP instance X: ... plugins:" and a line per decoder)."""
    return one_line(str(exc).removeprefix(f"SOP instance {uid}: "))


def _lateral_input(
    task: HipTask, cache: ImageCache, pre: Preprocessing, not_analysed: dict[str, str]
) -> tuple[HipInput | None, HipTask, tuple[str, ...]]:
    """The hip's lateral input, the task naming the lateral used, and notes for the report.

    The newest lateral first; one that cannot be read leaves the one before it (a retake in
    a compression the node cannot decode left the hip AP-only, though the study held a
    readable lateral), and the hip's notes name the one left out. With none readable the
    hip goes on AP-only (the engine handles a missing view) and each is named like an AP
    left out (PARTIAL, not "all succeeded")."""
    failed: list[tuple[str, str]] = []
    for image in (task.lateral, *task.lateral_alternatives):
        if image is None:
            break
        try:
            lateral = hip_input(cache.get(image), task.side, pre)
        except PreprocessError as exc:
            failed.append((image.sop_instance_uid, _why(exc, image.sop_instance_uid)))
            continue
        notes = tuple(
            f"not used: lateral SOP instance {uid} ({why}); the earlier lateral "
            f"{image.sop_instance_uid} used instead"
            for uid, why in failed
        )
        for uid, why in failed:
            log.warning("%s hip: lateral %s not used (%s); %s used instead",
                        task.side, uid, why, image.sop_instance_uid)  # fmt: skip
        return lateral, replace(task, lateral=image, lateral_alternatives=()), notes
    for uid, why in failed:
        if uid not in not_analysed:
            log.warning("%s hip: lateral SOP instance %s not used: %s", task.side, uid, why)
        not_analysed.setdefault(uid, why)
    return None, replace(task, lateral=None, lateral_alternatives=()), ()


def analyse_study(
    study_uid: str,
    images: Sequence[SourceImage],
    engines: EngineSet,
    cfg: Config,
    final_attempt: bool = False,
    unreadable: Mapping[str, str] | None = None,
) -> StudyAnalysis:
    """The study's triage. An engine answering values no finding can be read from
    (EngineOutputError) leaves its hips out; one that cannot run (EngineRuntimeError,
    EngineUnavailableError) is raised for the job to be retried, and on the job's
    ``final_attempt`` leaves its hips out too. Hips left out are named in ``not_analysed``
    (the report is PARTIAL), after the instances ``read_sources`` could not read
    (``unreadable``); with no hip left, the first failure is raised."""
    cache = ImageCache()
    volumes = CtCache(images)
    tasks = plan_tasks(images, cfg.routing, engines.reads_text)
    done: list[HipTask] = []
    hips: list[HipOutcome] = []
    seconds: list[tuple[str, float]] = []
    not_analysed: dict[str, str] = dict(unreadable or {})  # images: pixel data, headers
    failed = _EngineFailures()
    for _ in range(_MAX_CASCADE_DEPTH):
        if not tasks:
            break
        outcomes, spent = _run(
            tasks, engines, cache, volumes, cfg, not_analysed, failed, final_attempt
        )
        hips += outcomes
        seconds += spent
        done += tasks
        tasks = cascade_tasks([o.decision for o in outcomes], images, cfg.routing, done)
    # After the cascade: an engine it ran on the image was not held back there.
    # And the hip radiographs no engine read (route.unused): named, not failures.
    held = held_back(images, cfg.routing, done, engines.reads_text) + unused(
        images, cfg.routing, done, engines.reads_text
    )
    for note in held:
        log.warning("study %s: %s", study_uid, note)
    if failed.errors and not hips:  # no engine answered: the job is retried or fails as before
        raise failed.errors[0]
    if not_analysed and not hips:  # nothing to report: the job fails, saying why
        raise PreprocessError(
            "; ".join(f"SOP instance {uid}: {why}" for uid, why in not_analysed.items())
        )
    reasons = tuple(
        reason
        for reason, happened in (("pixel_data", not_analysed), ("engine", failed.errors))
        if happened
    )
    for uid, why in failed.left_out.items():
        not_analysed[uid] = f"{not_analysed[uid]}; {why}" if uid in not_analysed else why
    return StudyAnalysis(
        study_uid=study_uid,
        images=tuple(images),
        hips=tuple(hips),
        priority=study_priority(h.decision for h in hips),
        cache=cache,
        inference=tuple(seconds),
        not_analysed=tuple(not_analysed.items()),
        partial_reasons=reasons,
        held_back=held,
    )
