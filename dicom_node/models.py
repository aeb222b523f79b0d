"""Typed records passed between the node's stages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from dicom_node.clinical import ClinicalContext


@dataclass(frozen=True)
class Header:
    """What the node needs to know about an instance before it acknowledges it."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    modality: str
    manufacturer: str
    series_description: str
    has_pixel_data: bool


@dataclass(frozen=True)
class IndexedInstance:
    """What the index holds of an instance already stored: where, and what it said."""

    path: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    modality: str
    transfer_syntax: str
    size: int  # of the data set, File Meta excluded

    def describes(self, header: Header, transfer_syntax: str, size: int) -> bool:
        """Would indexing this instance again write the same facts?"""
        return (self.sop_class_uid, self.study_uid, self.series_uid, self.modality,
                self.transfer_syntax, self.size) == (header.sop_class_uid, header.study_uid,
                header.series_uid, header.modality, transfer_syntax, size)  # fmt: skip


@dataclass(frozen=True)
class ReceivedInstance:
    """An instance written to the spool, about to be indexed and acknowledged."""

    header: Header
    transfer_syntax: str
    calling_ae: str
    association_id: str
    relative_path: str
    size: int
    received_at: float
    own_output: bool


@dataclass(frozen=True)
class StoreOutcome:
    """What indexing an instance did: ``new``, ``duplicate`` (same bytes) or ``replaced``."""

    kind: str
    study_touched: bool  # the study's deadline moved, so this association now carries it
    study_started: bool  # a new study, or a completed one reopened: a new, earlier deadline
    study_reopened: bool


@dataclass(frozen=True)
class StudySummary:
    study_uid: str
    state: str  # "receiving" or "complete"
    instance_count: int
    first_received_at: float
    last_received_at: float
    open_associations: int
    due_at: float | None
    completed_at: float | None
    completions: int
    completion_reason: str | None
    purged_at: float | None = None  # when its files left the spool (storage.retention_hours)


@dataclass(frozen=True)
class Job:
    """A completed study, durable, waiting for the pipeline."""

    id: int
    study_uid: str
    generation: int
    created_at: float
    state: str
    instance_count: int
    reason: str
    started_at: float | None = None
    finished_at: float | None = None
    priority: str | None = None  # URGENT, FLAG or NONE once done
    summary: str | None = None  # JSON: the findings per hip, for tables and audits
    error: str | None = None  # why a failed job failed
    runs: int = 0  # times the pipeline started it


@dataclass(frozen=True)
class OutboxItem:
    """One result object for one destination."""

    id: int
    job_id: int
    study_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    path: str  # relative to the spool
    destination: str
    state: str  # pending, sent or dead
    attempts: int
    next_attempt_at: float
    last_error: str | None
    created_at: float
    sent_at: float | None


@dataclass(frozen=True)
class ResultObject:
    """A result written to the spool, about to be queued for every destination."""

    sop_instance_uid: str
    sop_class_uid: str
    path: str  # relative to the spool
    kind: str  # sr or sc


@dataclass(frozen=True)
class SourceImage:
    """An instance of a completed study, as routing sees it (header only, no pixels)."""

    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    path: Path  # in the spool
    view: str  # View Position, upper case ("" when absent)
    laterality: str  # R, L, B or "" (Image Laterality, else the series Laterality)
    attributes: Mapping[str, str]  # the routing attributes, "" when absent
    # The study's clinical text and the patient's variables from this header (never logged).
    clinical: ClinicalContext | None = None
    frames: int = 1  # Number of Frames: an enhanced CT image holds a whole series' slices
    # A CT image's extent in patient x (mm, LPS), from its geometry (every frame's, for an
    # enhanced one); else None.
    x_range: tuple[float, float] | None = None
    # A slice of a CT volume: a CT image (or enhanced / legacy converted enhanced CT) that is
    # not a localizer. A topogram or a dose report of Modality CT is no hip's CT.
    ct_slice: bool = False


@dataclass(frozen=True)
class HipTask:
    """One engine run on one hip: its AP region and, for dual-view engines, its lateral."""

    engine: str
    side: str  # R or L
    ap: SourceImage
    lateral: SourceImage | None = None
    # The study's earlier laterals of that hip, newest first, should ``lateral`` be unreadable.
    lateral_alternatives: tuple[SourceImage, ...] = ()
    rule: str = ""  # the routing rule or cascade that chose it
    # For a cascade's task: the engine and the finding on this hip that started it.
    trigger: tuple[str, str] | None = None
    ct_series: str | None = None  # the study's CT series, for engines with a CT input
    ct_alternatives: tuple[str, ...] = ()  # the next ones, should it be unusable


@dataclass(frozen=True)
class Prediction:
    """An engine's output for one hip: probabilities per class and maps on the input grid."""

    task: HipTask
    version: str
    classes: tuple[str, ...]
    probabilities: tuple[float, ...]
    heatmaps: Mapping[str, npt.NDArray[np.float32]]  # class -> [0, 1] map on the input grid
    pji_risk: float | None = None
    # Each input of a multi-input engine and whether it was there (a missing one is masked).
    inputs: Mapping[str, bool] = field(default_factory=dict)
    # What the report should say about the inputs beyond that (one given but not read).
    notes: tuple[str, ...] = ()
    # The engine's attention over its modalities (multimodal engine), summing to 1.
    attention: Mapping[str, float] = field(default_factory=dict)

    def probability(self, name: str) -> float:
        return self.probabilities[self.classes.index(name)]


@dataclass(frozen=True)
class HipFinding:
    """A class of one prediction with its threshold and the triage verdict."""

    name: str
    probability: float
    threshold: float
    present: bool
    urgent: bool
    normal: bool = False  # the engine's "no abnormality" class: present is not a finding


@dataclass(frozen=True)
class TriageDecision:
    """The triage of one hip by one engine."""

    prediction: Prediction
    findings: tuple[HipFinding, ...]
    priority: str  # URGENT, FLAG or NONE

    @property
    def positives(self) -> tuple[HipFinding, ...]:
        return tuple(f for f in self.findings if f.present and not f.normal)

    @property
    def top(self) -> HipFinding:
        return max(self.findings, key=lambda f: f.probability)
