"""Inference speed: each engine at its production size, torch eager against onnxruntime fp32.

Each engine is packaged once (untrained weights, seed 0: the numbers are speed
only, never accuracy) into a work folder and reused while its manifest matches
the size and the code that builds and exports the graph (``EXPORT_CODE``) is
unchanged, so an export change is never timed on a stale ONNX file. Each
backend runs in a worker process of its own (onnxruntime's worker threads keep
spinning after a run and slow whatever runs next in the same process); a worker
opens the engine through ``engines.runtimes.open_runtime`` once and then times
``--iterations`` calls whenever the parent asks. The parent keeps both workers
open and asks them in turns, never side by side: per batch size one warm-up call
each, then ``--repeats`` rounds, each round timing every backend once in a seeded
order of its own (printed), with a pause before each turn for the other worker's
threads to go idle. A backend's figure is the median of its rounds. Timing the
backends in alternating rounds, not one after the other, keeps a change in the
host's speed during the run (a virtual machine's rate drifts within minutes,
docs/performance.md) from falling on one backend only.

FLOPs are counted once per engine and size, in this process, with
``torch.utils.flop_counter.FlopCounterMode`` on the serving graph at batch 1:
a multiply-add counts as 2 FLOPs, and only operators with a FLOP formula
(convolutions, matrix products) are counted; normalisation, activations and
pooling are not. Both backends run fp32, NCHW (torch's channels_last is not
used), with one thread per core unless ``--threads`` says otherwise.

The host's own rate is measured in the same run, before and after the engines: an fp32
matrix product of ``MATMUL_EDGE`` x ``MATMUL_EDGE`` through onnxruntime with the same
threads, in its own process. It is a reference, not a ceiling (a network's convolutions can
run a little above it), and a virtual machine's rate can change several-fold from one day
to the next (docs/performance.md), so each row also gives its GFLOP/s as a share of that
rate ("of matmul").

    .venv/bin/python bench/inference.py              # both engines, batch 1 and 4
    .venv/bin/python bench/inference.py --markdown   # also the table for docs/performance.md
    .venv/bin/python bench/inference.py --engines hip_screen --size 64 --batches 1 --iterations 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("torch", "onnxruntime")
REFERENCE = "torch"
TARGET_RATIO = 1.4  # onnxruntime images/s over torch eager images/s
TARGET_GFLOPS = 150.0  # achieved by onnxruntime, about the fp32 peak of 2 cores
SEED = 0
BUSY_LOAD = 0.5  # 1-minute load average above which the machine was not idle
TURN_PAUSE_SECONDS = 0.5  # before each timed turn: the other worker's spinning threads go idle
MATMUL_EDGE = 2048  # the host reference: an fp32 matrix product of this edge
VERSION = "bench-untrained"
# What decides the exported graph: a change here re-packages the benchmark's engines.
# The catalog too: it names each engine's network (a change there packages another model).
EXPORT_CODE = (
    "engines/models", "engines/catalog.py", "engines/export.py", "engines/serving.py",
    "engines/package.py",
)  # fmt: skip
FINGERPRINT_FILE = "export-code.sha256"


@dataclass(frozen=True)
class Row:
    engine: str
    size: int
    batch: int
    backend: str
    seconds: float  # per batch
    gflop_per_image: float
    ratio: float | None  # reference seconds / this backend's seconds, None on the reference

    @property
    def ms_per_batch(self) -> float:
        return self.seconds * 1e3

    @property
    def images_per_s(self) -> float:
        return self.batch / self.seconds

    @property
    def gflop_per_s(self) -> float:
        return self.gflop_per_image * self.images_per_s

    def of_matmul(self, matmul_gflop_per_s: float) -> float:
        """This row's GFLOP/s as a share of the host's matrix-product rate."""
        return self.gflop_per_s / matmul_gflop_per_s

    @property
    def targets(self) -> str:
        if self.ratio is None:
            return "reference"
        ratio = "met" if self.ratio >= TARGET_RATIO else "NOT met"
        gflops = "met" if self.gflop_per_s >= TARGET_GFLOPS else "NOT met"
        return f"{ratio} / {gflops}"


# The engines this benchmark measures (issue 3: seeds 001 and 002).
BENCH_ENGINES = ("hip_screen", "hipnet")


def cores() -> int:
    return len(os.sched_getaffinity(0))


def parse_ints(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,4, got {text!r}")
    return values


# --- worker: runs in its own process, one backend ---------------------------------------------


def run_worker(folder: Path, backend: str, threads: int) -> None:
    """Open the engine, say ready, then answer each request line with the seconds per call.

    A request is a JSON line ``{"batch": B, "iterations": N}``; the answer is
    ``{"seconds": S}``, the mean over N calls at batch B. End of input ends the worker.
    """
    import numpy as np

    from engines.runtimes import RuntimeOptions, open_runtime

    if backend == "torch":
        import torch

        torch.set_num_threads(threads)  # torch's default may count physical cores only
    rng = np.random.default_rng(SEED)
    with open_runtime(folder, RuntimeOptions(backend=backend, threads=threads)) as runtime:
        feeds: dict[int, dict[str, Any]] = {}
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            request = json.loads(line)
            batch = int(request["batch"])
            if batch not in feeds:
                inputs = {}
                for spec in runtime.input_spec:
                    shape = tuple(batch if d == -1 else d for d in spec.shape)
                    # 1-D inputs are per-item flags (Hip-Net's lateral_present): all present.
                    inputs[spec.name] = (
                        np.ones(shape, np.float32)
                        if len(shape) == 1
                        else rng.standard_normal(shape, dtype=np.float32)
                    )
                feeds[batch] = inputs
            iterations = int(request["iterations"])
            started = time.perf_counter()
            for _ in range(iterations):
                runtime.infer(feeds[batch])
            seconds = (time.perf_counter() - started) / iterations
            print(json.dumps({"seconds": seconds}), flush=True)


def run_matmul_worker(threads: int, iterations: int, repeats: int) -> dict[str, object]:
    """GFLOP/s of an fp32 MATMUL_EDGE-square matrix product through onnxruntime."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    n = MATMUL_EDGE
    operands = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "ab"]
    product = helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul", operands, [product]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(SEED)
    feeds = {x: rng.standard_normal((n, n), dtype=np.float32) for x in "ab"}
    session.run(None, feeds)  # warm-up
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(iterations):
            session.run(None, feeds)
        samples.append((time.perf_counter() - started) / iterations)
    return {"matmul_gflop_per_s": 2.0 * n**3 / statistics.median(samples) / 1e9}


