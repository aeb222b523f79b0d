"""A site's labelled DICOM folder as a training set: DICOM files plus a CSV of labels.

Screening engines (one view): columns ``file,label`` and optionally ``side``.
Hip-Net (AP + lateral): columns ``ap_file,lateral_file,label`` and optionally
``side``; ``lateral_file`` may be empty (the hip is trained without it). Any other
column, or one given twice, is refused (a misspelt one would be ignored). An image whose
View Position contradicts its column (a lateral as the AP) is refused; an AP without a
View Position is taken as the column says.
Paths are relative to the CSV's folder. ``side`` (R or L) picks that hip of an
AP pelvis (split at the midline, the left hip mirrored); without it the image's
(Image) Laterality decides: R or L is a single-hip image (L mirrored), B or
none is split by ``side``, which is then required. A lateral shows one hip, the
AP's, and must be one the node would pair with it (dicom_node.route.not_a_lateral_of:
a lateral View Position, the hip's (Image) Laterality, CR or DX For Presentation, body part
HIP, PELVIS or none), else the row is refused; it is used whole, mirrored when its rows run
toward the anterior (Patient Orientation A\\...), without an orientation for a left hip (as
serving does, engines/regions.py). No mask is known, so the pointing game is not computed
for such a set.

Each row's patient comes from the headers: Patient ID (0010,0020), else the Study Instance
UID; an AP and its lateral join their patients into one. The split keeps a patient's rows
on one side, so copies of an image under two paths, or two studies of one patient, do not
sit in training and test at once. A hip (SOP Instance UID and side) given twice is refused.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset

from dicom_node.config_results import RoutingConfig
from dicom_node.errors import UNREADABLE_DICOM, describe, not_utf8
from dicom_node.route import not_a_lateral_of, source_image
from engines.catalog import EngineSpec
from engines.pixels import Image, PixelDataError, display_pixels, pixel_spacing, prepare
from engines.regions import HipRegion, RegionError, hip_regions
from engines.training.data import DataError, HipSet


@dataclass(frozen=True)
class LabelledFolder:
    """A labelled folder's hips and each hip's patient (an opaque key: a digest of the
    Patient ID or Study Instance UID, never the value)."""

    hips: HipSet
    patients: tuple[str, ...]


def load_labelled_folder(
    spec: EngineSpec, csv_path: Path, size: int, routing: RoutingConfig | None = None
) -> LabelledFolder:
    """Read every row of ``csv_path`` into a :class:`HipSet` at ``size`` pixels; a lateral
    must be one the node, routing as ``routing`` says (default: the default routing),
    would pair with its hip."""
    routing = routing if routing is not None else RoutingConfig()
    dual = "LATERAL" in spec.views
    required = ("ap_file", "lateral_file", "label") if dual else ("file", "label")
    header, rows = _rows(csv_path)
    if not rows:
        raise DataError(f"{csv_path}: no rows")
    missing = [name for name in required if name not in header]
    if missing:
        raise DataError(
            f"{csv_path}: missing column(s) {missing} for engine {spec.name} "
            f"(the header has: {', '.join(header)})"
        )
    # A misspelt column was ignored: "lateral_path" trained a Hip-Net without a lateral.
    unknown = [name for name in header if name not in (*required, "side")]
    twice = sorted({name for name in header if header.count(name) > 1})
    problems = [f"unknown column(s) {unknown}"] if unknown else []
    problems += [f"column(s) {twice} given twice"] if twice else []
    if problems:
        raise DataError(
            f"{csv_path}: {'; '.join(problems)} (the columns of engine {spec.name}: "
            f"{', '.join(required)}, side)"
        )
    base = csv_path.parent
    ap, lateral, present, labels = [], [], [], []
    patients, row_patients = _Patients(), []
    hips: dict[tuple[str, str], str] = {}  # (SOP Instance UID, side) -> its row
    for where, row in rows:
        label = row["label"]
        if label not in spec.class_names:
            raise DataError(
                f"{where}: label {label!r} is not a class of {spec.name} "
                f"({', '.join(spec.class_names)})"
            )
        side = row.get("side", "").upper()
        path = base / _path(row, required[0], where)
        ds, image, side = _hip(path, side, size, where, required[0], routing)
        hip = (str(ds.SOPInstanceUID), side)
        if hip in hips:
            raise DataError(
                f"{where}: the {side} hip of {path.name} is already on {hips[hip]} (a hip "
                "given twice would count twice, or carry two labels)"
            )
        hips[hip] = where
        patient = patients.key(ds)
        row_patients.append(patient)
        ap.append(image)
        if dual:
            name = row.get("lateral_file", "")
            seen = bool(name)
            if seen:
                lateral_ds, lateral_image = _lateral(
                    base / name, side, size, where, routing, str(ds.StudyInstanceUID)
                )
                patients.join(patient, patients.key(lateral_ds))
            lateral.append(lateral_image if seen else np.zeros_like(image))
            present.append(1.0 if seen else 0.0)
        labels.append(spec.class_names.index(label))
    data = HipSet(
        ap=torch.from_numpy(np.stack(ap)[:, None]),
        labels=torch.tensor(labels, dtype=torch.long),
        lateral=torch.from_numpy(np.stack(lateral)[:, None]) if dual else None,
        lateral_present=torch.tensor(present) if dual else None,
    )
    return LabelledFolder(data, tuple(patients.root(key) for key in row_patients))


class _Patients:
    """Each row's patient; a row's AP and lateral of two keys (a Patient ID on one, none on
    the other) join them into one patient (union-find)."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}

    def key(self, ds: Dataset) -> str:
        patient_id = str(ds.get("PatientID") or "").strip()
        value = f"patient {patient_id}" if patient_id else f"study {ds.get('StudyInstanceUID')}"
        key = hashlib.sha256(value.encode()).hexdigest()[:16]
        self._parent.setdefault(key, key)
        return key

    def join(self, a: str, b: str) -> None:
        self._parent[self.root(b)] = self.root(a)

    def root(self, key: str) -> str:
        while self._parent[key] != key:
            key = self._parent[key]
        return key


