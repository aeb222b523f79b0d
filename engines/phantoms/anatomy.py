"""The patient and hip that every phantom starts from, and how they are drawn.

A :class:`Hip` holds one hip's geometry; :func:`ap_view` and :func:`lateral_view` project
it into the two radiographic views (the craniocaudal axis, y, is shared, so a feature lies
on the same rows in both). Drawing functions work on a :class:`HipView` and a
:class:`~engines.phantoms.canvas.Canvas`, so lesions and implants are written once for
both views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from engines.phantoms.canvas import (
    STILL,
    Canvas,
    Field,
    Look,
    Point,
    Pose,
    Rigid,
    add,
    capsule,
    capsule_at,
    circle,
    ellipse,
    line,
)

Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Patient:
    """What both hips of one patient share: habitus, positioning, exposure, the midline."""

    look: Look
    pose: Pose
    soft: float  # soft-tissue attenuation at the midline
    skin: float  # lateral skin line (x) at the level of the trochanter
    waist: float  # how much the skin line curves in above and below it
    symphysis_y: float
    sacrum_y: float


@dataclass(frozen=True)
class Hip:
    """One hip's geometry in the AP frame of its (right, canonical) region."""

    acetabulum: Point
    head_r: float
    joint_space: float
    ce_angle: float  # lateral centre-edge angle, degrees
    neck_shaft: float  # degrees
    neck_len: float
    tilt: float  # femoral shaft from vertical, degrees (distal end medial)
    shaft_r: float
    anteversion: float  # degrees
    lateral_x: float  # the shaft's position on the lateral view


@dataclass(frozen=True)
class HipView:
    """A hip projected into one view: everything a drawing needs, in anatomical units."""

    lateral: bool
    socket: Point
    socket_r: float
    rim: Point  # lateral acetabular edge (AP); the anterior edge (lateral view)
    head: Point
    head_r: float
    base: Point  # neck base on the shaft axis
    down: Point  # unit vector along the shaft, distal
    medial: Point  # unit normal to the shaft: toward the pelvis (AP), posterior (lateral)
    neck_r: tuple[float, float]  # at the head, at the base
    gt: Point
    gt_r: float
    lt: Point
    lt_r: float
    shaft_r: float

    def along(self, s: float, n: float = 0.0) -> Point:
        """The point ``s`` down the shaft axis from the neck base and ``n`` toward medial."""
        return (
            self.base[0] + s * self.down[0] + n * self.medial[0],
            self.base[1] + s * self.down[1] + n * self.medial[1],
        )


def sample_patient(rng: np.random.Generator) -> Patient:
    u = rng.uniform
    look = Look(
        gain=u(0.86, 1.0),
        offset=u(0.0, 0.05),
        gamma=u(0.85, 1.2),
        noise=u(0.008, 0.025),
        bone=u(0.85, 1.15),
    )
    pose = Pose(
        angle=math.radians(u(-6.0, 6.0)),
        scale=u(0.92, 1.06),
        shift=(u(-0.04, 0.04), u(-0.04, 0.04)),
    )
    return Patient(
        look=look,
        pose=pose,
        soft=u(0.16, 0.28),
        skin=u(0.01, 0.09),
        waist=u(0.15, 0.45),
        symphysis_y=u(0.47, 0.52),
        sacrum_y=u(-0.1, -0.02),
    )


def sample_hip(rng: np.random.Generator) -> Hip:
    u = rng.uniform
    return Hip(
        acetabulum=(u(0.53, 0.59), u(0.25, 0.29)),
        head_r=u(0.088, 0.102),
        joint_space=u(0.022, 0.03),
        ce_angle=u(28.0, 40.0),
        neck_shaft=u(125.0, 137.0),
        neck_len=u(0.22, 0.26),
        tilt=u(3.0, 8.0),
        shaft_r=u(0.066, 0.076),
        anteversion=u(8.0, 20.0),
        lateral_x=u(0.45, 0.53),
    )


def _neck_dir(down: Point, medial: Point, neck_shaft: float) -> Point:
    """Unit vector from the neck base to the head: 'up' turned medially by 180 - angle."""
    b = math.radians(180.0 - neck_shaft)
    return (
        -down[0] * math.cos(b) + medial[0] * math.sin(b),
        -down[1] * math.cos(b) + medial[1] * math.sin(b),
    )


