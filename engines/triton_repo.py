"""Write a Triton Inference Server model repository from engine folders (the scale-out path).

Each engine becomes ``<out>/<name>/config.pbtxt`` and ``<out>/<name>/1/<file>``:

``onnxruntime``
    ``platform: "onnxruntime_onnx"`` serving ``1/model.onnx`` on the server's GPUs
    (``KIND_GPU``; a CPU-only server needs ``instance_kind="KIND_CPU"``).
``tensorrt``
    ``platform: "tensorrt_plan"`` expecting ``1/model.plan``. A plan only runs on the GPU
    model and TensorRT version that built it, so it is not written here: it must be built on
    the serving machine from the mixed-precision ``model-fp16.onnx`` copied beside
    ``config.pbtxt`` (strongly typed, as :mod:`engines.runtimes.tensorrt` builds it); the
    ``README.txt`` written there holds the ``trtexec`` command with the batch profile.
``python``
    ``backend: "python"`` with a ``1/model.py`` that runs ``1/model.onnx`` with onnxruntime on
    the CPU (``KIND_CPU``). Servers whose only backend is python (pytriton's bundled
    tritonserver, the tests) serve ONNX engines this way.

Versions: Triton names versions by integers and our manifests by strings ("1.2.0"), so every
model is written as Triton version 1, pinned with ``version_policy: specific``, and the
manifest's version and the ONNX SHA-256 are recorded in the config's ``parameters``
(``engine_version``, ``onnx_sha256``). :class:`engines.runtimes.triton.TritonRuntime` asks for
version 1 and refuses a served model whose parameters differ from its manifest, so a node
never talks to an engine other than the one its manifest names.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from dicom_node.errors import DicomNodeError
from engines.manifest import Manifest, TensorSpec, read_manifest, verify_artefacts

PLATFORMS = ("onnxruntime", "tensorrt", "python")
INSTANCE_KINDS = ("KIND_GPU", "KIND_CPU")
TRITON_VERSION = 1  # the one Triton version every model is written as (see the module doc)
VERSION_PARAMETER = "engine_version"
SHA256_PARAMETER = "onnx_sha256"
ONNX_FILE = "model.onnx"
PLAN_ONNX_FILE = "model-fp16.onnx"  # what a TensorRT plan is built from
PLAN_FILE = "model.plan"
PYTHON_FILE = "model.py"
PREFERRED_BATCH_SIZES = (4, 8)  # the dynamic batcher's defaults, clipped to max_batch_size

log = logging.getLogger(__name__)


class TritonRepoError(DicomNodeError, ValueError):
    """A Triton model repository cannot be written as asked."""


# The python-backend model: runs the ONNX file beside it with onnxruntime. Dynamic batching
# hands it several requests at once; they are concatenated into one onnxruntime run (the
# point of batching) and split back. Kept free of our packages: it runs in Triton's stub.
PYTHON_MODEL = '''\
"""Triton python-backend model: serves the ONNX file beside it with onnxruntime (CPU)."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        self.session = ort.InferenceSession(
            str(folder / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        feeds = {}
        sizes = []
        for name in self.inputs:
            arrays = [
                pb_utils.get_input_tensor_by_name(r, name).as_numpy().astype(np.float32)
                for r in requests
            ]
            if not sizes:
                sizes = [a.shape[0] for a in arrays]
            feeds[name] = np.concatenate(arrays, axis=0)
        values = self.session.run(self.outputs, feeds)
        splits = np.cumsum(sizes)[:-1]
        parts = [np.split(np.asarray(v, dtype=np.float32), splits, axis=0) for v in values]
        return [
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(name, np.ascontiguousarray(part[i]))
                    for name, part in zip(self.outputs, parts)
                ]
            )
            for i in range(len(requests))
        ]