def _path(row: dict[str, str], column: str, where: str) -> str:
    if not row[column]:
        raise DataError(f"{where}: {column}: expected a DICOM file's path, got an empty field")
    return row[column]


def _hip(
    path: Path, side: str, size: int, where: str, column: str, routing: RoutingConfig
) -> tuple[Dataset, Image, str]:
    """The AP's data set, the input of the row's hip, and that hip's side (R or L)."""
    ds, picture = _read(path, where)
    _identified(ds, path, where, column)
    # The header as serving reads it (stripped, upper-cased, a multi-frame image's Frame
    # Laterality): a ' R' read as no laterality was trained as a pelvis's half, served whole.
    source = source_image(ds, path, "")
    view, laterality = source.view, source.laterality
    if view in {v.upper() for v in routing.lateral_views}:  # never this input at serving
        raise DataError(
            f"{where}: {column}: {path.name} is a lateral view (View Position {view}); "
            "this column takes an AP or PA image"
        )
    if side and side not in ("R", "L"):
        raise DataError(f"{where}: side: expected R or L, got {side!r}")
    if laterality in ("R", "L"):
        if side and side != laterality:
            raise DataError(f"{where}: side {side} contradicts the image's laterality {laterality}")
        [region] = _regions(picture, laterality, ds, where)
    elif side:
        [region] = [r for r in _regions(picture, "B", ds, where) if r.side == side]
    else:
        raise DataError(
            f"{where}: {path.name} shows both hips (laterality {laterality or 'none'}); "
            "give the side column (R or L)"
        )
    return ds, prepare(region.cut(picture), pixel_spacing(ds), size)[0], region.side