def ap_view(hip: Hip) -> HipView:
    t = math.radians(hip.tilt)
    down = (math.sin(t), math.cos(t))
    medial = (math.cos(t), -math.sin(t))
    u = _neck_dir(down, medial, hip.neck_shaft)
    head = hip.acetabulum
    base = add(head, u, -hip.neck_len)
    socket_r = hip.head_r + hip.joint_space
    edge = math.radians(-90.0 - hip.ce_angle)
    v = HipView(
        lateral=False,
        socket=hip.acetabulum,
        socket_r=socket_r,
        rim=add(hip.acetabulum, (math.cos(edge), math.sin(edge)), socket_r),
        head=head,
        head_r=hip.head_r,
        base=base,
        down=down,
        medial=medial,
        neck_r=(0.58 * hip.head_r, 0.085),
        gt=(0.0, 0.0),
        gt_r=0.062,
        lt=(0.0, 0.0),
        lt_r=0.026,
        shaft_r=hip.shaft_r,
    )
    return replace(v, gt=v.along(-0.07, -0.075), lt=v.along(0.1, 0.062))


def lateral_view(hip: Hip) -> HipView:
    """The hip as a lateral projection: anterior toward column 0, the neck foreshortened."""
    ap = ap_view(hip)
    t = math.radians(-2.0)
    down = (math.sin(t), math.cos(t))
    medial = (math.cos(t), -math.sin(t))
    base = (hip.lateral_x, ap.base[1])
    rise = ap.base[1] - ap.head[1]
    forward = hip.neck_len * math.sin(math.radians(hip.anteversion)) + 0.015
    head = (base[0] - forward, base[1] - rise)
    socket_r = ap.socket_r
    v = HipView(
        lateral=True,
        socket=head,
        socket_r=socket_r,
        rim=add(head, (math.cos(math.radians(-150.0)), math.sin(math.radians(-150.0))), socket_r),
        head=head,
        head_r=hip.head_r,
        base=base,
        down=down,
        medial=medial,
        neck_r=(0.7 * hip.head_r, 0.09),
        gt=(0.0, 0.0),
        gt_r=0.06,
        lt=(0.0, 0.0),
        lt_r=0.02,
        shaft_r=hip.shaft_r * 0.95,
    )
    return replace(v, gt=v.along(-0.06, 0.035), lt=v.along(0.1, 0.05))


def view_of(hip: Hip, lateral: bool) -> HipView:
    return lateral_view(hip) if lateral else ap_view(hip)


def smin(a: Field, b: Field, k: float) -> Field:
    """Smooth union of two signed distances (blend radius k)."""
    h = np.maximum(k - np.abs(a - b), 0.0) * (1.0 / k)
    return np.minimum(a, b) - h * h * (0.25 * k)


# ---------------------------------------------------------------- soft tissue


def draw_soft_tissue(c: Canvas, patient: Patient, lateral: bool) -> None:
    x, y = c.x, c.y
    if lateral:
        skin = 0.06 + 0.25 * (y - 0.45) ** 2
        body = c.fill(skin - x, 3.0)
        depth = np.clip((x - skin) * 4.0, 0.0, 1.0)
        c.soft += (1.15 * patient.soft) * body * (0.6 + 0.4 * depth)
        return
    skin = patient.skin + patient.waist * (y - 0.5) ** 2
    body = c.fill(skin - x, 3.0)
    depth = np.clip((x - skin) * 3.0, 0.0, 1.0)
    # A fat plane under the skin: the faint darker stripe that follows the contour.
    fat = c.band(x - skin - 0.05, 0.012)
    c.soft += patient.soft * body * (0.55 + 0.45 * depth - 0.08 * fat)


# ---------------------------------------------------------------- femur


@dataclass(frozen=True)
class HeadCut:
    """A plane that flattens the head (osteonecrosis collapse); bone beyond it is removed."""

    point: Point
    normal: Point


def femur_sdf(
    c: Canvas, v: HipView, move: Rigid = STILL, head: bool = True, head_cut: HeadCut | None = None
) -> Field:
    """Signed distance to the femur, drawn part by part where each part can be."""
    d = c.far()
    nr = v.neck_r
    c.union(
        d,
        lambda x, y: capsule(x, y, v.head, v.base, nr[0], nr[1]),
        (v.head, v.base),
        nr[1],
        move=move,
    )
    if head:

        def ball(x: Field, y: Field) -> Field:
            h = circle(x, y, v.head, v.head_r)
            if head_cut is not None:
                h = np.maximum(h, line(x, y, head_cut.point, head_cut.normal))
            return h

        c.union(d, ball, (v.head,), v.head_r, 0.02, move)
    c.union(d, lambda x, y: circle(x, y, v.gt, v.gt_r), (v.gt,), v.gt_r, 0.04, move)
    c.union(d, lambda x, y: circle(x, y, v.lt, v.lt_r), (v.lt,), v.lt_r, 0.03, move)
    f0, f1 = v.along(-0.02, -0.01), v.along(0.24)
    c.union(d, lambda x, y: capsule(x, y, f0, f1, 0.1, v.shaft_r), (f0, f1), 0.1, 0.04, move)
    s0, s1 = v.along(0.2), v.along(1.4)
    c.union(
        d,
        lambda x, y: capsule(x, y, s0, s1, v.shaft_r, v.shaft_r * 0.96),
        (s0, s1),
        v.shaft_r,
        0.0,
        move,
    )
    return d


