"""open_runtime and the Runtime protocol on the CPU backends (onnxruntime, torch)."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from races import ClosingBatch

from engines.export import sha256_of
from engines.manifest import MANIFEST_NAME, Manifest, ManifestError, read_manifest, write_manifest
from engines.runtimes import (
    EngineRuntimeError,
    InferenceInputError,
    RuntimeOptions,
    needed_artefacts,
    open_runtime,
    resolve_backend,
)
from engines.runtimes.base import Runtime, check_signature
from engines.runtimes.onnx import OnnxRuntime
from engines.runtimes.torch_runtime import TorchRuntime


def _images(count: int) -> np.ndarray:
    return np.random.default_rng(count).normal(size=(count, 1, 64, 64)).astype(np.float32)


def test_onnxruntime_and_torch_agree(hip_screen_engine: Path) -> None:
    batch = {"image": _images(3)}
    with open_runtime(hip_screen_engine, RuntimeOptions(backend="onnxruntime")) as onnx:
        assert isinstance(onnx, OnnxRuntime)
        from_onnx = onnx.infer(batch)
    with open_runtime(hip_screen_engine, RuntimeOptions(backend="torch")) as torch_runtime:
        assert isinstance(torch_runtime, TorchRuntime)
        from_torch = torch_runtime.infer(batch)
    assert list(from_onnx) == list(from_torch) == ["logits", "features"]
    assert from_onnx["logits"].shape == (3, 8)
    assert from_onnx["features"].shape == (3, 2048, 2, 2)
    for name, value in from_onnx.items():
        assert value.dtype == np.float32
        np.testing.assert_allclose(from_torch[name], value, atol=1e-4)


def test_auto_is_onnxruntime_without_a_gpu() -> None:
    from engines.runtimes import gpu_available

    if gpu_available():
        pytest.skip("a GPU with TensorRT is present: auto picks tensorrt")
    assert resolve_backend("auto") == "onnxruntime"
    assert resolve_backend("torch") == "torch"


def test_unknown_backend_is_refused(hip_screen_engine: Path) -> None:
    with pytest.raises(EngineRuntimeError, match=r"engines\.backend: expected one of .*got 'cuda'"):
        open_runtime(hip_screen_engine, RuntimeOptions(backend="cuda"))


@pytest.fixture
def runtime(hip_screen_engine: Path) -> OnnxRuntime:
    opened = open_runtime(hip_screen_engine, RuntimeOptions(backend="onnxruntime"))
    assert isinstance(opened, OnnxRuntime)
    return opened


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        ({"img": np.zeros((1, 1, 64, 64))}, r"inputs: expected \['image'\], got \['img'\]"),
        ({}, r"inputs: expected \['image'\], got \[\]"),
        (
            {"image": np.zeros((1, 1, 32, 64))},
            r"image: expected shape \[-1, 1, 64, 64\].*got \[1, 1, 32, 64\]",
        ),
        ({"image": np.zeros((1, 64, 64))}, r"image: expected shape .*got \[1, 64, 64\]"),
        ({"image": np.zeros((0, 1, 64, 64))}, "expected at least one item, got an empty batch"),
        ({"image": np.array([["a"]])}, "image: expected numbers, got dtype <U1"),
    ],
)
def test_bad_batches_are_refused(
    runtime: OnnxRuntime, batch: dict[str, np.ndarray], match: str
) -> None:
    with runtime, pytest.raises(InferenceInputError, match=match):
        runtime.infer(batch)


def test_batch_size_mismatch_between_inputs_is_refused() -> None:
    # hip_screen has one input; the check is the protocol's, shown on a two-input spec.
    from engines.manifest import TensorSpec
    from engines.runtimes.base import check_batch

    specs = (TensorSpec("ap", (-1, 1, 8, 8)), TensorSpec("lateral", (-1, 1, 8, 8)))
    with pytest.raises(InferenceInputError, match="lateral: batch size 3 differs from 2"):
        check_batch(specs, {"ap": np.zeros((2, 1, 8, 8)), "lateral": np.zeros((3, 1, 8, 8))})


def test_infer_after_close_is_refused(runtime: OnnxRuntime) -> None:
    runtime.close()
    runtime.close()  # closing twice is harmless
    with pytest.raises(EngineRuntimeError, match="hip_screen on onnxruntime: runtime is closed"):
        runtime.infer({"image": _images(1)})


def test_tampered_onnx_is_refused(hip_screen_engine: Path, tmp_path: Path) -> None:
    # Only what onnxruntime reads: the manifest and the fp32 ONNX (the shared engine stays intact).
    folder = tmp_path / "hip_screen"
    folder.mkdir()
    shutil.copyfile(hip_screen_engine / MANIFEST_NAME, folder / MANIFEST_NAME)
    shutil.copyfile(hip_screen_engine / "model.onnx", folder / "model.onnx")
    with (folder / "model.onnx").open("r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ManifestError, match=r"artefact 'onnx_fp32' .* has SHA-256 [0-9a-f]{64}"):
        open_runtime(folder, RuntimeOptions(backend="onnxruntime"))


def test_unknown_onnx_precision_is_refused(hip_screen_engine: Path) -> None:
    manifest = read_manifest(hip_screen_engine)
    with pytest.raises(
        EngineRuntimeError, match=r"^precision: expected one of \('fp32', 'fp16'\), got 'int8'$"
    ):
        OnnxRuntime(manifest, hip_screen_engine, precision="int8")


def test_unavailable_onnx_providers_are_refused(hip_screen_engine: Path) -> None:
    manifest = read_manifest(hip_screen_engine)
    with pytest.raises(
        EngineRuntimeError,
        match=r"^onnxruntime: none of the providers \['NoSuchExecutionProvider'\] is available "
        r"\(available: \[.*'CPUExecutionProvider'.*\]\)$",
    ):
        OnnxRuntime(manifest, hip_screen_engine, providers=("NoSuchExecutionProvider",))


@pytest.mark.parametrize("backend", [TorchRuntime, OnnxRuntime])
def test_a_runtime_closed_while_a_batch_is_checked(
    hip_screen_engine: Path, backend: type[Runtime]
) -> None:
    # A stop closes the engines while a job's batch may be on its way in: an
    # EngineRuntimeError (the job is retried), never an AttributeError on a released session.
    runtime = backend(read_manifest(hip_screen_engine), hip_screen_engine)
    with pytest.raises(
        EngineRuntimeError, match=rf"^hip_screen on {backend.backend}: runtime is closed$"
    ) as info:
        runtime.infer(ClosingBatch(runtime, _images(1)))
    assert info.traceback[-1].name == "_run"  # the backend's own guard, not infer's


def _copy_with_manifest(
    engine: Path, folder: Path, artefact: str, edit: Callable[[Manifest], Manifest]
) -> Manifest:
    """``engine``'s manifest (edited) and one artefact in ``folder``."""
    folder.mkdir()
    shutil.copyfile(engine / artefact, folder / artefact)
    manifest = edit(read_manifest(engine))
    write_manifest(manifest, folder)
    return read_manifest(folder)


