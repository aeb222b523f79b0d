"""Deterministic synthetic hip radiographs with lesion masks (no real images exist here).

Demo engines are trained on these phantoms, tests and benchmarks use them, and the
interpretability checks compare heat maps with their masks.
"""

from engines.phantoms.osteoporosis import osteoporosis_hip
from engines.phantoms.pelvis import ap_pelvis
from engines.phantoms.phantom import MAX_SIZE, MIN_SIZE, VIEWS, Phantom, PhantomError
from engines.phantoms.prosthesis import prosthesis_hip
from engines.phantoms.screen import screen_hip

__all__ = [
    "MAX_SIZE",
    "MIN_SIZE",
    "VIEWS",
    "Phantom",
    "PhantomError",
    "ap_pelvis",
    "osteoporosis_hip",
    "prosthesis_hip",
    "screen_hip",
]