def femur_density(c: Canvas, v: HipView, move: Rigid, d: Field) -> Field:
    """Bone of the femur from its signed distance: thin cortex above, thick in the shaft."""
    # Distance down the shaft, in the (displaced) femur's own frame.
    co, si = math.cos(move.angle), math.sin(move.angle)
    down = (co * v.down[0] - si * v.down[1], si * v.down[0] + co * v.down[1])
    base = move.push(v.base)
    s = (c.x - base[0]) * down[0] + (c.y - base[1]) * down[1]
    ramp = np.clip((s - 0.08) * 5.0, 0.0, 1.0)
    t = 0.011 + 0.022 * ramp
    cortex = c.fill(np.abs(d + 0.5 * t) - 0.5 * t)
    inner = 0.42 - 0.24 * ramp
    dens = inner * c.fill(d) + (0.95 - inner) * cortex
    # Principal compressive trabeculae: from the calcar up into the dome of the head.
    top = add(v.head, (0.0, -0.6 * v.head_r))
    a = v.along(0.02, 0.05)
    trab = c.far()
    c.union(trab, lambda x, y: capsule(x, y, a, top, 0.018, 0.012), (a, top), 0.02, move=move)
    return dens + 0.1 * c.fill(trab, 4.0) * c.fill(d)


def add_texture(c: Canvas, rng: np.random.Generator) -> None:
    """Trabecular mottling: bone is never a flat grey."""
    c.bone *= 1.0 + 0.12 * c.smooth_field(rng, 40)


@dataclass(frozen=True)
class Fracture:
    """A fracture line through ``point`` (``normal`` toward the distal fragment)."""

    point: Point
    normal: Point
    gap: float
    distal: Rigid
    proximal: Rigid = STILL
    wave: float = 0.004


@dataclass(frozen=True)
class Femur:
    """How the femur is drawn: whole, without its head (THA), or displaced."""

    head: bool = True
    head_cut: HeadCut | None = None
    neck_cut: HeadCut | None = None  # osteotomy: bone beyond the plane is gone
    move: Rigid = STILL


def _fragment(c: Canvas, v: HipView, f: Femur, move: Rigid) -> tuple[Field, Field]:
    d = femur_sdf(c, v, move, f.head, f.head_cut)
    if f.neck_cut is not None:
        x, y = move.pull(c.x, c.y)
        d = np.maximum(d, line(x, y, f.neck_cut.point, f.neck_cut.normal))
    return d, femur_density(c, v, move, d)


def draw_femur(c: Canvas, v: HipView, f: Femur) -> None:
    c.bone += _fragment(c, v, f, f.move)[1]


def draw_fractured_femur(c: Canvas, v: HipView, f: Femur, fr: Fracture) -> Mask:
    """Add the femur in two fragments; return the fracture band across the bone."""
    tangent = (-fr.normal[1], fr.normal[0])
    sides: list[Field] = []
    bones: list[Field] = []
    for move, sign in ((fr.proximal, -1.0), (fr.distal, 1.0)):
        d, dens = _fragment(c, v, f, move)
        x, y = move.pull(c.x, c.y)
        side = line(x, y, fr.point, fr.normal)
        side = side + fr.wave * np.sin(line(x, y, fr.point, tangent) * 90.0)
        c.bone += dens * c.fill(0.5 * fr.gap - sign * side)
        sides.append(np.abs(side))
        bones.append(d)
    near = np.minimum(sides[0], sides[1])
    bone = np.minimum(bones[0], bones[1])
    band: Mask = (near < 0.5 * fr.gap + 0.012) & (bone < 0.006)
    return band


# ---------------------------------------------------------------- pelvis


@dataclass(frozen=True)
class Socket:
    """The acetabular socket as an ellipse (a circle for a normal hip)."""

    centre: Point
    a: float
    b: float
    angle: float = 0.0


def socket_of(v: HipView, radius: float | None = None) -> Socket:
    r = v.socket_r if radius is None else radius
    return Socket(v.socket, r, r)


def draw_pelvis(c: Canvas, v: HipView, patient: Patient, socket: Socket, rim: Point) -> None:
    if v.lateral:
        _pelvis_lateral(c, v, socket)
    else:
        _pelvis_ap(c, v, patient, socket, rim)


