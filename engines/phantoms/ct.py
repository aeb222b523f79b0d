"""CT phantoms of the right hip for the multimodal engine's four classes, and their DICOM series.

The volume is [z, y, x] in Hounsfield units on the axial layout of
:data:`dicom_node.synthetic.AXIAL` (patient LPS: x right->left, i.e. medial for this
hip, y anterior->posterior, z inferior->superior), centred on the field. It holds the
acetabulum (a hemispherical cup) with the ilium, pubic and ischial rami, and the femur
(head, neck, greater and lesser trochanters, shaft with a fatty medullary canal) in
soft tissue under a subcutaneous fat layer, with air at the lateral corners. Bone has
a cortical shell (1000-1500 HU) over trabecular bone (200-350 HU, with a smooth
texture); edges are partial-volume ramps one voxel wide, and white noise is added.

The anatomy is drawn in mm for a field whose smallest extent is 48 mm and scales
with the field (isotropically), so a larger grid or coarser spacing shows the same
hip rather than a smaller one. The same seed gives the same patient and noise
whatever the label; the label adds its lesion, marked in ``mask``:

* osteoarthritis: a narrowed joint space (0.3-0.8 mm against 1.8-2.6 mm), subchondral
  sclerosis of the acetabular roof and of the head's dome, roof cysts, and osteophytes
  at the lateral acetabular rim and at the head-neck junction;
* osteonecrosis_of_femoral_head: an anterosuperior necrotic segment of mottled, lower
  density inside a sclerotic rim, with a subchondral lucent crescent and, in about
  half of the cases, collapse (a flattened dome);
* femoroacetabular_impingement: a cam bump at the anterosuperior head-neck junction
  (60 %) or pincer over-coverage of the head by the acetabulum (40 %).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_node.synthetic import StudyIdentity, make_ct_series, write
from engines.ct_grid import volume_image
from engines.models.hip_multimodal import MULTIMODAL_CLASSES
from engines.phantoms.phantom import PhantomError, Streams, check_choice, check_seed

Array = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]
Vec = npt.NDArray[np.float64]

DEFAULT_SHAPE = (32, 64, 64)
DEFAULT_SPACING = (1.5, 1.0, 1.0)
MIN_EDGE, MAX_EDGE = 8, 1024
REFERENCE_MM = 48.0  # the smallest field extent the anatomy below is drawn for
# The range a 12-bit CT series with Rescale Intercept -1024 stores.
HU_RANGE = (-1024.0, 3071.0)
AIR, FAT, MUSCLE, MARROW = -1000.0, -100.0, 40.0, -30.0

# Clear of the radiograph series of engines.phantoms.studies (1 for the AP, 2-3 for laterals).
CT_SERIES_NUMBER = 10

# Random streams: one per purpose, so the label never changes the base anatomy.
ANATOMY, BODY, LESION, NOISE, TEXTURE = 0, 1, 2, 3, 4


@dataclass(frozen=True, eq=False)
class CtPhantom:
    """One drawn CT volume and the ground truth it was drawn with.

    ``array`` is [z, y, x] float32 Hounsfield units; ``spacing`` is (slice, row, column)
    in mm, the order of :func:`dicom_node.synthetic.make_ct_series`; ``mask`` marks the
    lesion (all False for a normal hip).
    """

    array: npt.NDArray[np.float32]
    spacing: tuple[float, float, float]
    mask: Mask
    label: str


def ct_hip(
    label: str,
    seed: int,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
) -> CtPhantom:
    """A CT volume of the right hip showing ``label`` (one of MULTIMODAL_CLASSES)."""
    index = check_choice("label", label, MULTIMODAL_CLASSES)
    streams = Streams(check_seed(seed))
    g = _Grid.of(_check_shape(shape), _check_spacing(spacing))
    hip = _sample_hip(streams.get(ANATOMY), g.unit)
    rng = streams.get(LESION, index)
    draft = _Draft(g, streams.get(TEXTURE))
    if label == "osteoarthritis":
        _osteoarthritis(draft, hip, rng)
    elif label == "osteonecrosis_of_femoral_head":
        _osteonecrosis(draft, hip, rng)
    elif label == "femoroacetabular_impingement":
        _impingement(draft, hip, rng)
    else:
        draft.draw_hip(hip)
    hu = _render(draft, hip, streams.get(BODY), streams.get(NOISE))
    return CtPhantom(hu, g.spacing, draft.mask, label)


def phantom_image(phantom: CtPhantom) -> Any:
    """``phantom`` as the ``sitk.Image`` that reading its written series gives (axial,
    centred on the patient origin like :func:`write_ct_study_series`), without files."""
    depth, height, width = phantom.array.shape
    dz, dy, dx = phantom.spacing
    origin = (-0.5 * (width - 1) * dx, -0.5 * (height - 1) * dy, -0.5 * (depth - 1) * dz)
    return volume_image(phantom.array, phantom.spacing, origin)


def write_ct_study_series(
    out_dir: Path,
    phantom: CtPhantom,
    identity: StudyIdentity,
    *,
    series_number: int = CT_SERIES_NUMBER,
    transfer_syntax: str = ExplicitVRLittleEndian,
    series_uid: str | None = None,
) -> list[Path]:
    """Write ``phantom`` as a CT series of the study ``identity``; the files in slice order.

    The field is centred on the patient origin; the Series Instance UID derives from the
    study, the series number and what the volume shows unless given, so writing the same
    phantom twice gives the same series.
    Files are named ``CT<series>_<slice>.dcm``; ``out_dir`` is created when missing.
    """
    if isinstance(series_number, bool) or not isinstance(series_number, int) or series_number < 0:
        raise PhantomError(f"series_number: expected a non-negative integer, got {series_number!r}")
    depth, height, width = phantom.array.shape
    dz, dy, dx = phantom.spacing
    origin = (-0.5 * (width - 1) * dx, -0.5 * (height - 1) * dy, -0.5 * (depth - 1) * dz)
    # What the volume shows enters too (its voxels, not only its label and shape: two seeds
    # of one class are other images): another volume is another series, not the same UIDs.
    voxels = hashlib.sha256(np.ascontiguousarray(phantom.array).tobytes()).hexdigest()
    uid = series_uid or generate_uid(
        entropy_srcs=[identity.study_uid, "ct-phantom", str(series_number), phantom.label,
                      repr(phantom.array.shape), repr(phantom.spacing), voxels]
    )  # fmt: skip
    datasets = make_ct_series(
        phantom.array,
        identity=identity,
        spacing_mm=phantom.spacing,
        origin_mm=origin,
        laterality="R",
        series_uid=uid,
        series_number=series_number,
        transfer_syntax=transfer_syntax,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        write(ds, out / f"CT{series_number:03d}_{k + 1:04d}.dcm") for k, ds in enumerate(datasets)
    ]


# Arguments ----------------------------------------------------------------------------


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    valid = (
        isinstance(shape, Sequence)
        and len(shape) == 3
        and all(
            isinstance(n, int | np.integer)
            and not isinstance(n, bool)
            and MIN_EDGE <= n <= MAX_EDGE
            for n in shape
        )
    )
    if not valid:
        raise PhantomError(
            f"shape: expected three integers {MIN_EDGE}-{MAX_EDGE} (z, y, x), got {shape!r}"
        )
    z, y, x = (int(n) for n in shape)
    return z, y, x


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    valid = (
        isinstance(spacing, Sequence)
        and len(spacing) == 3
        and all(
            isinstance(v, int | float | np.number)
            and not isinstance(v, bool)
            and math.isfinite(v)
            and 0 < v <= 10.0
            for v in spacing
        )
    )
    if not valid:
        raise PhantomError(
            f"spacing: expected three positive numbers up to 10 mm (z, y, x), got {spacing!r}"
        )
    z, y, x = (float(v) for v in spacing)
    return z, y, x


# Geometry -----------------------------------------------------------------------------


def _unit(v: Sequence[float] | Vec) -> Vec:
    a = np.asarray(v, dtype=np.float64)
    return a / float(np.linalg.norm(a))


@dataclass(frozen=True)
class _Grid:
    """Voxel centres in mm, relative to the field's centre, as broadcastable [z, y, x] axes.

    ``x`` is (1, 1, W), ``y`` (1, H, 1) and ``z`` (D, 1, 1), so per-axis terms stay small
    and only their sums fill the volume.
    """

    shape: tuple[int, int, int]
    x: Array
    y: Array
    z: Array
    spacing: tuple[float, float, float]
    unit: float  # mm of anatomy per mm of the reference hip
    edge: float  # width of the partial-volume ramp (mm)

    @classmethod
    def of(cls, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> _Grid:
        z, y, x = (
            ((np.arange(n) - 0.5 * (n - 1)) * s)
            .astype(np.float32)
            .reshape([n if a == i else 1 for a in range(3)])
            for i, (n, s) in enumerate(zip(shape, spacing, strict=True))
        )
        extent = min(n * s for n, s in zip(shape, spacing, strict=True))
        return cls(shape, x, y, z, spacing, extent / REFERENCE_MM, min(spacing))

    def _axes(self, c: Vec) -> tuple[Array, Array, Array]:
        """The per-axis offsets from ``c`` (float32; Python floats keep the dtype)."""
        cx, cy, cz = (float(v) for v in c)
        return self.x - cx, self.y - cy, self.z - cz

    def dot(self, c: Vec, u: Vec) -> Array:
        x, y, z = self._axes(c)
        ux, uy, uz = (float(v) for v in u)
        out: Array = (x * ux + y * uy) + z * uz
        return out

    def dist(self, c: Vec) -> Array:
        x, y, z = self._axes(c)
        out: Array = (x * x + y * y) + z * z
        return np.sqrt(out, out=out)

    def sphere(self, c: Vec, r: float) -> Array:
        out = self.dist(c)
        out -= r
        return out

    def capsule(self, a: Vec, b: Vec, r: float) -> Array:
        """Distance to the segment a-b, less r.

        With s = (p - a).ab / |ab|^2 and t = clip(s, 0, 1), |p - a - t ab|^2 =
        |p - a|^2 + (|ab| (s - t))^2 - (|ab| s)^2.
        """
        ab = b - a
        length2 = float(ab @ ab)
        x, y, z = self._axes(a)
        ux, uy, uz = (float(v) / length2 for v in ab)
        along = (x * ux + y * uy) + z * uz
        out: Array = np.clip(along, 0.0, 1.0)
        np.subtract(along, out, out=out)
        np.multiply(out, out, out=out)
        np.multiply(along, along, out=along)
        out -= along
        out *= length2
        out += (x * x + y * y) + z * z
        np.maximum(out, 0.0, out=out)
        np.sqrt(out, out=out)
        out -= r
        return out

    def ellipsoid(self, c: Vec, axes: Sequence[float]) -> Array:
        x, y, z = self._axes(c)
        ax, ay, az = (float(v) for v in axes)
        out: Array = ((x / ax) ** 2 + (y / ay) ** 2) + (z / az) ** 2
        np.sqrt(out, out=out)
        out -= 1.0
        out *= min(ax, ay, az)
        return out

    def fill(self, d: Array) -> Array:
        """The fraction of each voxel inside the surface d = 0 (d < 0 inside)."""
        out: Array = np.clip(0.5 - d * (1.0 / self.edge), 0.0, 1.0)
        return out

    def smooth(self, rng: np.random.Generator, cells: int = 6) -> Array:
        """A smooth random field in about [-1, 1]: a coarse grid, interpolated linearly."""
        coarse = rng.uniform(-1.0, 1.0, (cells, cells, cells)).astype(np.float32)
        mz, my, mx = (_interpolation(cells, n) for n in self.shape)
        out: Array = np.einsum("zi,ijk->zjk", mz, coarse)
        out = np.einsum("yj,zjk->zyk", my, out)
        out = out @ mx.T
        return out


def _interpolation(cells: int, n: int) -> Array:
    """The (n, cells) matrix of linear interpolation from ``cells`` knots to ``n`` samples."""
    pos = np.linspace(0.0, cells - 1.0, n)
    lo = np.minimum(np.floor(pos).astype(int), cells - 2)
    frac = pos - lo
    m = np.zeros((n, cells), np.float32)
    m[np.arange(n), lo] = 1.0 - frac
    m[np.arange(n), lo + 1] = frac
    return m


@dataclass(frozen=True)
class _Hip:
    """One right hip, lengths in mm (already scaled to the field)."""

    head: Vec
    radius: float
    neck_dir: Vec  # from the neck-shaft junction towards the head centre
    junction: Vec
    neck_radius: float
    shaft_dir: Vec  # distal
    shaft_radius: float
    socket: Vec
    cup_axis: Vec  # from the socket centre into the pelvis
    joint_space: float
    cup_thickness: float
    coverage: float  # half-angle of the cup, degrees
    cortical: float  # HU
    trabecular: float  # HU
    unit: float

    @property
    def socket_inner(self) -> float:
        return self.radius + self.joint_space


def _sample_hip(rng: np.random.Generator, u: float) -> _Hip:
    radius = rng.uniform(9.0, 10.5) * u
    head = np.array([rng.uniform(5.0, 9.0), rng.uniform(-2.0, 2.0), rng.uniform(2.0, 6.0)]) * u
    # Neck-shaft angle 125-138 degrees, anteversion 8-20 degrees (the head points forward, -y).
    theta = math.radians(180.0 - rng.uniform(125.0, 138.0))
    beta = math.radians(rng.uniform(8.0, 20.0))
    neck_dir = np.array(
        [math.sin(theta) * math.cos(beta), -math.sin(theta) * math.sin(beta), math.cos(theta)]
    )
    junction = head - rng.uniform(1.9, 2.2) * radius * neck_dir
    return _Hip(
        head=head,
        radius=radius,
        neck_dir=neck_dir,
        junction=junction,
        neck_radius=rng.uniform(0.58, 0.66) * radius,
        shaft_dir=_unit([rng.uniform(0.05, 0.15), rng.uniform(-0.05, 0.05), -1.0]),
        shaft_radius=rng.uniform(0.75, 0.85) * radius,
        socket=head.copy(),
        cup_axis=_unit([rng.uniform(0.5, 0.7), rng.uniform(0.1, 0.3), 0.75]),
        joint_space=rng.uniform(1.8, 2.6) * u,
        cup_thickness=rng.uniform(4.5, 6.5) * u,
        coverage=rng.uniform(80.0, 90.0),
        cortical=rng.uniform(1100.0, 1400.0),
        trabecular=rng.uniform(220.0, 330.0),
        unit=u,
    )


def _cone_dir(axis: Vec, away: Vec, angle: float) -> Vec:
    """The direction at ``angle`` degrees from ``axis``, turned towards ``away``."""
    side = away - float(away @ axis) * axis
    side = side / float(np.linalg.norm(side))
    a = math.radians(angle)
    return math.cos(a) * axis + math.sin(a) * side


class _Draft:
    """The bones being drawn: signed distances, HU inside, edits, and the lesion mask."""

    def __init__(self, g: _Grid, texture: np.random.Generator) -> None:
        self.g = g
        self.texture = g.smooth(texture)
        self.mottle = g.smooth(texture, 9)
        self.femur = np.zeros(0, np.float32)
        self.pelvis = np.zeros(0, np.float32)
        self.head_dist = np.zeros(0, np.float32)
        self.femur_add = np.zeros(g.shape, np.float32)
        self.pelvis_add = np.zeros(g.shape, np.float32)
        # (mask, HU) pairs that replace the inside of a bone: cysts, necrosis, crescents.
        self.femur_set: list[tuple[Mask, float | Array]] = []
        self.pelvis_set: list[tuple[Mask, float | Array]] = []
        self.mask = np.zeros(g.shape, np.bool_)

    def cup(self, hip: _Hip) -> Array:
        """The acetabulum: a spherical shell around the socket within ``coverage`` of its axis."""
        g = self.g
        inner = hip.socket_inner
        outer = inner + hip.cup_thickness
        r = g.dist(hip.socket)
        shell = np.abs(r - 0.5 * (inner + outer)) - 0.5 * (outer - inner)
        # Distance to the cone of half-angle ``coverage``: r sin(angle - coverage).
        along = g.dot(hip.socket, hip.cup_axis)
        half = math.radians(hip.coverage)
        across = np.sqrt(np.maximum(r * r - along * along, 0.0))
        cone = math.cos(half) * across - math.sin(half) * along
        out: Array = np.maximum(shell, cone)
        return out

    def draw_hip(self, hip: _Hip) -> None:
        g, s, u = self.g, hip.socket, hip.unit
        ilium = g.ellipsoid(s + np.array([9.0, 5.0, 22.0]) * u, [5.5 * u, 16.0 * u, 20.0 * u])
        pubis = g.capsule(
            s + np.array([5.0, -5.0, -3.0]) * u, s + np.array([40.0, -20.0, -8.0]) * u, 4.5 * u
        )
        ischium = g.capsule(
            s + np.array([3.0, 8.0, -7.0]) * u, s + np.array([8.0, 14.0, -32.0]) * u, 6.0 * u
        )
        pelvis = np.minimum(np.minimum(self.cup(hip), ilium), np.minimum(pubis, ischium))
        # Keep the socket hollow.
        self.pelvis = np.maximum(pelvis, hip.socket_inner - g.dist(s))
        self.head_dist = g.dist(hip.head)
        head = self.head_dist - hip.radius
        neck = g.capsule(hip.head, hip.junction, hip.neck_radius)
        r = hip.radius
        top = hip.junction - 0.2 * r * hip.shaft_dir
        shaft = g.capsule(top, hip.junction + 90.0 * u * hip.shaft_dir, hip.shaft_radius)
        greater = g.ellipsoid(
            hip.junction + np.array([-0.35, 0.25, 0.5]) * r, [0.55 * r, 0.7 * r, 0.9 * r]
        )
        lesser = g.sphere(hip.junction + np.array([0.45, 0.55, -1.1]) * r, 0.3 * r)
        self.femur = np.minimum(
            np.minimum(head, neck), np.minimum(shaft, np.minimum(greater, lesser))
        )

    def femur_value(self, hip: _Hip) -> Array:
        """HU of the femur where it is bone: cortex over trabecular bone, marrow in the shaft."""
        g, u = self.g, hip.unit
        below = float(hip.junction[2]) - g.z
        diaphysis = np.clip(below / (1.5 * hip.radius), 0.0, 1.0)
        canal = np.clip((below - hip.radius) / hip.radius, 0.0, 1.0)
        spongy = hip.trabecular * (1.0 + 0.15 * self.texture)
        inside = spongy * (1.0 - canal) + MARROW * canal
        for where, value in self.femur_set:
            inside = np.where(where, value, inside)
        return (
            _bone(self.femur, (1.0 + 1.8 * diaphysis) * u, g.edge, hip.cortical, inside)
            + self.femur_add
        )

    def pelvis_value(self, hip: _Hip) -> Array:
        """HU of the pelvis where it is bone: cortex over trabecular bone."""
        inside = 0.9 * hip.trabecular * (1.0 + 0.15 * self.texture)
        for where, value in self.pelvis_set:
            inside = np.where(where, value, inside)
        return (
            _bone(self.pelvis, 1.2 * hip.unit, self.g.edge, hip.cortical, inside) + self.pelvis_add
        )


def _bone(d: Array, cortex: float | Array, edge: float, cortical: float, inside: Array) -> Array:
    """Cortical HU within ``cortex`` mm of the surface d = 0, ``inside`` deeper (ramped)."""
    shell = np.clip(0.5 + (d + cortex) / edge, 0.0, 1.0)
    out: Array = inside + shell * (cortical - inside)
    return out


def _render(
    draft: _Draft, hip: _Hip, body_rng: np.random.Generator, noise_rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """Soft tissue, then the pelvis and the femur over it, then noise; HU in HU_RANGE."""
    g = draft.g
    u = g.unit
    # The body's outline: an ellipse centred medially (the midline), extruded along z.
    cx, cy = body_rng.uniform(38.0, 46.0) * u, body_rng.uniform(-4.0, 4.0) * u
    hx, hy = body_rng.uniform(62.0, 72.0) * u, body_rng.uniform(42.0, 50.0) * u
    q = np.sqrt(((g.x - cx) / hx) ** 2 + ((g.y - cy) / hy) ** 2).astype(np.float32, copy=False)
    skin = (q - 1.0) * min(hx, hy)
    fat = body_rng.uniform(3.0, 6.0) * u
    muscle = g.fill(skin + fat)
    hu = np.broadcast_to(AIR + g.fill(skin) * (FAT - AIR) + muscle * (MUSCLE - FAT), g.shape)
    # Intermuscular fat around the joint.
    for _ in range(3):
        c = body_rng.uniform((-25.0, -25.0, -20.0), (25.0, 25.0, 20.0)) * u
        blob = g.ellipsoid(c, list(body_rng.uniform(2.0, 5.0, 3) * u))
        hu = hu + g.fill(blob) * muscle * (FAT - MUSCLE)
    for d, value in (
        (draft.pelvis, draft.pelvis_value(hip)),
        (draft.femur, draft.femur_value(hip)),
    ):
        occupied = g.fill(d)
        hu = hu * (1.0 - occupied) + occupied * value
    sigma = noise_rng.uniform(6.0, 12.0)
    hu += noise_rng.standard_normal(hu.shape, dtype=np.float32) * sigma
    out: npt.NDArray[np.float32] = np.clip(hu, *HU_RANGE).astype(np.float32)
    return out


# Lesions ------------------------------------------------------------------------------


def _osteoarthritis(draft: _Draft, hip: _Hip, rng: np.random.Generator) -> None:
    g, u = draft.g, hip.unit
    hip = replace(hip, joint_space=rng.uniform(0.3, 0.8) * u)
    draft.draw_hip(hip)
    load = _unit([0.35, 0.0, 1.0])  # the weight-bearing dome
    limit = math.cos(math.radians(50.0))
    r_socket = g.dist(hip.socket)
    inner = hip.socket_inner
    roof_depth = rng.uniform(2.5, 4.0) * u
    roof = (
        (r_socket >= inner - 0.5 * g.edge)
        & (r_socket <= inner + roof_depth)
        & (g.dot(hip.socket, load) > limit * r_socket)
        & (draft.pelvis < 0)
    )
    head_depth = rng.uniform(2.0, 3.5) * u
    dome = (
        (draft.head_dist <= hip.radius)
        & (draft.head_dist >= hip.radius - head_depth)
        & (g.dot(hip.head, load) > limit * draft.head_dist)
    )
    draft.pelvis_add += roof * rng.uniform(500.0, 800.0)
    draft.femur_add += dome * rng.uniform(400.0, 700.0)
    # Subchondral cysts in the roof.
    for _ in range(int(rng.integers(1, 3))):
        tilt = _cone_dir(load, _unit(rng.normal(size=3)), rng.uniform(0.0, 30.0))
        centre = hip.socket + tilt * (inner + 0.6 * roof_depth)
        cyst = g.sphere(centre, rng.uniform(1.2, 2.0) * u) < 0
        draft.pelvis_set.append((cyst, rng.uniform(10.0, 40.0)))
        draft.pelvis_add[cyst] = 0.0
    # Osteophytes: the lateral acetabular rim, and the head-neck junction away from the cup.
    lateral = np.array([-1.0, 0.0, -0.2])
    mid = 0.5 * (inner + inner + hip.cup_thickness)
    rim = g.capsule(
        hip.socket + _cone_dir(hip.cup_axis, lateral, hip.coverage - 5.0) * mid,
        hip.socket + _cone_dir(hip.cup_axis, lateral, hip.coverage + 22.0) * (inner + 2.0 * u),
        rng.uniform(1.5, 2.2) * u,
    )
    spurs = np.full(g.shape, np.inf, np.float32)
    for _ in range(int(rng.integers(2, 4))):
        away = _cone_dir(-hip.cup_axis, _unit(rng.normal(size=3)), rng.uniform(0.0, 50.0))
        m = _cone_dir(hip.neck_dir, away, rng.uniform(95.0, 110.0))
        spurs = np.minimum(spurs, g.sphere(hip.head + m * hip.radius, rng.uniform(1.5, 2.5) * u))
    draft.pelvis = np.minimum(draft.pelvis, rim)
    draft.femur = np.minimum(draft.femur, spurs)
    draft.mask = roof | dome | (rim < 0) | (spurs < 0)


def _osteonecrosis(draft: _Draft, hip: _Hip, rng: np.random.Generator) -> None:
    g, u = draft.g, hip.unit
    draft.draw_hip(hip)
    front = _unit([0.2 + rng.uniform(-0.1, 0.1), -0.5 + rng.uniform(-0.15, 0.15), 0.85])
    centre = hip.head + front * hip.radius * rng.uniform(0.85, 1.0)
    reach = g.sphere(centre, rng.uniform(0.5, 0.7) * hip.radius)
    head = draft.head_dist - hip.radius
    segment = np.maximum(reach, head) < 0
    if rng.random() < 0.5:
        flat = rng.uniform(1.0, 2.5) * u
        cut = g.dot(hip.head, front) - (hip.radius - flat)
        draft.femur = np.where(
            draft.head_dist < 1.5 * hip.radius, np.maximum(draft.femur, cut), draft.femur
        )
        surface = hip.radius - flat
        depth = np.minimum(hip.radius - draft.head_dist, surface - g.dot(hip.head, front))
    else:
        depth = hip.radius - draft.head_dist
    necrotic = rng.uniform(80.0, 150.0) + 80.0 * draft.mottle
    draft.femur_set.append((segment, necrotic))
    # The sclerotic rim of reactive live bone around the segment, and the lucent
    # subchondral crescent under its surface.
    rim = (reach > -0.2 * u) & (reach < 1.2 * u) & (head < -0.5 * u)
    draft.femur_add += rim * rng.uniform(450.0, 700.0)
    crescent = segment & (np.abs(depth - 1.4 * u) < 0.45 * u)
    draft.femur_set.append((crescent, rng.uniform(0.0, 30.0)))
    draft.mask = segment | rim


def _impingement(draft: _Draft, hip: _Hip, rng: np.random.Generator) -> None:
    g = draft.g
    if rng.random() < 0.6:
        # Cam: bone filling the anterosuperior head-neck offset.
        draft.draw_hip(hip)
        n, r = hip.neck_dir, hip.radius
        front = _cone_dir(n, _unit([0.0, -0.5, 1.0]), 90.0)
        bump = g.capsule(
            hip.head - n * 0.6 * r + front * 0.72 * r,
            hip.head - n * 1.2 * r + front * 0.52 * r,
            rng.uniform(0.28, 0.35) * r,
        )
        draft.mask = (bump < 0) & (draft.femur >= 0)
        draft.femur = np.minimum(draft.femur, bump)
    else:
        # Pincer: the acetabulum covers the head further.
        normal = draft.cup(hip)
        deep = replace(hip, coverage=hip.coverage + rng.uniform(15.0, 25.0))
        draft.draw_hip(deep)
        draft.mask = (draft.cup(deep) < 0) & (normal >= 0) & (draft.pelvis < 0)
