"""Time to result through a real PACS: Orthanc -> node -> Orthanc.

Phantom studies go into Orthanc with dcmtk's ``storescu``; Orthanc's Lua hook
autoroutes them to the node, which sends its SR and overlays back. For each
study the clock starts when Orthanc has stored its last instance (storescu has
its final C-STORE response) and stops when the SR is visible through Orthanc's
REST API. One study at a time (the node idle in between), so the figure is the
turnaround a radiologist waits for, beside what it is made of: the node's quiet
period and its engines' time (the node's ``inference_seconds``: inference, with the
batch's normalisation and the heat maps). Target (issue 4): p50 <= inference + quiet
period + 1 s, with the quiet period at its default of 2 s or less.

    .venv/bin/python bench/e2e.py                      # 20 studies, demo engines
    .venv/bin/python bench/e2e.py --studies 3 --engines DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))  # the Orthanc harness of the tests

from orthanc import Orthanc, RouteTarget, free_port, run_orthanc, storescu_into  # noqa: E402

from dicom_node.config import Config, load_config  # noqa: E402
from dicom_node.config_results import Destination  # noqa: E402
from dicom_node.node import Node  # noqa: E402
from engines.phantoms.studies import write_study  # noqa: E402

LABELS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("normal", "normal", {}),
    ("femoral_neck_fracture", "normal", {}),
    ("osteoarthritis", "developmental_dysplasia_of_hip", {}),
    ("normal", "total_hip_arthroplasty", {"L": "aseptic_loosening"}),
    ("intertrochanteric_fracture", "osteonecrosis_of_femoral_head", {}),
)


def has_sr(orthanc: Orthanc, study_uid: str) -> bool:
    study = orthanc.find_study(study_uid)
    if study is None:
        return False
    series = orthanc.get(f"/studies/{study}/series?expand")
    return any(s["MainDicomTags"].get("Modality") == "SR" for s in series)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def run(cfg: Config, studies: int, size: int, work: Path) -> dict[str, object]:
    node_port = free_port()
    with run_orthanc(
        work / "orthanc",
        route_to=RouteTarget(cfg.node.ae_title, "127.0.0.1", node_port),
        skip_calling_aes=(cfg.node.ae_title,),
    ) as orthanc:
        node_cfg = dataclasses.replace(
            cfg,
            node=dataclasses.replace(cfg.node, host="127.0.0.1", port=node_port),
            storage=dataclasses.replace(cfg.storage, spool_dir=work / "spool", min_free_bytes=0),
            destinations=(Destination("pacs", orthanc.aet, "127.0.0.1", orthanc.dicom_port),),
            metrics=dataclasses.replace(cfg.metrics, port=0),
        )
        node = Node(node_cfg)
        node.start()
        try:
            times: list[float] = []
            for n in range(studies):
                right, left, failure = LABELS[n % len(LABELS)]
                study = write_study(work / f"s{n}", 9000 + n, right, left, failure, size=size)
                storescu_into(orthanc, list(study.files))
                stored = time.monotonic()
                uid = study.identity.study_uid
                while not has_sr(orthanc, uid):
                    if time.monotonic() - stored > 120:
                        raise RuntimeError(f"no SR for study {n} within 120 s")
                    time.sleep(0.02)
                times.append(time.monotonic() - stored)
                print(f"study {n + 1:>2}/{studies}: {times[-1]:.2f} s", file=sys.stderr)
            if node.state is None:
                raise RuntimeError("node has no state")
            inference = [
                float(json.loads(j.summary)["inference_seconds"])
                for j in node.state.jobs("done")
                if j.summary
            ]
        finally:
            node.stop(drain_seconds=1)
    quiet = cfg.assembly.quiet_seconds
    p50 = statistics.median(times)
    infer = statistics.median(inference)
    target = target_seconds(infer, quiet)
    return {
        "studies": studies,
        "size": size,
        # What ran: `auto` resolves to tensorrt or onnxruntime on this machine.
        "backend": _backend(cfg.engines.backend),
        "quiet_seconds": quiet,
        "inference_p50": infer,
        "p50": p50,
        "p95": percentile(times, 0.95),
        "target": target,
        "met": p50 <= target,
    }


# The quiet period the target allows at most (issue 4: the default, 2 s).
TARGET_QUIET_SECONDS = 2.0


def target_seconds(inference: float, quiet: float) -> float:
    """Issue 4's target for the p50: inference + quiet period + 1 s, with the quiet period
    at its default of 2 s or less: a longer one does not lengthen the target (it was
    inference + quiet + 1 s whatever the quiet period, so a 6 s one 'met' it)."""
    return inference + min(quiet, TARGET_QUIET_SECONDS) + 1.0


def _backend(configured: str) -> str:
    """The backend that ran, and the configured one where it differs: ``onnxruntime (auto)``."""
    from engines.runtimes import resolve_backend

    resolved = resolve_backend(configured)
    return resolved if resolved == configured else f"{resolved} ({configured})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--size", type=int, default=256, help="hip region edge in pixels")
    parser.add_argument("--config", default=str(ROOT / "config.yaml"))
    parser.add_argument("--engines", help="engines.cache_dir (default: the config's)")
    parser.add_argument("--json", help="write the result row here")
    args = parser.parse_args()
    if args.studies < 1:
        parser.error(f"--studies: expected 1 or more, got {args.studies}")
    overrides = {"engines.cache_dir": str(Path(args.engines).resolve())} if args.engines else {}
    cfg = load_config(args.config, overrides)
    with tempfile.TemporaryDirectory(prefix="e2e-") as tmp:
        row = run(cfg, args.studies, args.size, Path(tmp))
    print("| studies | backend | quiet period s | inference p50 s | time to result p50 s "
          "| p95 s | target p50 s | met |")  # fmt: skip
    print("|---:|---|---:|---:|---:|---:|---:|---|")
    print(f"| {row['studies']} | {row['backend']} | {row['quiet_seconds']:.1f} | "
          f"{row['inference_p50']:.2f} | {row['p50']:.2f} | {row['p95']:.2f} | "
          f"{row['target']:.2f} | {'yes' if row['met'] else 'no'} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