def test_an_onnx_file_onnxruntime_cannot_load_is_an_engine_error(
    hip_screen_engine: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "hip_screen"

    def truncated(manifest: Manifest) -> Manifest:  # its hash matches: only the load fails
        data = (hip_screen_engine / "model.onnx").read_bytes()[:5000]
        (folder / "model.onnx").write_bytes(data)
        key = "onnx_fp32"
        artefact = dataclasses.replace(
            manifest.artefacts[key], sha256=sha256_of(folder / "model.onnx")
        )
        return dataclasses.replace(manifest, artefacts={**manifest.artefacts, key: artefact})

    manifest = _copy_with_manifest(hip_screen_engine, folder, "model.onnx", truncated)
    # Was onnxruntime's InvalidProtobuf: neither retried nor a one-line error at start.
    with pytest.raises(
        EngineRuntimeError, match=r"^hip_screen on onnxruntime: cannot load model\.onnx \(\w+"
    ):
        OnnxRuntime(manifest, folder)


def test_a_manifest_for_another_export_is_refused_when_opened(
    hip_screen_engine: Path, tmp_path: Path
) -> None:
    def other_size(manifest: Manifest) -> Manifest:
        [image] = manifest.inputs
        bigger = dataclasses.replace(image, shape=(-1, 1, 96, 96))
        resized = dataclasses.replace(manifest.preprocessing, size=96)
        return dataclasses.replace(manifest, inputs=(bigger,), preprocessing=resized)

    manifest = _copy_with_manifest(hip_screen_engine, tmp_path / "e", "model.onnx", other_size)
    # Was: opened, then every study failed with onnxruntime's InvalidArgument.
    with pytest.raises(
        EngineRuntimeError,
        match=r"^hip_screen on onnxruntime: input 'image' is \[-1, 1, 64, 64\] in the model, "
        r"the manifest says \[-1, 1, 96, 96\] \(-1 = any\)$",
    ):
        OnnxRuntime(manifest, tmp_path / "e")


def test_torch_returns_outputs_by_name_whatever_the_manifests_order(
    hip_screen_engine: Path, tmp_path: Path
) -> None:
    def reversed_outputs(manifest: Manifest) -> Manifest:
        return dataclasses.replace(manifest, outputs=tuple(reversed(manifest.outputs)))

    manifest = _copy_with_manifest(hip_screen_engine, tmp_path / "e", "model.pt", reversed_outputs)
    with TorchRuntime(manifest, tmp_path / "e") as runtime:
        outputs = runtime.infer({"image": _images(2)})
    # Was: the logits under "features" and the feature map under "logits".
    assert outputs["logits"].shape == (2, 8)
    assert outputs["features"].shape[:2] == (2, 2048)


def test_torch_refuses_a_manifest_of_other_classes_than_its_checkpoint(
    hip_screen_engine: Path, tmp_path: Path
) -> None:
    def seven_classes(manifest: Manifest) -> Manifest:
        logits, features = manifest.outputs
        fewer = dataclasses.replace(logits, shape=(-1, 7))
        return dataclasses.replace(
            manifest, classes=manifest.classes[:7], outputs=(fewer, features)
        )

    manifest = _copy_with_manifest(hip_screen_engine, tmp_path / "e", "model.pt", seven_classes)
    # Was: opened (only names were compared), then 7 class names beside 8 probabilities
    # failed every study in triage.
    with pytest.raises(
        EngineRuntimeError,
        match=r"^hip_screen on torch: output 'logits' is \[-1, 8\] in the model, the manifest "
        r"says \[-1, 7\] \(-1 = any\)$",
    ):
        TorchRuntime(manifest, tmp_path / "e")


def test_torch_refuses_a_manifest_size_its_network_cannot_take(
    fusion_cache: Path, tmp_path: Path
) -> None:
    def one_pixel(manifest: Manifest) -> Manifest:
        image, *others = manifest.inputs
        return dataclasses.replace(
            manifest,
            inputs=(dataclasses.replace(image, shape=(-1, 1, 1, 1)), *others),
            preprocessing=dataclasses.replace(manifest.preprocessing, size=1),
        )

    engine = fusion_cache / "osteoporosis"
    manifest = _copy_with_manifest(engine, tmp_path / "e", "model.pt", one_pixel)
    with pytest.raises(
        EngineRuntimeError,
        match=r"^osteoporosis on torch: a dry run at the manifest's size 1 failed \(RuntimeError: ",
    ):
        TorchRuntime(manifest, tmp_path / "e")


def test_a_model_input_the_manifest_does_not_list_is_refused(hip_screen_engine: Path) -> None:
    manifest = read_manifest(hip_screen_engine)
    shapes = {s.name: s.shape for s in manifest.outputs}
    # Was: opened (only the manifest's inputs were looked up in the model), then every batch
    # failed in the backend for want of the input the node never sends.
    with pytest.raises(
        EngineRuntimeError,
        match=r"^hip_screen on onnxruntime: the model takes input 'present', which the manifest "
        r"does not list \(it lists: image\)$",
    ):
        check_signature(
            manifest,
            "onnxruntime",
            {"image": ("N", 1, 64, 64), "present": ("N", 3)},
            shapes,
        )
    check_signature(  # an output the node does not read is no harm
        manifest, "onnxruntime", {"image": ("N", 1, 64, 64)}, {**shapes, "extra": ("N", 2)}
    )


def _edited_onnx(engine: Path, folder: Path, edit: Callable[[Any], None]) -> Manifest:
    """``engine``'s ONNX file edited (``edit`` on its onnx.ModelProto), under a manifest
    with its new SHA-256: what a site's own export would bring."""
    import onnx

    def rehashed(manifest: Manifest) -> Manifest:
        model = onnx.load(str(engine / "model.onnx"))
        edit(model)
        onnx.save(model, str(folder / "model.onnx"))
        artefact = dataclasses.replace(
            manifest.artefacts["onnx_fp32"], sha256=sha256_of(folder / "model.onnx")
        )
        return dataclasses.replace(
            manifest, artefacts={**manifest.artefacts, "onnx_fp32": artefact}
        )

    return _copy_with_manifest(engine, folder, "model.onnx", rehashed)


@pytest.mark.parametrize("fixed_size", [1, 2])
def test_an_export_with_a_fixed_batch_runs_batches_in_pieces(
    hip_screen_engine: Path, tmp_path: Path, fixed_size: int
) -> None:
    # Exported without dynamic axes: opened, then every pelvis (a batch of 2) failed with
    # onnxruntime's InvalidArgument, an "internal error" never retried. A batch of 3 in
    # pieces of 2: the last one padded.
    def fixed_batch(model: Any) -> None:
        for value in [*model.graph.input, *model.graph.output]:
            first = value.type.tensor_type.shape.dim[0]
            first.ClearField("dim_param")
            first.dim_value = fixed_size

    manifest = _edited_onnx(hip_screen_engine, tmp_path / "e", fixed_batch)
    batch = {"image": _images(3)}
    with OnnxRuntime(manifest, tmp_path / "e") as fixed:
        assert fixed.max_batch_size == fixed_size
        pieces = fixed.infer(batch)
    with OnnxRuntime(read_manifest(hip_screen_engine), hip_screen_engine) as dynamic:
        assert dynamic.max_batch_size == 0
        whole = dynamic.infer(batch)
    for name, value in whole.items():
        np.testing.assert_allclose(pieces[name], value, rtol=1e-5, atol=1e-5)


def test_an_export_taking_float16_inputs_is_refused_when_opened(
    hip_screen_engine: Path, tmp_path: Path
) -> None:
    # An fp16 conversion without keep_io_types: opened, then every study failed.
    import onnx
    from onnx import TensorProto, helper

    def float16_input(model: Any) -> None:
        [image] = model.graph.input
        inner = "image_as_float"
        for node in model.graph.node:
            node.input[:] = [inner if n == "image" else n for n in node.input]
        model.graph.node.insert(
            0, helper.make_node("Cast", ["image"], [inner], to=TensorProto.FLOAT)
        )
        image.type.tensor_type.elem_type = TensorProto.FLOAT16
        onnx.checker.check_model(model)

    manifest = _edited_onnx(hip_screen_engine, tmp_path / "e", float16_input)
    with pytest.raises(
        EngineRuntimeError,
        match=r"^hip_screen on onnxruntime: model\.onnx takes input 'image' as tensor\(float16\); "
        r"the node sends tensor\(float\)",
    ):
        OnnxRuntime(manifest, tmp_path / "e")


def test_torch_takes_inputs_by_name_whatever_the_manifests_order(
    fusion_cache: Path, tmp_path: Path
) -> None:
    # Passed in the manifest's order: one listing clinical and missing the other way round
    # had the model read the values as the mask and the mask as the values.
    engine = fusion_cache / "osteoporosis"

    def reordered(manifest: Manifest) -> Manifest:
        image, clinical, missing = manifest.inputs
        return dataclasses.replace(manifest, inputs=(image, missing, clinical))

    manifest = _copy_with_manifest(engine, tmp_path / "e", "model.pt", reordered)
    assert [s.name for s in manifest.inputs] == ["image", "missing", "clinical"]
    rng = np.random.default_rng(0)
    missing = np.array([[0, 0, 0, 0, 1, 1, 0], [0, 1, 0, 0, 0, 0, 0]], np.float32)
    batch = {
        "image": rng.normal(size=(2, 1, 80, 80)).astype(np.float32),
        "clinical": rng.normal(size=(2, 7)).astype(np.float32) * (1 - missing),
        "missing": missing,
    }
    with TorchRuntime(manifest, tmp_path / "e") as listed_otherwise:
        got = listed_otherwise.infer(batch)
    with TorchRuntime(read_manifest(engine), engine) as listed_so:
        want = listed_so.infer(batch)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value)


def test_needed_artefacts_are_what_each_backend_opens() -> None:
    from manifests import manifest_for

    from engines.manifest import Heatmap, TensorSpec

    screen = dataclasses.replace(
        manifest_for("hip_screen"), heatmap=Heatmap("gradcam-gem", head_artefact="head")
    )
    assert needed_artefacts(screen, "onnxruntime") == ("onnx_fp32", "head")
    assert needed_artefacts(screen, "onnxruntime", "fp16") == ("onnx_fp16", "head")
    assert needed_artefacts(screen, "torch") == ("checkpoint", "head")
    assert needed_artefacts(screen, "tensorrt") == ("onnx_fp16", "head")
    assert needed_artefacts(screen, "triton") == ("head",)  # the server holds the model
    text = dataclasses.replace(
        manifest_for("hip_multimodal"), inputs=(TensorSpec("text", (-1, 384)),)
    )
    assert needed_artefacts(text, "triton") == ("text_encoder", "text_tokenizer")