# --- parent: package, count FLOPs, spawn one worker per backend -------------------------------


def export_code_fingerprint() -> str:
    """SHA-256 over the Python sources in ``EXPORT_CODE``, by path and content."""
    import hashlib

    digest = hashlib.sha256()
    for entry in EXPORT_CODE:
        path = ROOT / entry
        for source in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(source.relative_to(ROOT).as_posix().encode())
            digest.update(source.read_bytes())
    return digest.hexdigest()


def package(name: str, size: int, work: Path) -> Path:
    """The engine folder for ``name`` at ``size``, packaged with untrained weights if missing
    or packaged by other export code."""
    import torch

    from engines.catalog import engine_spec
    from engines.manifest import ManifestError, read_manifest
    from engines.models import create
    from engines.package import package_engine

    folder = work / f"{name}-{size}"
    fingerprint = export_code_fingerprint()
    stamp = folder / FINGERPRINT_FILE
    spec = engine_spec(name)
    try:
        manifest = read_manifest(folder)
        same_code = stamp.is_file() and stamp.read_text().strip() == fingerprint
        same_model = (manifest.name, manifest.model) == (name, spec.model)
        if same_model and manifest.preprocessing.size == size and same_code:
            return folder
    except ManifestError:
        pass  # not packaged yet (or unreadable): package it below
    torch.manual_seed(SEED)
    print(f"packaging {name} at {size}x{size} into {folder} ...", flush=True)
    package_engine(
        spec,
        create(spec.model),
        size,
        folder,
        VERSION,
        clinical_use="benchmark only: untrained weights",
    )
    stamp.write_text(fingerprint + "\n")
    return folder


def gflop_per_image(name: str, size: int) -> float:
    """FlopCounterMode's count (a multiply-add = 2 FLOPs) for one image, in GFLOP."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from engines.catalog import engine_spec
    from engines.models import create
    from engines.serving import example_inputs, serving_graph

    model = create(engine_spec(name).model).eval()
    graph = serving_graph(model).eval()
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        graph(*example_inputs(model, size, batch=1))
    return float(counter.get_total_flops()) / 1e9


def run_json_worker(what: str, *arguments: str) -> dict[str, Any]:
    """Run this script with ``arguments`` in a process of its own; its last JSON line."""
    command = [sys.executable, str(Path(__file__).resolve()), *arguments]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{what} exited with {done.returncode}: {done.stderr[-2000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{what} printed no result: {done.stdout!r}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def spawn_matmul(threads: int, iterations: int, repeats: int) -> float:
    """The host's matrix-product rate (GFLOP/s), measured in a process of its own."""
    result = run_json_worker(
        "matmul worker", "--matmul-worker",
        "--threads", str(threads), "--iterations", str(iterations), "--repeats", str(repeats),
    )  # fmt: skip
    return float(result["matmul_gflop_per_s"])


