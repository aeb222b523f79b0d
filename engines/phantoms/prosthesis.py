"""Prosthesis phantoms: a total hip arthroplasty with one failure sign, AP or lateral.

Every sign is written once against a :class:`HipView` and an :class:`ImplantView`, and its
random parameters are drawn in the same order for both views, so the AP and the lateral
of one seed show the same patient, implant and failure.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from engines.models.hipnet import FAILURE_CLASSES
from engines.phantoms.anatomy import (
    Fracture,
    Hip,
    HipView,
    Patient,
    add_texture,
    draw_femur,
    draw_fractured_femur,
    draw_pelvis,
    draw_soft_tissue,
    sample_hip,
    sample_patient,
    view_of,
)
from engines.phantoms.canvas import (
    STILL,
    Canvas,
    Point,
    Pose,
    Rigid,
    add,
    capsule_at,
    circle,
    circle_at,
    ellipse,
    ellipse_at,
    line,
)
from engines.phantoms.implants import (
    Implant,
    ImplantView,
    draw_tha,
    implant_view,
    sample_implant,
    stem_field,
    tha_femur,
    tha_socket,
)
from engines.phantoms.phantom import (
    VIEWS,
    Phantom,
    Streams,
    check_failure_label,
    check_seed,
    check_size,
    check_view,
)
from engines.phantoms.screen import FAILURE, HIP, IMPLANT, NOISE, PATIENT, TEXTURE

LATERAL_POSE = 8
Mask = npt.NDArray[np.bool_]
Sign = Callable[[Canvas, HipView, ImplantView, Implant, Patient, np.random.Generator], Mask]


def prosthesis_hip(label: str, view: str, seed: int, size: int = 256) -> Phantom:
    """A hip with a total hip arthroplasty showing the failure ``label`` in ``view``.

    The AP of a seed is the screening phantom ``total_hip_arthroplasty`` of that seed with
    the failure added; the lateral shares its geometry (the same rows hold the same
    features) under a slightly different positioning.
    """
    index = check_failure_label(label)
    lateral = check_view(view) == 1
    streams = Streams(check_seed(seed))
    size = check_size(size)
    patient = sample_patient(streams.get(PATIENT))
    hip = sample_hip(streams.get(HIP))
    return render_prosthesis(index, lateral, patient, hip, patient.pose, size, streams)


def render_prosthesis(
    index: int,
    lateral: bool,
    patient: Patient,
    hip: Hip,
    ap_pose: Pose,
    size: int,
    streams: Streams,
) -> Phantom:
    """Draw ``hip`` with its implant and the failure ``index`` in one view."""
    label = FAILURE_CLASSES[index]
    implant = sample_implant(streams.get(IMPLANT), hip.head_r)
    pose = _lateral_pose(ap_pose, streams.get(LATERAL_POSE)) if lateral else ap_pose
    v = view_of(hip, lateral)
    iv = implant_view(v, implant)
    c = Canvas(size, pose)
    draw_soft_tissue(c, patient, lateral)
    mask = _SIGNS[label](c, v, iv, implant, patient, streams.get(FAILURE, index))
    view_index = int(lateral)
    add_texture(c, streams.get(TEXTURE, view_index) if lateral else streams.get(TEXTURE))
    image = c.render(patient.look, streams.get(NOISE, view_index))
    return Phantom(image=image, mask=mask, label=label, view=VIEWS[view_index])


def _lateral_pose(ap: Pose, rng: np.random.Generator) -> Pose:
    """Same magnification and height as the AP; its own small rotation and side shift."""
    return Pose(
        angle=math.radians(rng.uniform(-4.0, 4.0)),
        scale=ap.scale,
        shift=(rng.uniform(-0.04, 0.04), ap.shift[1]),
    )


def _tha(
    c: Canvas,
    v: HipView,
    iv: ImplantView,
    implant: Implant,
    patient: Patient,
    move: Rigid = STILL,
    stem_move: Rigid | None = None,
) -> Mask:
    draw_pelvis(c, v, patient, tha_socket(iv), v.rim)
    draw_femur(c, v, tha_femur(v, implant, move))
    return draw_tha(c, iv, move if stem_move is None else stem_move)


def _stem_point(iv: ImplantView, t: float, side: float, out: float) -> tuple[Point, float]:
    """A point beside the stem at fraction ``t`` of its length; and the stem axis angle."""
    ax, ay = iv.tip[0] - iv.shoulder[0], iv.tip[1] - iv.shoulder[1]
    n = math.hypot(ax, ay)
    normal = (ay / n, -ax / n)
    r = iv.stem_r[0] + (iv.stem_r[1] - iv.stem_r[0]) * t
    centre = add(add(iv.shoulder, (ax, ay), t), normal, side * (r + out))
    return centre, math.atan2(ay, ax)


def _infection(
    c: Canvas,
    v: HipView,
    iv: ImplantView,
    implant: Implant,
    patient: Patient,
    rng: np.random.Generator,
) -> Mask:
    """Patchy, irregular osteolysis around stem and cup, periosteal reaction, swelling.

    The mask is the bone signs only: the soft-tissue swelling (a faint, wide ellipse beside
    the shaft, larger than the bone lesion) is drawn but not in it, so the lesion attention
    and the pointing game count a map on the swelling as off the lesion."""
    _tha(c, v, iv, implant, patient)
    ragged = 0.008 * c.smooth_field(rng, 24)
    lysis = c.far()
    for _ in range(int(rng.integers(5, 9))):
        t, side = rng.uniform(0.08, 1.0), float(rng.choice((-1.0, 1.0)))
        centre, angle = _stem_point(iv, t, side, rng.uniform(0.0, 0.012))
        a, b = rng.uniform(0.02, 0.042), rng.uniform(0.012, 0.024)
        c.union(lysis, ellipse_at(centre, a, b, angle), (centre,), a)
    dome = (-iv.opening[0], -iv.opening[1])
    for _ in range(int(rng.integers(1, 3))):
        turn = math.radians(rng.uniform(-70.0, 70.0))
        co, si = math.cos(turn), math.sin(turn)
        d = (dome[0] * co - dome[1] * si, dome[0] * si + dome[1] * co)
        centre = add(iv.cup, d, iv.cup_out + rng.uniform(0.008, 0.018))
        r = rng.uniform(0.014, 0.026)
        c.union(lysis, circle_at(centre, r), (centre,), r)
    lysis += ragged
    c.bone *= 1.0 - 0.85 * c.fill(lysis, 2.0)
    # Lamellated periosteal new bone beside the cortex, on one or both sides.
    s0 = rng.uniform(0.12, 0.3)
    s1 = s0 + rng.uniform(0.2, 0.35)
    gap = rng.uniform(0.008, 0.014)
    sides = [(-1.0,), (1.0,), (-1.0, 1.0)][int(rng.integers(0, 3))]
    periosteum = c.far()
    for side in sides:
        for k in range(2):
            off = side * (v.shaft_r + gap + 0.009 * k)
            p0, p1 = v.along(s0 + 0.03 * k, off), v.along(s1 - 0.03 * k, off)
            c.union(
                periosteum,
                capsule_at(p0, p1, 0.004, 0.004),
                (p0, p1),
                0.004,
            )
    c.bone += 0.6 * c.fill(periosteum + 0.5 * ragged)
    centre = v.along(rng.uniform(-0.05, 0.1), -(v.shaft_r + 0.12))
    win, x, y = c.local((centre,), 0.26 + 25.0 * c.px)
    c.soft[win] += rng.uniform(0.1, 0.16) * c.fill(ellipse(x, y, centre, 0.11, 0.26), 25.0)
    mask: Mask = (lysis < 0.0) | (periosteum < 0.01)
    return mask


def _loosening(
    c: Canvas,
    v: HipView,
    iv: ImplantView,
    implant: Implant,
    patient: Patient,
    rng: np.random.Generator,
) -> Mask:
    """A thin, smooth, continuous lucent line at both interfaces; the stem has subsided."""
    sink = rng.uniform(0.015, 0.03)
    # The stem sank into the femur: relative to the pelvis and implant, the bone rose.
    rise = Rigid(shift=(-sink * v.down[0], -sink * v.down[1]))
    _tha(c, v, iv, implant, patient, move=rise, stem_move=STILL)
    w = rng.uniform(0.011, 0.016)
    d = stem_field(c, iv)
    c.bone *= 1.0 - 0.92 * c.fill(d - w)
    # The thin sclerotic margin that borders a lucent line of long standing.
    c.bone += 0.25 * c.band(d - w - 0.004, 0.0025)
    mask: Mask = (d > -0.004) & (d < w + 0.008)
    win, x, y = c.local((iv.cup,), iv.cup_out + w + 0.01)
    dome = line(x, y, iv.cup, iv.opening)
    r = circle(x, y, iv.cup, iv.cup_out + 0.5 * w)
    c.bone[win] *= 1.0 - 0.92 * c.fill(np.maximum(np.abs(r) - 0.5 * w, dome))
    c.bone[win] += 0.25 * c.band(np.maximum(r - 0.5 * w - 0.004, dome), 0.0025)
    mask[win] |= (np.abs(r) < 0.5 * w + 0.008) & (dome < 0.0)
    return mask


def _dislocation(
    c: Canvas,
    v: HipView,
    iv: ImplantView,
    implant: Implant,
    patient: Patient,
    rng: np.random.Generator,
) -> Mask:
    """The ball out of the cup: superolateral on the AP, posterosuperior on the lateral."""
    dx, dy = rng.uniform(0.08, 0.13), rng.uniform(0.1, 0.16)
    angle = math.radians(rng.uniform(-10.0, 10.0))
    shift = (0.8 * dx, -dy) if v.lateral else (-dx, -dy)
    _tha(c, v, iv, implant, patient, move=Rigid(iv.ball, angle, shift))
    ball = add(iv.ball, shift)
    win, x, y = c.local((ball, iv.cup), iv.cup_out + 0.01)
    mask = np.zeros(c.x.shape, np.bool_)
    mask[win] = (circle(x, y, ball, iv.ball_r + 0.01) < 0.0) | (
        circle(x, y, iv.cup, iv.cup_out + 0.006) < 0.0
    )
    return mask


def _fracture(
    c: Canvas,
    v: HipView,
    iv: ImplantView,
    implant: Implant,
    patient: Patient,
    rng: np.random.Generator,
) -> Mask:
    """An oblique fracture of the shaft around or below the stem tip."""
    s = implant.stem_len + rng.uniform(-0.1, 0.08)
    point = v.along(s)
    oblique = math.radians(float(rng.choice((-1.0, 1.0))) * rng.uniform(25.0, 55.0))
    co, si = math.cos(oblique), math.sin(oblique)
    normal = (v.down[0] * co - v.down[1] * si, v.down[0] * si + v.down[1] * co)
    # Displaced enough to be seen at Hip-Net's 64-pixel demo input (gap and step >= 2 px).
    side = float(rng.choice((-1.0, 1.0))) * rng.uniform(0.025, 0.04)
    shorten = rng.uniform(0.01, 0.025)
    distal = Rigid(
        point,
        math.radians(rng.uniform(-6.0, 6.0)),
        (side * v.medial[0] - shorten * v.down[0], side * v.medial[1] - shorten * v.down[1]),
    )
    fr = Fracture(point=point, normal=normal, gap=rng.uniform(0.03, 0.045), distal=distal)
    draw_pelvis(c, v, patient, tha_socket(iv), v.rim)
    band = draw_fractured_femur(c, v, tha_femur(v, implant), fr)
    draw_tha(c, iv)
    return band


def _wear(
    c: Canvas,
    v: HipView,
    iv: ImplantView,
    implant: Implant,
    patient: Patient,
    rng: np.random.Generator,
) -> Mask:
    """The ball sits eccentric in the cup, high: the superior liner is worn thin."""
    phi = math.radians(rng.uniform(0.0, 30.0))
    amount = implant.liner * rng.uniform(0.6, 0.85)
    direction = (
        (0.5 * math.sin(phi), -math.cos(phi)) if v.lateral else (-math.sin(phi), -math.cos(phi))
    )
    _tha(
        c, v, iv, implant, patient, move=Rigid(shift=(amount * direction[0], amount * direction[1]))
    )
    win, x, y = c.local((iv.cup,), iv.cup_out + 0.01)
    liner = np.maximum(
        circle(x, y, iv.cup, iv.cup_out + 0.006), line(x, y, iv.cup, iv.opening) - 0.01
    )
    mask = np.zeros(c.x.shape, np.bool_)
    mask[win] = liner < 0.0
    return mask


_SIGNS: dict[str, Sign] = {
    "periprosthetic_joint_infection": _infection,
    "aseptic_loosening": _loosening,
    "dislocation": _dislocation,
    "periprosthetic_fracture": _fracture,
    "polyethylene_wear": _wear,
}
if tuple(_SIGNS) != FAILURE_CLASSES:  # pragma: no cover - guards the class order
    raise RuntimeError("prosthesis signs out of step with FAILURE_CLASSES")