'''


def write_triton_repo(
    engine_folders: Sequence[Path],
    out: Path,
    platform: str = "onnxruntime",
    max_batch_size: int = 8,
    instances: int = 1,
    preferred_batch_sizes: Sequence[int] | None = None,
    max_queue_delay_microseconds: int = 2000,
    instance_kind: str | None = None,
) -> list[Path]:
    """Write one Triton model per engine folder into ``out``; return the model folders.

    ``preferred_batch_sizes`` defaults to :func:`default_preferred_batch_sizes`. An existing
    model folder of the same name is replaced, so rewriting a repository after repackaging an
    engine leaves no stale version behind.
    """
    if preferred_batch_sizes is None:
        preferred_batch_sizes = default_preferred_batch_sizes(max_batch_size)
    _check_arguments(
        engine_folders,
        platform,
        max_batch_size,
        instances,
        preferred_batch_sizes,
        max_queue_delay_microseconds,
    )
    kind = instance_kind or ("KIND_CPU" if platform == "python" else "KIND_GPU")
    if kind not in INSTANCE_KINDS:
        raise TritonRepoError(f"instance_kind: expected one of {INSTANCE_KINDS}, got {kind!r}")
    manifests = [(read_manifest(folder), folder) for folder in engine_folders]
    names = [m.name for m, _ in manifests]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TritonRepoError(
            f"engine_folders: engine names must be unique, got {duplicates} twice"
        )
    # `engines triton-repo var/engines` (OUT the engine cache) replaced each engine's folder
    # by its model folder: the checkpoint, ONNX and manifest gone, then "no such file".
    for manifest, _ in manifests:
        model_dir = (out / manifest.name).resolve()
        for folder in (f.resolve() for _, f in manifests):
            if model_dir == folder or folder in model_dir.parents or model_dir in folder.parents:
                raise TritonRepoError(
                    f"out: {out} would put model folder {model_dir} over the engine folder "
                    f"{folder} it is written from: choose a folder outside the engine cache"
                )
        if (model_dir / "manifest.yaml").exists():
            raise TritonRepoError(
                f"out: {model_dir} is an engine folder (it holds manifest.yaml), not a Triton "
                "model: choose a folder outside the engine cache"
            )
    # Everything is checked (hashes, tensor specs) before the first file is written, so a
    # refused engine leaves the repository as it was.
    configs = []
    for manifest, folder in manifests:
        verify_artefacts(
            manifest, folder, ("onnx_fp16",) if platform == "tensorrt" else ("onnx_fp32",)
        )
        configs.append(
            model_config(
                manifest,
                platform,
                max_batch_size=max_batch_size,
                instances=instances,
                instance_kind=kind,
                preferred_batch_sizes=preferred_batch_sizes,
                max_queue_delay_microseconds=max_queue_delay_microseconds,
            )
        )
    written: list[Path] = []
    for (manifest, folder), config in zip(manifests, configs, strict=True):
        model_dir = out / manifest.name
        if model_dir.exists():
            shutil.rmtree(model_dir)
        version_dir = model_dir / str(TRITON_VERSION)
        version_dir.mkdir(parents=True)
        onnx = manifest.artefact_path(folder, "onnx_fp32")
        if platform == "tensorrt":
            # Beside the config, not in the version folder: Triton would try to load it there.
            _copy(manifest.artefact_path(folder, "onnx_fp16"), model_dir / PLAN_ONNX_FILE)
            _write_text(
                model_dir / "README.txt",
                trtexec_readme(manifest, max_batch_size, preferred_batch_sizes),
            )
        else:
            _copy(onnx, version_dir / ONNX_FILE)
        if platform == "python":
            _write_text(version_dir / PYTHON_FILE, PYTHON_MODEL)
        _write_text(model_dir / "config.pbtxt", config)
        log.info("wrote Triton model %s (%s, engine %s)", model_dir, platform, manifest.version)
        written.append(model_dir)
    return written


def model_config(
    manifest: Manifest,
    platform: str,
    max_batch_size: int = 8,
    instances: int = 1,
    instance_kind: str = "KIND_GPU",
    preferred_batch_sizes: Sequence[int] | None = None,
    max_queue_delay_microseconds: int = 2000,
) -> str:
    """The ``config.pbtxt`` text (protobuf text format) of one engine."""
    if preferred_batch_sizes is None:
        preferred_batch_sizes = default_preferred_batch_sizes(max_batch_size)
    if platform == "python":
        serving = 'backend: "python"'
    elif platform == "tensorrt":
        serving = f'platform: "tensorrt_plan"\ndefault_model_filename: "{PLAN_FILE}"'
    elif platform == "onnxruntime":
        serving = f'platform: "onnxruntime_onnx"\ndefault_model_filename: "{ONNX_FILE}"'
    else:
        raise TritonRepoError(f"platform: expected one of {PLATFORMS}, got {platform!r}")
    preferred = ", ".join(str(size) for size in preferred_batch_sizes)
    lines = [
        f"name: {_quote(manifest.name)}",
        serving,
        f"max_batch_size: {max_batch_size}",
        f"version_policy: {{ specific: {{ versions: [ {TRITON_VERSION} ] }} }}",
        "input [",
        ",\n".join(_tensor(spec) for spec in manifest.inputs),
        "]",
        "output [",
        ",\n".join(_tensor(spec) for spec in manifest.outputs),
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {preferred} ]",
        f"  max_queue_delay_microseconds: {max_queue_delay_microseconds}",
        "}",
        f"instance_group [ {{ count: {instances}, kind: {instance_kind} }} ]",
        _parameter(VERSION_PARAMETER, manifest.version),
        _parameter(SHA256_PARAMETER, manifest.artefacts["onnx_fp32"].sha256),
    ]
    return "\n".join(lines) + "\n"


def trtexec_readme(
    manifest: Manifest, max_batch_size: int, preferred_batch_sizes: Sequence[int] | None = None
) -> str:
    """How to build ``1/model.plan`` on the serving GPU (the command with the batch profile)."""
    if preferred_batch_sizes is None:
        preferred_batch_sizes = default_preferred_batch_sizes(max_batch_size)
    opt = max(s for s in preferred_batch_sizes if s <= max_batch_size)

    def shapes(batch: int) -> str:
        return ",".join(
            f"{s.name}:{'x'.join(str(d) for d in (batch, *s.shape[1:]))}" for s in manifest.inputs
        )

    return (
        f"{manifest.name} {manifest.version}: TensorRT plan for Triton's tensorrt_plan platform.\n"
        "A plan runs only on the GPU model and TensorRT version that built it, so build it on\n"
        "the serving machine (inside the tritonserver container, whose TensorRT matches):\n\n"
        f"  trtexec --onnx={PLAN_ONNX_FILE} --saveEngine={TRITON_VERSION}/{PLAN_FILE} "
        "--stronglyTyped \\\n"
        f"    --minShapes={shapes(1)} \\\n"
        f"    --optShapes={shapes(opt)} \\\n"
        f"    --maxShapes={shapes(max_batch_size)}\n\n"
        f"{PLAN_ONNX_FILE} here is the engine's mixed-precision ONNX: fp16, with fp32 inputs,\n"
        "outputs and GeM/softmax layers, joined by Cast nodes. --stronglyTyped makes TensorRT\n"
        "keep those types (opt-in on TensorRT 10; always on in 11, where --fp16 is gone).\n"
        f"SHA-256: {manifest.artefacts['onnx_fp16'].sha256}\n"
    )


def default_preferred_batch_sizes(max_batch_size: int) -> tuple[int, ...]:
    """4 and 8 where ``max_batch_size`` allows them, else ``max_batch_size`` alone."""
    return tuple(s for s in PREFERRED_BATCH_SIZES if s <= max_batch_size) or (max_batch_size,)


def _check_arguments(
    engine_folders: Sequence[Path],
    platform: str,
    max_batch_size: int,
    instances: int,
    preferred_batch_sizes: Sequence[int],
    max_queue_delay_microseconds: int,
) -> None:
    if platform not in PLATFORMS:
        raise TritonRepoError(f"platform: expected one of {PLATFORMS}, got {platform!r}")
    if not engine_folders:
        raise TritonRepoError("engine_folders: expected at least one engine folder, got none")
    if max_batch_size < 1:
        raise TritonRepoError(f"max_batch_size: expected 1 or more, got {max_batch_size}")
    if instances < 1:
        raise TritonRepoError(f"instances: expected 1 or more, got {instances}")
    if not preferred_batch_sizes or any(
        not 1 <= s <= max_batch_size for s in preferred_batch_sizes
    ):
        raise TritonRepoError(
            f"preferred_batch_sizes: expected sizes in 1..{max_batch_size} (max_batch_size), "
            f"got {list(preferred_batch_sizes)}"
        )
    if max_queue_delay_microseconds < 0:
        raise TritonRepoError(
            f"max_queue_delay_microseconds: expected 0 or more, got {max_queue_delay_microseconds}"
        )


def _tensor(spec: TensorSpec) -> str:
    if spec.dtype != "float32":
        raise TritonRepoError(f"{spec.name}: expected dtype float32, got {spec.dtype!r}")
    if not spec.shape or spec.shape[0] != -1:
        raise TritonRepoError(
            f"{spec.name}: expected a dynamic batch axis first (-1), got shape {list(spec.shape)}"
        )
    if len(spec.shape) == 1:
        # A value per batch item (Hip-Net's lateral_present, pji_risk): Triton needs at least
        # one dimension besides the batch, so clients see (N, 1) and the model gets (N,).
        return (
            f"  {{\n    name: {_quote(spec.name)}\n    data_type: TYPE_FP32\n    dims: [ 1 ]\n"
            "    reshape: { shape: [ ] }\n  }"
        )
    dims = ", ".join(str(d) for d in spec.shape[1:])
    return (
        f"  {{\n    name: {_quote(spec.name)}\n    data_type: TYPE_FP32\n    dims: [ {dims} ]\n  }}"
    )


def _parameter(key: str, value: str) -> str:
    return f"parameters: {{ key: {_quote(key)} value: {{ string_value: {_quote(value)} }} }}"


def _quote(text: str) -> str:
    # JSON string escapes are valid protobuf text-format escapes for these ASCII values.
    return json.dumps(text)


def _copy(source: Path, target: Path) -> None:
    # A copy, not a hard link: repackaging an engine rewrites its files in place, which must
    # not change what a running server has loaded (its config still names the old SHA-256).
    shutil.copyfile(source, target)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
