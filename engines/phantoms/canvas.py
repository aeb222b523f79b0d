"""Vectorised drawing on coordinate grids: signed distances, soft fills and a pose.

Shapes are described in an anatomical frame of unit size ((0, 0) top left, y down);
the canvas maps every pixel into that frame through a small rotation, scale and shift,
so geometry never depends on the pixel size. Attenuation accumulates in three layers
(soft tissue, bone, metal) so a lesion can remove bone without touching the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Field = npt.NDArray[np.floating[Any]]
Point = tuple[float, float]
Window = tuple[slice, slice]
Shape = Callable[[Field, Field], Field]
FAR = 1.0  # "no shape here": farther than anything in the unit frame


@dataclass(frozen=True)
class Rigid:
    """A rigid displacement: rotate by ``angle`` (radians) about ``centre``, then shift."""

    centre: Point = (0.0, 0.0)
    angle: float = 0.0
    shift: Point = (0.0, 0.0)

    def pull(self, x: Field, y: Field) -> tuple[Field, Field]:
        """Coordinates in the displaced object's own frame (the inverse map)."""
        if self.angle == 0.0:
            return x - self.shift[0], y - self.shift[1]
        px, py = x - self.shift[0] - self.centre[0], y - self.shift[1] - self.centre[1]
        co, si = math.cos(self.angle), math.sin(self.angle)
        return self.centre[0] + co * px + si * py, self.centre[1] - si * px + co * py

    def push(self, p: Point) -> Point:
        """Where the object's point ``p`` ends up."""
        co, si = math.cos(self.angle), math.sin(self.angle)
        dx, dy = p[0] - self.centre[0], p[1] - self.centre[1]
        return (
            self.centre[0] + co * dx - si * dy + self.shift[0],
            self.centre[1] + si * dx + co * dy + self.shift[1],
        )


STILL = Rigid()


@dataclass(frozen=True)
class Pose:
    """Patient positioning: rotation (radians), magnification and shift (image fractions)."""

    angle: float = 0.0
    scale: float = 1.0
    shift: Point = (0.0, 0.0)


@dataclass(frozen=True)
class Look:
    """Exposure and detector: how attenuation becomes a displayed value."""

    gain: float = 0.95
    offset: float = 0.02
    gamma: float = 1.0
    noise: float = 0.015
    bone: float = 1.0


def circle(x: Field, y: Field, c: Point, r: float) -> Field:
    d: Field = np.hypot(x - c[0], y - c[1]) - r
    return d


def ellipse(x: Field, y: Field, c: Point, a: float, b: float, angle: float = 0.0) -> Field:
    """Approximate signed distance to an ellipse with semi-axes a (along ``angle``) and b."""
    co, si = math.cos(angle), math.sin(angle)
    dx, dy = x - c[0], y - c[1]
    u = (co * dx + si * dy) / a
    v = (co * dy - si * dx) / b
    return (np.sqrt(u * u + v * v) - 1.0) * min(a, b)


def capsule(x: Field, y: Field, p0: Point, p1: Point, r0: float, r1: float) -> Field:
    """Signed distance to a segment p0-p1 whose radius tapers from r0 to r1."""
    vx, vy = p1[0] - p0[0], p1[1] - p0[1]
    inv = 1.0 / max(vx * vx + vy * vy, 1e-12)
    dx, dy = x - p0[0], y - p0[1]
    t = np.clip((dx * vx + dy * vy) * inv, 0.0, 1.0)
    return np.hypot(dx - t * vx, dy - t * vy) - (r0 + (r1 - r0) * t)


def capsule_at(p0: Point, p1: Point, r0: float, r1: float) -> Shape:
    return lambda x, y: capsule(x, y, p0, p1, r0, r1)


def ellipse_at(c: Point, a: float, b: float, angle: float = 0.0) -> Shape:
    return lambda x, y: ellipse(x, y, c, a, b, angle)


def circle_at(c: Point, r: float) -> Shape:
    return lambda x, y: circle(x, y, c, r)


def line(x: Field, y: Field, p: Point, normal: Point) -> Field:
    """Signed distance to the line through p, positive on the side ``normal`` points to."""
    n = math.hypot(*normal)
    return ((x - p[0]) * normal[0] + (y - p[1]) * normal[1]) / n


def rotate(x: Field, y: Field, centre: Point, angle: float) -> tuple[Field, Field]:
    """Coordinates seen by a shape rotated by ``angle`` about ``centre`` (inverse map)."""
    co, si = math.cos(angle), math.sin(angle)
    dx, dy = x - centre[0], y - centre[1]
    return centre[0] + co * dx + si * dy, centre[1] - si * dx + co * dy


def unit(angle_deg: float) -> Point:
    a = math.radians(angle_deg)
    return (math.cos(a), math.sin(a))


def add(p: Point, q: Point, k: float = 1.0) -> Point:
    return (p[0] + k * q[0], p[1] + k * q[1])


