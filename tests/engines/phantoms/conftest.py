"""The phantom tests reuse the synthetic factory's dciodvfy fixture.

It lives in tests/synthetic/conftest.py; tests/ is not on sys.path (that would let
tests/engines/... shadow the real engines package), so the module is loaded by path.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "_synthetic_checkers", Path(__file__).parents[2] / "synthetic" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_checkers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_checkers)

dciodvfy = _checkers.dciodvfy
