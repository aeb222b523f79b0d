"""Screening phantoms: one hip region of an AP radiograph, one of the eight screening classes."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from engines.models.hip_screen import SCREEN_CLASSES
from engines.phantoms.anatomy import (
    Femur,
    Fracture,
    HeadCut,
    Hip,
    HipView,
    Patient,
    Socket,
    add_texture,
    ap_view,
    draw_femur,
    draw_fractured_femur,
    draw_pelvis,
    draw_soft_tissue,
    sample_hip,
    sample_patient,
    socket_of,
)
from engines.phantoms.canvas import (
    Canvas,
    Field,
    Point,
    Pose,
    Rigid,
    add,
    capsule,
    circle,
    ellipse,
    line,
)
from engines.phantoms.implants import (
    draw_fixation,
    draw_tha,
    implant_view,
    sample_implant,
    tha_femur,
    tha_socket,
)
from engines.phantoms.phantom import (
    Phantom,
    Streams,
    check_screen_label,
    check_seed,
    check_size,
)

# Random streams: one per purpose, so the label never changes the base anatomy.
PATIENT, HIP, LESION, NOISE, IMPLANT, FAILURE, TEXTURE = 0, 1, 3, 4, 6, 7, 9

Mask = npt.NDArray[np.bool_]


def screen_hip(label: str, seed: int, size: int = 256) -> Phantom:
    """One hip region (the right hip, canonical orientation) showing ``label``.

    The same seed gives the same patient, hip, positioning and noise whatever the label,
    so two labels differ only where the lesion and what it moves are drawn (a fracture's
    displaced or shortened shaft lies mostly outside its mask, which is the fracture).
    """
    index = check_screen_label(label)
    streams = Streams(check_seed(seed))
    size = check_size(size)
    patient = sample_patient(streams.get(PATIENT))
    return render_screen(index, patient, sample_hip(streams.get(HIP)), patient.pose, size, streams)


def render_screen(
    index: int, patient: Patient, hip: Hip, pose: Pose, size: int, streams: Streams
) -> Phantom:
    """Draw one AP hip region of ``patient`` with the screening class ``index``."""
    label = SCREEN_CLASSES[index]
    rng = streams.get(LESION, index)
    c = Canvas(size, pose)
    v = ap_view(hip)
    draw_soft_tissue(c, patient, lateral=False)
    mask = np.zeros((size, size), np.bool_)
    if label == "total_hip_arthroplasty":
        implant = sample_implant(streams.get(IMPLANT), hip.head_r)
        iv = implant_view(v, implant)
        draw_pelvis(c, v, patient, tha_socket(iv), v.rim)
        draw_femur(c, v, tha_femur(v, implant))
        mask = draw_tha(c, iv)
    elif label == "developmental_dysplasia_of_hip":
        mask = _dysplasia(c, v, patient, rng)
    elif label == "osteoarthritis":
        mask = _osteoarthritis(c, v, patient, rng)
    elif label == "osteonecrosis_of_femoral_head":
        mask = _osteonecrosis(c, v, patient, rng)
    else:
        draw_pelvis(c, v, patient, socket_of(v), v.rim)
        if label == "femoral_neck_fracture":
            mask = _neck_fracture(c, v, rng)
        elif label == "intertrochanteric_fracture":
            mask = _intertrochanteric(c, v, rng)
        else:
            draw_femur(c, v, Femur())
            if label == "metallic_internal_fixation":
                mask = draw_fixation(c, v, rng)
    add_texture(c, streams.get(TEXTURE))
    image = c.render(patient.look, streams.get(NOISE, 0))
    return Phantom(image=image, mask=mask, label=label, view="AP")


def _roof(
    c: Canvas, x: Field, y: Field, centre: Point, r: tuple[float, float], arc: tuple[float, float]
) -> Field:
    """1 in the ring r[0]..r[1] around ``centre`` between the angles arc (degrees, y down)."""
    dx, dy = x - centre[0], y - centre[1]
    dist = np.hypot(dx, dy)
    ang = np.degrees(np.arctan2(dy, dx))
    ring = c.fill(np.abs(dist - 0.5 * (r[0] + r[1])) - 0.5 * (r[1] - r[0]))
    mid = 0.5 * (r[0] + r[1]) * (math.pi / 180.0)
    return ring * c.fill(np.maximum(arc[0] - ang, ang - arc[1]) * mid)


def _osteoarthritis(c: Canvas, v: HipView, patient: Patient, rng: np.random.Generator) -> Mask:
    gap = rng.uniform(0.002, 0.007)
    narrow = replace(v, socket_r=v.head_r + gap)
    draw_pelvis(c, narrow, patient, socket_of(narrow), v.rim)
    draw_femur(c, v, Femur())
    a0 = math.degrees(math.atan2(v.rim[1] - v.socket[1], v.rim[0] - v.socket[0])) + 4.0
    thick = rng.uniform(0.025, 0.04)
    inner = v.head_r - rng.uniform(0.018, 0.03)
    win, x, y = c.local((v.socket,), narrow.socket_r + thick + 0.09)
    bone = c.bone[win]
    # Subchondral sclerosis of the roof and of the dome of the head.
    roof = _roof(c, x, y, v.socket, (narrow.socket_r, narrow.socket_r + thick), (a0, -20.0))
    dome = _roof(c, x, y, v.head, (inner, v.head_r), (a0 - 15.0, -20.0))
    bone += rng.uniform(0.45, 0.7) * roof + rng.uniform(0.25, 0.4) * dome
    region = _roof(
        c, x, y, v.socket, (v.head_r - 0.03, narrow.socket_r + thick + 0.01), (a0 - 25.0, 0.0)
    )
    # Subchondral cysts in the roof.
    for _ in range(int(rng.integers(1, 4))):
        a = math.radians(rng.uniform(-150.0, -50.0))
        p = add(v.socket, (math.cos(a), math.sin(a)), narrow.socket_r + rng.uniform(0.012, 0.025))
        bone *= 1.0 - 0.75 * c.fill(circle(x, y, p, rng.uniform(0.008, 0.014)))
    # Osteophytes: at the lateral acetabular margin and around the head-neck junction.
    rim_tip = add(v.rim, (-rng.uniform(0.03, 0.05), rng.uniform(0.0, 0.025)))
    spurs = capsule(x, y, add(v.rim, (0.01, 0.0)), rim_tip, 0.02, 0.005)
    a = math.radians(rng.uniform(60.0, 85.0))
    base = add(v.head, (math.cos(a), math.sin(a)), v.head_r * 0.95)
    tip = add(base, (0.02, rng.uniform(0.03, 0.05)))
    spurs = np.minimum(spurs, capsule(x, y, base, tip, 0.018, 0.005))
    b = math.radians(rng.uniform(145.0, 165.0))
    lat = add(v.head, (math.cos(b), math.sin(b)), v.head_r * 0.95)
    spurs = np.minimum(spurs, capsule(x, y, lat, add(lat, (-0.03, 0.015)), 0.015, 0.004))
    bone += 0.7 * c.fill(spurs)
    mask = np.zeros(c.x.shape, np.bool_)
    mask[win] = (region > 0.5) | (spurs < 0.01)
    return mask


def _osteonecrosis(c: Canvas, v: HipView, patient: Patient, rng: np.random.Generator) -> Mask:
    draw_pelvis(c, v, patient, socket_of(v), v.rim)
    tilt = math.radians(-90.0 + rng.uniform(-25.0, 10.0))
    up = (math.cos(tilt), math.sin(tilt))
    flat = rng.uniform(0.045, 0.065)
    cut = HeadCut(add(v.head, up, v.head_r - flat), up)
    draw_femur(c, v, Femur(head_cut=cut))
    chord = add(v.head, up, rng.uniform(0.05, 0.35) * v.head_r)
    mottle = c.smooth_field(rng, 12)
    win, x, y = c.local((v.head,), v.head_r + 0.01)
    bone = c.bone[win]
    segment_d = np.maximum(circle(x, y, v.head, v.head_r), -line(x, y, chord, up))
    surface = line(x, y, cut.point, up)
    live = c.fill(np.maximum(segment_d, surface))
    bone += live * (0.45 + 0.35 * mottle[win])
    # The crescent sign: a lucent subchondral line just under the collapsed surface.
    under = np.maximum(circle(x, y, v.head, v.head_r - 0.014 - flat * 0.5), surface + 0.012)
    bone *= 1.0 - 0.9 * c.band(under, 0.01) * c.fill(segment_d)
    # The sclerotic border of the necrotic segment.
    inside = c.fill(circle(x, y, v.head, v.head_r - 0.01))
    bone += 0.6 * c.band(line(x, y, chord, up), 0.011) * inside
    mask = np.zeros(c.x.shape, np.bool_)
    mask[win] = segment_d < 0.006
    return mask


def _dysplasia(c: Canvas, v: HipView, patient: Patient, rng: np.random.Generator) -> Mask:
    ce = rng.uniform(-12.0, 8.0)
    edge = math.radians(-90.0 - ce)
    r = v.socket_r * rng.uniform(1.0, 1.15)
    rim = add(v.socket, (math.cos(edge), math.sin(edge)), r * 0.95)
    steep = math.radians(rng.uniform(28.0, 42.0))
    socket = Socket(add(v.socket, (-0.01, -0.01)), r * 1.3, r * 0.8, steep)
    draw_pelvis(c, v, patient, socket, rim)
    head = add(v.socket, (-rng.uniform(0.04, 0.065), -rng.uniform(0.025, 0.045)))
    small = replace(v, head=head, head_r=v.head_r * rng.uniform(0.88, 0.97))
    draw_femur(c, small, Femur())
    win, x, y = c.local((socket.centre, head), socket.a + 0.04)
    acetabulum = ellipse(x, y, socket.centre, socket.a + 0.035, socket.b + 0.035, socket.angle)
    roof = np.maximum(acetabulum, y - v.socket[1] - 0.03)
    uncovered = np.maximum(circle(x, y, small.head, small.head_r), -line(x, y, rim, (-0.94, 0.34)))
    mask = np.zeros(c.x.shape, np.bool_)
    mask[win] = (roof < 0.0) | (uncovered < 0.0)
    return mask


def _opening(normal: Point, rng: np.random.Generator) -> Point:
    """Distal displacement: the fracture gapes a little and the fragments step off."""
    # Displaced enough to be seen at the demo engines' 96-pixel input (gap >= 2 px).
    gape, step = rng.uniform(0.006, 0.014), rng.uniform(0.018, 0.032) * rng.choice((-1.0, 1.0))
    return (gape * normal[0] - step * normal[1], gape * normal[1] + step * normal[0])


def _neck_unit(v: HipView) -> Point:
    u = (v.head[0] - v.base[0], v.head[1] - v.base[1])
    n = math.hypot(*u)
    return (u[0] / n, u[1] / n)


def _neck_fracture(c: Canvas, v: HipView, rng: np.random.Generator) -> Mask:
    u = _neck_unit(v)
    # Subcapital to mid-neck; the line runs across the neck, a little oblique.
    where = rng.uniform(0.45, 0.7)
    point = add(v.base, (v.head[0] - v.base[0], v.head[1] - v.base[1]), where)
    tilt = math.radians(rng.uniform(-20.0, 20.0))
    normal = (
        -(u[0] * math.cos(tilt) - u[1] * math.sin(tilt)),
        -(u[0] * math.sin(tilt) + u[1] * math.cos(tilt)),
    )
    varus = math.radians(rng.uniform(14.0, 28.0))
    shift = _opening(normal, rng)
    fracture = Fracture(
        point=point,
        normal=normal,
        gap=rng.uniform(0.022, 0.032),
        proximal=Rigid(v.head, -varus),
        distal=Rigid(point, 0.0, shift),
    )
    return draw_fractured_femur(c, v, Femur(), fracture)


def _intertrochanteric(c: Canvas, v: HipView, rng: np.random.Generator) -> Mask:
    top = v.along(rng.uniform(-0.08, -0.04), -rng.uniform(0.05, 0.08))
    bottom = v.along(rng.uniform(0.08, 0.12), rng.uniform(0.045, 0.06))
    point = (0.5 * (top[0] + bottom[0]), 0.5 * (top[1] + bottom[1]))
    tx, ty = bottom[0] - top[0], bottom[1] - top[1]
    n = math.hypot(tx, ty)
    normal = (-ty / n, tx / n)  # toward the shaft (distal-lateral)
    fracture = Fracture(
        point=point,
        normal=normal,
        gap=rng.uniform(0.022, 0.032),
        proximal=Rigid(v.head, -math.radians(rng.uniform(8.0, 16.0))),
        distal=Rigid(point, math.radians(rng.uniform(-4.0, 4.0)), _opening(normal, rng)),
    )
    return draw_fractured_femur(c, v, Femur(), fracture)