def _lateral(
    path: Path, side: str, size: int, where: str, routing: RoutingConfig, study: str
) -> tuple[Dataset, Image]:
    """The lateral of hip ``side`` as serving prepares it (dicom_node/preprocess.py): serving
    pairs a lateral whose laterality is the hip's and takes it whole, mirrored as
    engines/regions.py decides (rows toward the anterior; without an orientation, a left
    hip)."""
    ds, picture = _read(path, where)
    # Serving's own test: a pair it never makes (no laterality, no View Position, a For
    # Processing copy, a knee lateral) was trained with lateral_present 1, and the engine
    # learnt from an input it never gets.
    _identified(ds, path, where, "lateral_file")
    if str(ds.StudyInstanceUID) != study:
        raise DataError(
            f"{where}: lateral_file: {path.name} is of another study than its AP (the node "
            "pairs a lateral with an AP of its own study only)"
        )
    why = not_a_lateral_of(source_image(ds, path, ""), side, routing)
    if why:
        raise DataError(
            f"{where}: lateral_file: {path.name} is not a lateral the node pairs with hip "
            f"{side}: {why}; correct its header, or leave lateral_file empty to train the hip "
            "without one"
        )
    [region] = _regions(picture, side, ds, where)
    return ds, prepare(region.cut(picture), pixel_spacing(ds), size)[0]


def _identified(ds: Dataset, path: Path, where: str, column: str) -> None:
    """Refuse an image without the UIDs the node needs (it answers such an instance 0xC211:
    an engine must not learn from what it is never given)."""
    identifying = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")
    absent = [k for k in identifying if not ds.get(k)]
    if absent:
        raise DataError(
            f"{where}: {column}: {path.name} has no {', '.join(absent)} (the node refuses "
            "an instance without it)"
        )


def _regions(picture: Image, laterality: str, ds: Dataset, where: str) -> tuple[HipRegion, ...]:
    try:
        return hip_regions(picture.shape, laterality, ds.get("PatientOrientation"))
    except RegionError as exc:  # e.g. an image turned 90 degrees: the row names it
        raise DataError(f"{where}: {exc}") from exc


def _read(path: Path, where: str) -> tuple[Dataset, Image]:
    """The data set and its displayed picture."""
    try:
        ds = pydicom.dcmread(path)
    except UNREADABLE_DICOM as exc:  # absent, not DICOM, truncated, garbled
        raise DataError(f"{where}: cannot read DICOM file {path} ({describe(exc)})") from exc
    try:
        picture = display_pixels(ds)
    except PixelDataError as exc:
        raise DataError(f"{where}: {exc}") from exc
    return ds, picture


def _rows(csv_path: Path) -> tuple[list[str], list[tuple[str, dict[str, str]]]]:
    """The CSV's column names and its rows, each with its place ("labels.csv:7", the line it
    begins on) and its fields stripped; blank lines and rows of empty fields (a spreadsheet's)
    are skipped. UTF-8, with or without the byte-order mark Excel's "CSV UTF-8" writes."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            records = _records(handle, csv_path)
            _, _, header = next(records, (1, 1, []))
            rows = []
            for start, end, values in records:
                if not any(values):
                    continue
                where = f"{csv_path}:{start}"
                if len(values) != len(header):
                    raise DataError(
                        f"{where}: expected {len(header)} fields ({', '.join(header)}), "
                        f"got {len(values)}{_runs_on(start, end)}"
                    )
                rows.append((where, dict(zip(header, values, strict=True))))
    except OSError as exc:
        raise DataError(f"{csv_path}: cannot read ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{csv_path}: {not_utf8(exc)}; save it as CSV UTF-8") from exc
    return header, rows


def _records(handle: IO[str], csv_path: Path) -> Iterator[tuple[int, int, list[str]]]:
    """Each CSV row of ``handle``, its fields stripped, with the lines it begins and ends on:
    a quoted field may hold line breaks, and a quote left open runs its row on to the end of
    the file (the reader's line number is then the file's last line, not the row's)."""
    reader = csv.reader(handle)
    start = 1
    try:
        for fields in reader:
            yield start, reader.line_num, [value.strip() for value in fields]
            start = reader.line_num + 1
    except csv.Error as exc:  # "field larger than field limit (131072)": a quote left open
        raise DataError(
            f"{csv_path}:{start}: cannot read the row: {exc}{_runs_on(start, reader.line_num)}"
        ) from exc


def _runs_on(start: int, end: int) -> str:
    """What a row read over several lines adds to its error: where it stopped."""
    if end <= start:
        return ""
    return f"; the row runs from line {start} to line {end} (a quote not closed?)"