class Worker:
    """One backend's worker process, asked for timings one request at a time."""

    def __init__(self, folder: Path, backend: str, threads: int, log: Path) -> None:
        self.what = f"{backend} worker on {folder.name}"
        self._log_path = log
        self._log = log.open("w")
        command = [
            sys.executable, str(Path(__file__).resolve()), "--worker",
            "--folder", str(folder), "--backend", backend, "--threads", str(threads),
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            text=True, cwd=ROOT,
        )  # fmt: skip
        self._answer()  # {"ready": true} once the engine is open

    def seconds(self, batch: int, iterations: int) -> float:
        """Seconds per call at ``batch``, the mean over ``iterations`` calls."""
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps({"batch": batch, "iterations": iterations}) + "\n")
        self._process.stdin.flush()
        return float(self._answer()["seconds"])

    def _answer(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            if line.startswith("{"):
                answer: dict[str, Any] = json.loads(line)
                return answer
        code = self._process.wait()
        self.close()
        raise RuntimeError(f"{self.what} exited with {code}: {self._log_path.read_text()[-2000:]}")

    def close(self) -> None:
        """End the worker (end of its input) and close its pipes and log."""
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.close()
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process.stdout.close()
        self._log.close()


def rounds_order(engine: str, batch: int, repeats: int) -> list[tuple[str, ...]]:
    """Each round's backend order: seeded by the engine and batch, so a run can be repeated."""
    import random

    generator = random.Random(f"{SEED}:{engine}:{batch}")
    orders = []
    for _ in range(repeats):
        order = list(BACKENDS)
        generator.shuffle(order)
        orders.append(tuple(order))
    return orders


def measure(name: str, size: int, args: argparse.Namespace, threads: int) -> list[Row]:
    folder = package(name, size, args.work)
    gflop = gflop_per_image(name, size)
    samples: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="inference-bench-") as logs:
        workers: dict[str, Worker] = {}
        try:
            for backend in BACKENDS:  # opened one after the other: they share the cores
                workers[backend] = Worker(folder, backend, threads, Path(logs) / backend)
            for batch in args.batches:
                for backend in BACKENDS:  # warm-up: allocations, onnxruntime's arena, caches
                    time.sleep(TURN_PAUSE_SECONDS)
                    workers[backend].seconds(batch, 1)
                orders = rounds_order(name, batch, args.repeats)
                print(
                    f"rounds of {name} at batch {batch}: " + ", ".join("-".join(o) for o in orders),
                    flush=True,
                )
                for order in orders:
                    for backend in order:  # never side by side: they share the cores
                        time.sleep(TURN_PAUSE_SECONDS)
                        sample = workers[backend].seconds(batch, args.iterations)
                        samples.setdefault((backend, batch), []).append(sample)
        finally:
            for worker in workers.values():
                worker.close()
    seconds = {key: statistics.median(values) for key, values in samples.items()}
    rows = []
    for batch in args.batches:
        reference = seconds[(REFERENCE, batch)]
        for backend in BACKENDS:
            own = seconds[(backend, batch)]
            ratio = None if backend == REFERENCE else reference / own
            rows.append(Row(name, size, batch, backend, own, gflop, ratio))
    return rows


HEADERS = (
    "engine", "size", "batch", "backend", "ms/batch", "images/s", "GFLOP/image", "GFLOP/s",
    "of matmul", "onnxruntime/torch",
    f"targets (>= {TARGET_RATIO}x / >= {TARGET_GFLOPS:.0f} GFLOP/s)",
)  # fmt: skip
TEXT_COLUMNS = {0, 3, len(HEADERS) - 1}  # left-aligned; numbers align right


def cells(row: Row, matmul_gflop_per_s: float) -> tuple[str, ...]:
    return (
        row.engine,
        f"{row.size}x{row.size}",
        str(row.batch),
        row.backend,
        f"{row.ms_per_batch:.1f}",
        f"{row.images_per_s:.2f}",
        f"{row.gflop_per_image:.2f}",
        f"{row.gflop_per_s:.1f}",
        f"{row.of_matmul(matmul_gflop_per_s):.2f}",
        "-" if row.ratio is None else f"{row.ratio:.2f}x",
        row.targets,
    )


