"""Sending files with dcmtk's ``storescu`` exactly as they are (demo, tests, benchmarks).

By default storescu proposes only uncompressed syntaxes and converts, or fails
on compressed files. An association profile with one presentation context per
(storage class, transfer syntax) makes it pick, per file, the context in the
file's own syntax, so the data set goes over the wire unchanged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from dicom_node.errors import FactoryError
from dicom_node.receive.sop_classes import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES

_MAX_CONTEXTS = 128  # PS3.8: presentation context IDs are odd numbers 1-255


def storescu_profile(
    path: Path,
    syntaxes: Sequence[str] = TRANSFER_SYNTAXES,
    sop_classes: Sequence[str] | None = None,
) -> tuple[str, str]:
    """Write a storescu ``-xf`` profile; return ``(file, profile name)``."""
    if sop_classes is None:
        # The image classes the node routes on; SR/SC would exceed 128 contexts.
        sop_classes = [c for c in STORAGE_SOP_CLASSES if ".88." not in c][: _MAX_CONTEXTS // 13]
    if len(sop_classes) * len(syntaxes) > _MAX_CONTEXTS:
        raise FactoryError(
            f"storescu profile: {len(sop_classes)} classes x {len(syntaxes)} syntaxes exceed "
            f"{_MAX_CONTEXTS} presentation contexts"
        )
    lines = ["[[TransferSyntaxes]]"]
    for i, uid in enumerate(syntaxes):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {uid}"]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    n = 0
    for sop_class in sop_classes:
        for i in range(len(syntaxes)):
            n += 1
            lines.append(f"PresentationContext{n} = {sop_class}\\TS{i}")
    lines += ["[[Profiles]]", "[All]", "PresentationContexts = Contexts"]
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return str(path), "All"


def dcmtk_program(name: str) -> str | None:
    """The path of dcmtk's program ``name`` on PATH, or None. pynetdicom installs console
    scripts of the same names (storescu, storescp, echoscu, ...) into this Python's scripts
    folder, taking other arguments: first on PATH (an activated virtualenv, the container
    image), theirs ran with dcmtk's arguments and failed, or measured pynetdicom as dcmtk."""
    scripts = Path(sysconfig.get_path("scripts")).resolve()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not folder or Path(folder).resolve() == scripts:
            continue
        found = shutil.which(name, path=folder)
        if found is not None:
            return found
    return None


def storescu(
    host: str,
    port: int,
    files: Sequence[Path],
    *,
    called_ae: str,
    calling_ae: str = "STORESCU",
    profile: tuple[str, str] | None = None,
    extra: Sequence[str] = (),
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run storescu (with ``TCP_NODELAY=1``, without which dcmtk is 20-40x slower)."""
    program = dcmtk_program("storescu")
    if program is None:
        raise FactoryError("storescu not found: install dcmtk (make test/demo installs it)")
    args = [program, "-aet", calling_ae, "-aec", called_ae, *extra]
    if profile is not None:
        args += ["-xf", *profile]
    args += [host, str(port), *map(str, files)]
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run(
        args, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
