"""Typed records passed between the node's stages."""

from __future__ import annotations

from dataclasses import dataclass


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
