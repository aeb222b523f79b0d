"""Ingest throughput: the node against dcmtk's storescp, same files, same sender.

Both receivers run as their own processes on loopback (dcmtk's with ``TCP_NODELAY=1``:
it is 20-40x slower without it) and accept the same maximum PDU (``MAX_PDU``, storescp's
largest), so ``storescu`` cuts each file into the same P-DATA PDUs for both; it sends every
file of a set over one association. The node spools durably (fsync of file, folder and
SQLite per instance); storescp writes files without fsync. Each run times ``storescu`` from
its start to its exit, for every receiver alike (its start-up, ~20 ms, is in both). Each
run takes the receivers in its own seeded order (printed), so that neither the first place
nor the receiver before, whose files were just deleted, is always the same one's; the table
shows medians. A verdict on the targets is
printed only from three runs or more (``--quick`` is a smoke run).

    .venv/bin/python bench/ingest.py            # 200 x 512x512 and 50 x 3000x2500, 3 runs
    .venv/bin/python bench/ingest.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_node.synthetic.dcmtk import dcmtk_program

ENV = {**os.environ, "TCP_NODELAY": "1"}


def dcmtk(name: str) -> str:
    """dcmtk's ``name``, never pynetdicom's script of that name (an activated venv)."""
    program = dcmtk_program(name)
    if program is None:
        raise SystemExit(f"{name} not found: dcmtk is not installed (make bench installs it)")
    return program


DX = "1.2.840.10008.5.1.4.1.1.1.1"
TARGETS = {"small": 0.5, "large": 0.9}
MAX_PDU = 131072  # storescp's largest receive PDU; the node is given the same
MIN_RUNS_FOR_VERDICT = 3
# storescp+sync: storescp, then sync(2) inside the timing, as a durability-equivalent reference.
# fsync ceiling: the same bytes written with one fsync per file, no network: the most a
# durable receiver can do on this disk in the same minutes.
RECEIVERS = ("storescp", "storescp+sync", "fsync ceiling", "node")


@dataclass(frozen=True)
class Result:
    receiver: str
    files: int
    megabytes: float
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.seconds

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds


def make_files(folder: Path, count: int, rows: int, cols: int) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4096, size=(rows, cols), dtype=np.uint16)
    study, series = generate_uid(), generate_uid()
    paths = []
    for n in range(count):
        ds = Dataset()
        ds.SOPClassUID = DX
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.Modality = "DX"
        ds.InstanceNumber = n + 1
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels.tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, called_ae: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode} before it was ready")
        echo = subprocess.run(
            [dcmtk("echoscu"), "-aec", called_ae, "127.0.0.1", str(port)],
            env=ENV, capture_output=True, check=False,
        )  # fmt: skip
        if echo.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("receiver not ready within 30 s")


def start_storescp(out: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [dcmtk("storescp"), "-od", str(out), "+xa", "-aet", "STORESCP", "-pdu", str(MAX_PDU),
         str(port)],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def start_node(out: Path, port: int) -> subprocess.Popen[bytes]:
    config = out.parent / f"{out.name}.yaml"
    config.write_text(
        f"node: {{host: 127.0.0.1, port: {port}, ae_title: TRIAGE, max_pdu: {MAX_PDU}}}\n"
        f"storage: {{spool_dir: {out}, min_free_bytes: 0}}\n"
        # Ingest only: no engine to open (the shipped rules need the demo engines), so a
        # completed study's job is skipped; the metrics endpoint on a free port.
        "routing: {rules: [], cascade: []}\n"
        "metrics: {port: 0}\n"
        "logging: {level: WARNING}\n"
    )
    return subprocess.Popen(
        [sys.executable, "-m", "dicom_node", "serve", "--config", str(config)],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def received(receiver: str, out: Path) -> int:
    if receiver == "node":
        return sum(1 for _ in (out / "instances").rglob("*.dcm"))
    return sum(1 for p in out.iterdir() if p.is_file())


def disk_ceiling(files: list[Path], out: Path) -> float:
    """Seconds to write the same bytes with one fsync per file: no network, no DICOM."""
    out.mkdir()
    blobs = [p.read_bytes() for p in files]
    os.sync()
    started = time.perf_counter()
    for n, blob in enumerate(blobs):
        with (out / f"{n}.dcm").open("wb") as handle:
            handle.write(blob)
            os.fsync(handle.fileno())
    seconds = time.perf_counter() - started
    shutil.rmtree(out)
    return seconds


def run_once(receiver: str, files: list[Path], work: Path, index: int) -> Result:
    if receiver == "fsync ceiling":
        size = sum(p.stat().st_size for p in files) / 1e6
        return Result(receiver, len(files), size, disk_ceiling(files, work / f"disk-{index}"))
    out = work / f"{receiver}-{index}"
    out.mkdir()
    port = free_port()
    called = "TRIAGE" if receiver == "node" else "STORESCP"
    proc = start_node(out, port) if receiver == "node" else start_storescp(out, port)
    try:
        wait_ready(port, called, proc)
        os.sync()  # every run starts without dirty pages left by the previous one
        started = time.perf_counter()
        send = subprocess.run(
            [dcmtk("storescu"), "-xe", "-aet", "BENCH", "-aec", called, "127.0.0.1", str(port),
             *map(str, files)],
            env=ENV, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if receiver == "storescp+sync":
            os.sync()  # what the node's per-file fsync guarantees, storescp gets only here
        seconds = time.perf_counter() - started
    finally:
        stop(proc)
    if send.returncode != 0:
        raise RuntimeError(f"storescu to {receiver} failed: {send.stderr[-1000:]}")
    count = received(receiver, out)
    if count != len(files):
        raise RuntimeError(f"{receiver} holds {count} files, {len(files)} were sent")
    size = sum(p.stat().st_size for p in files) / 1e6
    shutil.rmtree(out)
    return Result(receiver, len(files), size, seconds)


def file_system(path: Path) -> str:
    """The type of the file system ``path`` is on (its longest mount point in
    /proc/self/mounts), or "" where that cannot be read."""
    best, kind = "", ""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return ""
    resolved = str(path.resolve())
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else "met" if met else "NOT met"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 small, 8 large files, one run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--only", choices=["small", "large"], help="run one file set only")
    parser.add_argument(
        "--work",
        type=Path,
        help="folder for the files, spools and storescp output (default: the system's "
        "temporary folder): put it on the disk a spool would use",
    )
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs: expected 1 or more, got {args.runs}")
    if dcmtk_program("storescp") is None:
        parser.error("dcmtk is not installed (make bench installs it)")
    runs = 1 if args.quick else args.runs
    sets = {
        "small": (40 if args.quick else 200, 512, 512),
        "large": (8 if args.quick else 50, 3000, 2500),
    }
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    # Absolute: the node reads its spool_dir against its config file's folder (inside it).
    work = Path(tempfile.mkdtemp(prefix="ingest-bench-", dir=args.work)).resolve()
    memory = file_system(work)
    if memory in ("tmpfs", "ramfs"):
        # fsync is free there: the node's durable writes, storescp+sync and the fsync
        # ceiling all ran at memory speed, and the table looked like any other.
        print(
            f"WARNING: {work} is on {memory}, where fsync costs nothing: the durable "
            "figures are memory speed, not a disk's (--work DIR on a disk)",
            flush=True,
        )
    rows = []
    try:
        for name, (count, r, c) in sets.items():
            if args.only and name != args.only:
                continue
            files = make_files(work / f"files-{name}", count, r, c)
            results: dict[str, list[Result]] = {r: [] for r in RECEIVERS}
            for i in range(runs):
                # A seeded shuffle per run: a rotation kept each receiver behind the same
                # one (the node always after the fsync ceiling deleting its 750 MB).
                order = random.Random(f"{name}-{i}").sample(RECEIVERS, len(RECEIVERS))
                print(f"{name} run {i + 1}: {', '.join(order)}", file=sys.stderr, flush=True)
                for receiver in order:
                    results[receiver].append(run_once(receiver, files, work, i))
            med = {k: statistics.median(r.seconds for r in v) for k, v in results.items()}
            mb = results["node"][0].megabytes
            ratio = med["storescp"] / med["node"]
            ratio_sync = med["storescp+sync"] / med["node"]
            ratio_disk = med["fsync ceiling"] / med["node"]
            rows.append({
                "set": name, "files": count, "size": f"{r}x{c}x16", "megabytes": round(mb, 1),
                "storescp_s": med["storescp"], "node_s": med["node"],
                "storescp_mb_s": mb / med["storescp"], "node_mb_s": mb / med["node"],
                "storescp_files_s": count / med["storescp"], "node_files_s": count / med["node"],
                "ratio": ratio, "ratio_vs_sync": ratio_sync,
                "synced_mb_s": mb / med["storescp+sync"],
                "disk_mb_s": mb / med["fsync ceiling"], "ratio_vs_disk": ratio_disk,
                "target": TARGETS[name],
                "met": ratio >= TARGETS[name] if runs >= MIN_RUNS_FOR_VERDICT else None,
                "runs": [asdict(x) for v in results.values() for x in v],
            })  # fmt: skip
            shutil.rmtree(work / f"files-{name}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"ingest benchmark: storescu -> receiver on loopback, median of {runs} run(s)")
    print(
        f"{'set':<6} {'files':>5} {'image':>14} {'MB':>7} | {'storescp MB/s':>13} "
        f"{'files/s':>8} | {'+sync MB/s':>10} | {'node MB/s':>9} {'files/s':>8} | "
        f"{'node/storescp':>13}  target           | {'node/(+sync)':>12} | "
        f"{'fsync MB/s':>10} {'node/fsync':>10}"
    )
    for row in rows:
        print(
            f"{row['set']:<6} {row['files']:>5} {row['size']:>14} {row['megabytes']:>7} | "
            f"{row['storescp_mb_s']:>13.1f} {row['storescp_files_s']:>8.1f} | "
            f"{row['synced_mb_s']:>10.1f} | "
            f"{row['node_mb_s']:>9.1f} {row['node_files_s']:>8.1f} | {row['ratio']:>12.2f}x  "
            f">= {row['target']}x {_verdict(row['met']):<7} | "
            f"{row['ratio_vs_sync']:>11.2f}x | "
            f"{row['disk_mb_s']:>10.1f} {row['ratio_vs_disk']:>9.2f}x"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