class Canvas:
    """A square grid of ``size`` pixels in the anatomical frame given by ``pose``."""

    def __init__(self, size: int, pose: Pose) -> None:
        self.size = size
        self.pose = pose
        centres = (np.arange(size, dtype=np.float32) + np.float32(0.5)) / np.float32(size)
        co, si = math.cos(pose.angle), math.sin(pose.angle)
        du = (centres - np.float32(0.5 + pose.shift[0]))[None, :]
        dv = (centres - np.float32(0.5 + pose.shift[1]))[:, None]
        k = np.float32(1.0 / pose.scale)
        self.x: Field = np.float32(0.5) + (np.float32(co) * du + np.float32(si) * dv) * k
        self.y: Field = np.float32(0.5) + (np.float32(co) * dv - np.float32(si) * du) * k
        # One pixel in anatomical units: the width of every anti-aliased edge.
        self.px = 1.0 / (size * pose.scale)
        self.soft: Field = np.zeros((size, size), np.float32)
        self.bone: Field = np.zeros((size, size), np.float32)
        self.metal: Field = np.zeros((size, size), np.float32)
        self.mask = np.zeros((size, size), np.bool_)

    def window(self, points: tuple[Point, ...], reach: float) -> Window:
        """The pixel rows and columns that can hold anything within ``reach`` of the points."""
        p = self.pose
        co, si = math.cos(p.angle), math.sin(p.angle)
        us, vs = [], []
        for q in points:
            us.append(0.5 + p.shift[0] + p.scale * (co * (q[0] - 0.5) - si * (q[1] - 0.5)))
            vs.append(0.5 + p.shift[1] + p.scale * (si * (q[0] - 0.5) + co * (q[1] - 0.5)))
        r = p.scale * reach + 2.0 / self.size
        n = self.size
        cols = slice(max(0, math.floor((min(us) - r) * n)), min(n, math.ceil((max(us) + r) * n)))
        rows = slice(max(0, math.floor((min(vs) - r) * n)), min(n, math.ceil((max(vs) + r) * n)))
        return rows, cols

    def local(self, points: tuple[Point, ...], reach: float) -> tuple[Window, Field, Field]:
        """A window around the points and its coordinates, for small additive shapes."""
        win = self.window(points, reach)
        return win, self.x[win], self.y[win]

    def coords(self, win: Window, move: Rigid = STILL) -> tuple[Field, Field]:
        return move.pull(self.x[win], self.y[win])

    def far(self) -> Field:
        return np.full((self.size, self.size), FAR, np.float32)

    def union(
        self,
        d: Field,
        shape: Shape,
        points: tuple[Point, ...],
        reach: float,
        blend: float = 0.0,
        move: Rigid = STILL,
    ) -> None:
        """Union ``shape`` into d (smoothly over ``blend``) within ``reach`` of the points.

        Drawing each part only where it can matter keeps a phantom within a few
        milliseconds; ``move`` displaces the shape (a fracture fragment).
        """
        win = self.window(tuple(move.push(q) for q in points), reach + blend)
        if win[0].start >= win[0].stop or win[1].start >= win[1].stop:
            return
        part = shape(*self.coords(win, move))
        if blend > 0.0:
            h = np.maximum(blend - np.abs(d[win] - part), 0.0) * (1.0 / blend)
            d[win] = np.minimum(d[win], part) - h * h * (0.25 * blend)
        else:
            d[win] = np.minimum(d[win], part)

    def cut(
        self, d: Field, shape: Shape, points: tuple[Point, ...], reach: float, move: Rigid = STILL
    ) -> None:
        """d = d minus shape (a hole), computed only within ``reach`` of the points."""
        win = self.window(tuple(move.push(q) for q in points), reach)
        if win[0].start >= win[0].stop or win[1].start >= win[1].stop:
            return
        d[win] = np.maximum(d[win], -shape(*self.coords(win, move)))

    def fill(self, d: Field, soft_edge: float = 1.0) -> Field:
        """1 inside (d < 0), 0 outside, a linear ramp one pixel (times soft_edge) wide."""
        out: Field = 0.5 - d * (1.0 / (self.px * soft_edge))
        # Two ufuncs in place: np.clip's Python wrapper costs more than the arithmetic here.
        np.maximum(out, 0.0, out=out)
        return np.minimum(out, 1.0, out=out)

    def solid(self, d: Field, t: float, inner: float, rim: float) -> Field:
        """Bone from a signed distance: ``inner`` density with a cortex ``t`` thick of ``rim``."""
        cortex = self.fill(np.abs(d + 0.5 * t) - 0.5 * t)
        return inner * self.fill(d) + (rim - inner) * cortex

    def band(self, d: Field, half_width: float) -> Field:
        """1 within ``half_width`` of the zero set of d."""
        return self.fill(np.abs(d) - half_width)

    def smooth_field(self, rng: np.random.Generator, cells: int) -> Field:
        """A smooth random field (unit variance at the nodes), bilinear from a coarse grid."""
        grid = rng.standard_normal((cells, cells)).astype(np.float32)
        pos = np.linspace(0.0, cells - 1.0, self.size, dtype=np.float32)
        lo = np.minimum(pos.astype(np.int64), cells - 2)
        frac = pos - lo
        w = np.zeros((self.size, cells), np.float32)
        idx = np.arange(self.size)
        w[idx, lo] = 1.0 - frac
        w[idx, lo + 1] = frac
        out: Field = w @ grid @ w.T
        return out

    def render(self, look: Look, rng: np.random.Generator) -> npt.NDArray[np.float32]:
        """Attenuation -> display values, with exposure variation and detector noise."""
        att = self.bone * look.bone
        att += self.soft
        att += self.metal
        np.negative(att, out=att)
        img = np.exp(att, out=att)
        np.subtract(1.0, img, out=img)
        if look.gamma != 1.0:
            np.power(img, look.gamma, out=img)
        img *= look.gain
        img += look.offset
        img += 0.015 * self.smooth_field(rng, 4)
        img += look.noise * rng.standard_normal((self.size, self.size), dtype=np.float32)
        np.maximum(img, 0.0, out=img)
        np.minimum(img, 1.0, out=img)
        out: npt.NDArray[np.float32] = img.astype(np.float32, copy=False)
        return out