def _pelvis_ap(c: Canvas, v: HipView, patient: Patient, socket: Socket, rim: Point) -> None:
    x, y = c.x, c.y
    ax, ay = v.socket
    sym = (0.985, patient.symphysis_y)
    d = c.far()
    ic = (ax + 0.2, ay - 0.36)
    c.union(d, lambda x, y: ellipse(x, y, ic, 0.36, 0.29, -0.45), (ic,), 0.36)
    d = np.maximum(d, x - 0.88 - 0.1 * (y - patient.sacrum_y))  # the SI joint
    c.union(
        d,
        lambda x, y: circle(x, y, v.socket, v.socket_r + 0.075),
        (v.socket,),
        v.socket_r + 0.075,
        0.05,
    )
    # The lateral border rises from the acetabular rim up and out toward the iliac spines.
    d = np.maximum(d, line(x, y, rim, (-0.94, 0.34)))
    # The obturator ring (pubic rami, ischium) and the pubic body at the symphysis.
    rc = (0.5 * (ax + sym[0]) + 0.01, 0.5 * (ay + sym[1]) + 0.12)
    ra = 0.5 * (sym[0] - ax) - 0.01
    c.union(d, lambda x, y: ellipse(x, y, rc, ra, 0.13, 0.3), (rc,), ra, 0.05)
    i0, i1 = (ax + 0.02, ay + 0.1), (ax + 0.08, rc[1] + 0.13)
    c.union(d, lambda x, y: capsule(x, y, i0, i1, 0.065, 0.05), (i0, i1), 0.065, 0.04)
    pc = (sym[0] - 0.045, sym[1] + 0.05)
    c.union(d, lambda x, y: ellipse(x, y, pc, 0.055, 0.08), (pc,), 0.08, 0.03)
    d = np.maximum(d, x - sym[0])
    hc = add(rc, (0.005, 0.01))
    c.cut(d, lambda x, y: ellipse(x, y, hc, ra - 0.07, 0.07, 0.45), (hc,), ra)
    reach = max(socket.a, socket.b)
    c.cut(
        d,
        lambda x, y: ellipse(x, y, socket.centre, socket.a, socket.b, socket.angle),
        (socket.centre,),
        reach,
    )
    dens = c.solid(d, 0.013, 0.3, 0.8)
    # The wing of the ilium is thin, so fainter toward the crest.
    dens *= 0.65 + 0.35 * np.clip((y - ay + 0.35) * 3.0, 0.0, 1.0)
    sc = (1.02, patient.sacrum_y)
    win, sx, sy = c.local((sc,), 0.3)
    dens[win] += c.solid(ellipse(sx, sy, sc, 0.15, 0.3), 0.01, 0.22, 0.4)
    # The teardrop: the U-shaped line at the medial floor of the acetabulum.
    tc = (ax + v.socket_r + 0.025, ay + 0.06)
    win, tx, ty = c.local((tc,), 0.05)
    dens[win] += 0.35 * c.band(ellipse(tx, ty, tc, 0.014, 0.04), 0.003)
    c.bone += dens


def _pelvis_lateral(c: Canvas, v: HipView, socket: Socket) -> None:
    ax, ay = v.socket
    r = v.socket_r
    d = c.far()
    parts = (
        ((ax + 0.26, ay - 0.6), 0.13, 0.2, 0.05),
        ((ax - 0.25, ay + 0.2), 0.05, 0.035, 0.04),
        ((ax + 0.14, ay + 0.4), 0.08, 0.06, 0.04),
    )
    c.union(d, lambda x, y: circle(x, y, v.socket, r + 0.07), (v.socket,), r + 0.07)
    for end, r0, r1, k in parts:
        c.union(
            d,
            capsule_at(v.socket, end, r0, r1),
            (v.socket, end),
            max(r0, r1),
            k,
        )
    hc = (ax - 0.05, ay + 0.23)
    c.cut(d, lambda x, y: ellipse(x, y, hc, 0.09, 0.065, -0.5), (hc,), 0.09)
    reach = max(socket.a, socket.b)
    c.cut(
        d,
        lambda x, y: ellipse(x, y, socket.centre, socket.a, socket.b, socket.angle),
        (socket.centre,),
        reach,
    )
    dens = c.solid(d, 0.013, 0.32, 0.8)
    # The other hemipelvis projects onto this one: a fainter, offset acetabulum and ischium.
    o0, o1 = (ax + 0.09, ay + 0.05), (ax + 0.2, ay + 0.42)
    other = c.far()
    c.union(other, lambda x, y: circle(x, y, o0, r + 0.05), (o0,), r + 0.05)
    c.union(other, lambda x, y: capsule(x, y, o0, o1, 0.07, 0.05), (o0, o1), 0.07, 0.04)
    dens += c.solid(other, 0.01, 0.12, 0.3)
    c.bone += dens
