"""Metal: the total hip arthroplasty (stem, ball head, cup) and internal fixation hardware."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engines.phantoms.anatomy import Femur, HeadCut, HipView, Socket
from engines.phantoms.canvas import (
    STILL,
    Canvas,
    Field,
    Point,
    Rigid,
    Shape,
    add,
    capsule,
    circle,
    line,
)

METAL = 4.0
LINER = 0.06  # polyethylene: barely more than soft tissue
Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Implant:
    """One patient's prosthesis, shared by every view of that hip."""

    ball_r: float
    liner: float  # polyethylene thickness between ball and metal shell
    shell: float  # metal shell thickness
    stem_len: float
    stem_r: tuple[float, float]  # proximal, tip (AP width; the lateral profile is thinner)
    inclination: float  # cup abduction, degrees
    version: float  # cup anteversion, degrees
    cut: float  # osteotomy, as a fraction of the neck from its base


def sample_implant(rng: np.random.Generator, head_r: float) -> Implant:
    u = rng.uniform
    ball_r = head_r * u(0.62, 0.72)
    return Implant(
        ball_r=ball_r,
        liner=u(0.022, 0.03),
        shell=u(0.01, 0.014),
        stem_len=u(0.36, 0.46),
        stem_r=(u(0.028, 0.034), u(0.012, 0.016)),
        inclination=u(38.0, 50.0),
        version=u(12.0, 25.0),
        cut=u(0.3, 0.42),
    )


@dataclass(frozen=True)
class ImplantView:
    """The prosthesis projected into one view."""

    ball: Point
    ball_r: float
    cup: Point
    cup_in: float
    cup_out: float
    opening: Point  # unit vector out of the cup's mouth
    shoulder: Point
    tip: Point
    stem_r: tuple[float, float]
    neck_from: Point


def implant_view(v: HipView, imp: Implant) -> ImplantView:
    if v.lateral:
        # Seen from the side the cup opens anteriorly (its version) and the stem is thin.
        a = math.radians(180.0 - imp.version - 25.0)
        opening = (math.cos(a), math.sin(a))
        stem_r = (imp.stem_r[0] * 0.62, imp.stem_r[1] * 0.8)
        shoulder = v.along(-0.05, 0.0)
    else:
        a = math.radians(90.0 + imp.inclination)
        opening = (math.cos(a), math.sin(a))
        stem_r = imp.stem_r
        shoulder = v.along(-0.05, -0.01)
    cup_in = imp.ball_r + imp.liner
    return ImplantView(
        ball=v.socket,
        ball_r=imp.ball_r,
        cup=v.socket,
        cup_in=cup_in,
        cup_out=cup_in + imp.shell,
        opening=opening,
        shoulder=shoulder,
        tip=v.along(imp.stem_len, 0.0 if v.lateral else 0.006),
        stem_r=stem_r,
        neck_from=v.along(0.02, 0.02 if v.lateral else 0.035),
    )


def tha_femur(v: HipView, imp: Implant, move: Rigid = STILL) -> Femur:
    """The femur after a THA: head and most of the neck resected."""
    u = (v.head[0] - v.base[0], v.head[1] - v.base[1])
    return Femur(head=False, neck_cut=HeadCut(add(v.base, u, imp.cut), u), move=move)


def tha_socket(iv: ImplantView) -> Socket:
    """The reamed acetabulum holds the cup."""
    return Socket(iv.cup, iv.cup_out, iv.cup_out)


def stem_field(c: Canvas, iv: ImplantView, move: Rigid = STILL) -> Field:
    """Signed distance to the stem (body, calcar flare, neck) on the whole canvas."""
    d = c.far()
    sh, tip = iv.shoulder, iv.tip
    r0, r1 = iv.stem_r
    c.union(d, lambda x, y: capsule(x, y, sh, tip, r0, r1), (sh, tip), r0, move=move)
    # The calcar flare of the stem's medial side.
    cal = add(sh, (tip[0] - sh[0], tip[1] - sh[1]), 0.3)
    c.union(
        d,
        lambda x, y: capsule(x, y, iv.neck_from, cal, 0.024, r0 * 0.7),
        (iv.neck_from, cal),
        0.024,
        0.03,
        move,
    )
    c.union(
        d,
        lambda x, y: capsule(x, y, iv.neck_from, iv.ball, 0.016, 0.013),
        (iv.neck_from, iv.ball),
        0.016,
        0.02,
        move,
    )
    return d


def cup_shell(x: Field, y: Field, iv: ImplantView) -> Field:
    """The metal shell: a hemispherical band open toward ``opening``."""
    r = circle(x, y, iv.cup, 0.5 * (iv.cup_in + iv.cup_out))
    shell = np.abs(r) - 0.5 * (iv.cup_out - iv.cup_in)
    return np.maximum(shell, line(x, y, iv.cup, iv.opening))