def text_table(rows: list[Row], matmul_gflop_per_s: float) -> str:
    table = [HEADERS, *(cells(r, matmul_gflop_per_s) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    left = TEXT_COLUMNS
    lines = [
        "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(rows: list[Row], matmul_gflop_per_s: float) -> str:
    align = ["---" if i in TEXT_COLUMNS else "---:" for i in range(len(HEADERS))]
    lines = [HEADERS, tuple(align), *(cells(r, matmul_gflop_per_s) for r in rows)]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="hip_screen,hipnet", help="comma-separated names")
    parser.add_argument("--batches", type=parse_ints, default=(1, 4), help="e.g. 1,4")
    parser.add_argument("--iterations", type=int, default=5, help="timed calls per repeat")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="rounds (each backend timed once per round); the median is reported",
    )
    parser.add_argument("--size", type=int, help="input edge for every engine (smoke tests)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads; 0 = one per core")
    parser.add_argument(
        "--work", type=Path, default=ROOT / "var" / "bench" / "engines",
        help="where packaged engines are kept and reused",
    )  # fmt: skip
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--matmul-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--backend", choices=BACKENDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.iterations < 1 or args.repeats < 1:
        parser.error(
            f"--iterations and --repeats must be >= 1, got {args.iterations}, {args.repeats}"
        )
    if args.size is not None and args.size < 32:
        parser.error(f"--size: expected >= 32 (the backbones downsample 32x), got {args.size}")
    threads = args.threads or cores()
    if args.matmul_worker:
        print(json.dumps(run_matmul_worker(threads, args.iterations, args.repeats)), flush=True)
        return 0
    if args.worker:
        if args.folder is None or args.backend is None:
            parser.error("--worker needs --folder and --backend")
        run_worker(args.folder, args.backend, threads)
        return 0

    from engines.catalog import ENGINES

    names = [n.strip() for n in args.engines.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCH_ENGINES]
    if unknown:
        # The fusion engines need a CT grid and clinical columns this script does not give
        # (the multimodal one would be timed at the demo grid under a production size);
        # they crashed in packaging or in the FLOP count.
        parser.error(
            f"--engines: {unknown} not measured here; expected some of {list(BENCH_ENGINES)} "
            f"(the engines of seeds 001 and 002; catalogue: {sorted(ENGINES)})"
        )
    load = os.getloadavg()[0]
    matmul_before = spawn_matmul(threads, args.iterations, args.repeats)
    rows: list[Row] = []
    for name in names:
        size = args.size or ENGINES[name].production_size
        rows.extend(measure(name, size, args, threads))
    matmul_after = spawn_matmul(threads, args.iterations, args.repeats)
    matmul = 0.5 * (matmul_before + matmul_after)

    print(
        f"inference benchmark: {threads} thread(s) on {cores()} core(s), fp32, NCHW "
        f"(channels_last not used); untrained weights (seed {SEED}), speed only; "
        f"median of {args.repeats} round(s) of {args.iterations} call(s) after one warm-up; "
        "each backend in its own process, the backends timed in turns within each round"
    )
    print(
        "GFLOP counted by torch FlopCounterMode (multiply-add = 2 FLOPs; convolutions and "
        "matrix products only); onnxruntime/torch = torch ms / onnxruntime ms"
    )
    print(
        "an image is one network input item: one hip region for hip_screen, one hip case "
        "(AP + lateral view through the 4 members) for hipnet"
    )
    print(
        f"host reference: an fp32 {MATMUL_EDGE}x{MATMUL_EDGE} matrix product through "
        f"onnxruntime on {threads} thread(s): {matmul_before:.1f} GFLOP/s before the engines, "
        f"{matmul_after:.1f} after; 'of matmul' = GFLOP/s over their mean, {matmul:.1f}"
    )
    if load > BUSY_LOAD:
        # Another process on these cores makes torch's OpenMP threads wait on each other.
        print(f"WARNING: load average {load:.2f} at start: the machine was busy, numbers are low")
    print(text_table(rows, matmul))
    if args.markdown:
        print()
        print(markdown_table(rows, matmul))
    if args.json:
        payload = [{**asdict(r), "images_per_s": r.images_per_s, "gflop_per_s": r.gflop_per_s,
                    "matmul_gflop_per_s": matmul, "of_matmul": r.of_matmul(matmul)}
                   for r in rows]  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