def draw_tha(c: Canvas, iv: ImplantView, stem_move: Rigid = STILL) -> Mask:
    """Add cup, liner, ball and stem (the last two displaced by ``stem_move``); their mask."""
    metal = stem_field(c, iv, stem_move)
    c.union(metal, lambda x, y: cup_shell(x, y, iv), (iv.cup,), iv.cup_out)
    c.union(
        metal, lambda x, y: circle(x, y, iv.ball, iv.ball_r), (iv.ball,), iv.ball_r, move=stem_move
    )
    win, x, y = c.local((iv.cup,), iv.cup_in)
    c.soft[win] += (
        LINER * c.fill(circle(x, y, iv.cup, iv.cup_in)) * c.fill(line(x, y, iv.cup, iv.opening))
    )
    c.metal += METAL * c.fill(metal)
    mask: Mask = metal < 0.5 * c.px
    return mask


# ---------------------------------------------------------------- internal fixation


def _screw(p0: Point, p1: Point, r: float, px: float) -> tuple[Shape, Shape]:
    """A threaded screw and its cannulation (the thin hollow core), as shapes."""
    vx, vy = p1[0] - p0[0], p1[1] - p0[1]
    length = math.hypot(vx, vy)

    def screw(x: Field, y: Field) -> Field:
        t = ((x - p0[0]) * vx + (y - p0[1]) * vy) * (1.0 / (length * length))
        thread = np.where(t > 0.62, 0.35 * r * (1.0 + np.sin(t * (length * 520.0))), 0.0)
        return capsule(x, y, p0, p1, r, r) - thread

    core = 0.22 * r + px * 0.3
    return screw, lambda x, y: capsule(x, y, p0, p1, core, core)


def draw_fixation(c: Canvas, v: HipView, rng: np.random.Generator) -> Mask:
    """Cannulated screws, a sliding hip screw with side plate, or a cephalomedullary nail."""
    u = (v.head[0] - v.base[0], v.head[1] - v.base[1])
    n = math.hypot(*u)
    u = (u[0] / n, u[1] / n)
    perp = (-u[1], u[0])
    kind = int(rng.choice(3, p=[0.5, 0.3, 0.2]))
    entry_s = rng.uniform(0.04, 0.1)
    lateral = v.along(entry_s, -v.shaft_r - 0.01)
    tip = add(v.head, u, 0.55 * v.head_r)
    metal = c.far()
    hollow = c.far()

    def rod(p0: Point, p1: Point, r0: float, r1: float) -> None:
        c.union(metal, lambda x, y: capsule(x, y, p0, p1, r0, r1), (p0, p1), max(r0, r1))

    if kind == 0:
        count = int(rng.integers(2, 4))
        spread = rng.uniform(0.022, 0.03)
        offsets = [(-1.0, 0.0), (1.0, 0.0), (0.0, 1.6)] if count == 3 else [(-0.8, 0.0), (0.8, 0.0)]
        for a, b in offsets:
            off = (perp[0] * a - u[0] * b * 0.3, perp[1] * a - u[1] * b * 0.3)
            start = add(add(lateral, off, spread), u, -0.01)
            end = add(add(tip, off, spread), u, -0.02 * b)
            r = rng.uniform(0.009, 0.012)
            screw, core = _screw(start, end, r, c.px)
            c.union(metal, screw, (start, end), 1.7 * r)
            c.union(hollow, core, (start, end), r)
            rod(add(start, perp, -0.018), add(start, perp, 0.018), 0.005, 0.005)
    else:
        lag, _ = _screw(lateral, tip, 0.016, c.px)
        c.union(metal, lag, (lateral, tip), 0.03)
        if kind == 1:
            rod(add(lateral, u, -0.01), add(lateral, u, 0.1), 0.024, 0.024)
            top = v.along(entry_s - 0.02, -v.shaft_r - 0.014)
            rod(top, v.along(entry_s + 0.3, -v.shaft_r - 0.014), 0.013, 0.012)
            for k in range(int(rng.integers(3, 5))):
                s = entry_s + 0.09 + 0.065 * k
                rod(v.along(s, -v.shaft_r - 0.02), v.along(s, v.shaft_r + 0.006), 0.008, 0.008)
        else:
            rod(v.along(-0.12, -0.035), v.along(0.95, 0.0), 0.03, 0.026)
            rod(v.along(0.8, -v.shaft_r - 0.01), v.along(0.8, v.shaft_r), 0.01, 0.01)
    c.metal += METAL * c.fill(metal) * (1.0 - 0.45 * c.fill(hollow))
    mask: Mask = metal < 0.5 * c.px
    return mask
