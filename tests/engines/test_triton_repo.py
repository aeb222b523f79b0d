"""The Triton model-repository writer: layout, config.pbtxt contents, and refusals."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from engines.catalog import engine_spec
from engines.export import sha256_of
from engines.manifest import MANIFEST_NAME, ManifestError, read_manifest
from engines.models import create
from engines.package import package_engine
from engines.triton_repo import PYTHON_MODEL, TritonRepoError, write_triton_repo


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("engine") / "hip_screen"
    package_engine(engine_spec("hip_screen"), create("hip_screen"), 64, folder, "2.0.1-test")
    return folder


def _parse(config: Path) -> Any:
    """The config as Triton reads it: protobuf text format into ModelConfig."""
    text_format = pytest.importorskip("google.protobuf.text_format")
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    return text_format.Parse(config.read_text(), model_config_pb2.ModelConfig())


def _check_common(parsed: Any, engine: Path, max_batch: int = 8) -> None:
    manifest = read_manifest(engine)
    assert parsed.name == "hip_screen"
    assert parsed.max_batch_size == max_batch
    assert list(parsed.version_policy.specific.versions) == [1]
    assert [(t.name, list(t.dims)) for t in parsed.input] == [("image", [1, 64, 64])]
    assert [(t.name, list(t.dims)) for t in parsed.output] == [
        ("logits", [8]),
        ("features", [2048, 2, 2]),
    ]
    assert {t.data_type for t in (*parsed.input, *parsed.output)} == {1 + 10}  # TYPE_FP32
    assert parsed.parameters["engine_version"].string_value == "2.0.1-test"
    assert parsed.parameters["onnx_sha256"].string_value == manifest.artefacts["onnx_fp32"].sha256


def test_python_backend_model(engine: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    assert write_triton_repo([engine], repo, platform="python") == [repo / "hip_screen"]
    model = repo / "hip_screen"
    assert sorted(p.relative_to(model).as_posix() for p in model.rglob("*")) == [
        "1",
        "1/model.onnx",
        "1/model.py",
        "config.pbtxt",
    ]
    assert sha256_of(model / "1" / "model.onnx") == sha256_of(engine / "model.onnx")
    assert (model / "1" / "model.py").read_text() == PYTHON_MODEL
    compile(PYTHON_MODEL, "model.py", "exec")  # at least valid Python for the stub
    text = (model / "config.pbtxt").read_text()
    assert 'backend: "python"' in text and "platform:" not in text
    parsed = _parse(model / "config.pbtxt")
    _check_common(parsed, engine)
    assert list(parsed.dynamic_batching.preferred_batch_size) == [4, 8]
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [(g.count, g.kind) for g in parsed.instance_group] == [(1, 2)]  # KIND_CPU


def test_onnxruntime_model(engine: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_triton_repo(
        [engine],
        repo,
        platform="onnxruntime",
        max_batch_size=16,
        instances=2,
        preferred_batch_sizes=(2, 16),
        max_queue_delay_microseconds=500,
    )
    model = repo / "hip_screen"
    assert sorted(p.name for p in (model / "1").iterdir()) == ["model.onnx"]
    parsed = _parse(model / "config.pbtxt")
    _check_common(parsed, engine, max_batch=16)
    assert parsed.platform == "onnxruntime_onnx" and parsed.backend == ""
    assert parsed.default_model_filename == "model.onnx"
    assert list(parsed.dynamic_batching.preferred_batch_size) == [2, 16]
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.kind) for g in parsed.instance_group] == [(2, 1)]  # KIND_GPU
    # A CPU-only server: the instance kind can be chosen.
    write_triton_repo([engine], repo, platform="onnxruntime", instance_kind="KIND_CPU")
    assert "kind: KIND_CPU" in (model / "config.pbtxt").read_text()


def test_tensorrt_model_leaves_the_plan_to_the_serving_gpu(engine: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_triton_repo([engine], repo, platform="tensorrt", preferred_batch_sizes=(4,))
    model = repo / "hip_screen"
    # The ONNX waits beside the config (not in 1/, where Triton would try to load it).
    assert sorted(p.relative_to(model).as_posix() for p in model.rglob("*")) == [
        "1",
        "README.txt",
        "config.pbtxt",
        "model-fp16.onnx",
    ]
    assert sha256_of(model / "model-fp16.onnx") == sha256_of(engine / "model-fp16.onnx")
    parsed = _parse(model / "config.pbtxt")
    _check_common(parsed, engine)
    assert parsed.platform == "tensorrt_plan"
    assert parsed.default_model_filename == "model.plan"
    assert [(g.count, g.kind) for g in parsed.instance_group] == [(1, 1)]  # KIND_GPU
    readme = (model / "README.txt").read_text()
    assert "trtexec --onnx=model-fp16.onnx --saveEngine=1/model.plan --stronglyTyped" in readme
    assert "--fp16" not in readme.split("\n\n")[1]  # the command: gone in TensorRT 11
    assert "--minShapes=image:1x1x64x64" in readme
    assert "--optShapes=image:4x1x64x64" in readme
    assert "--maxShapes=image:8x1x64x64" in readme
    assert "serving machine" in readme and "TensorRT version" in readme


@pytest.mark.parametrize(("max_batch", "preferred"), [(4, [4]), (1, [1]), (16, [4, 8])])
def test_default_preferred_batch_sizes_follow_max_batch_size(
    engine: Path, tmp_path: Path, max_batch: int, preferred: list[int]
) -> None:
    # What `engines triton-repo OUT --max-batch-size N` asks for (no preferred sizes given).
    repo = tmp_path / "models"
    write_triton_repo([engine], repo, platform="tensorrt", max_batch_size=max_batch)
    parsed = _parse(repo / "hip_screen" / "config.pbtxt")
    _check_common(parsed, engine, max_batch=max_batch)
    assert list(parsed.dynamic_batching.preferred_batch_size) == preferred
    readme = (repo / "hip_screen" / "README.txt").read_text()
    assert f"--optShapes=image:{preferred[-1]}x1x64x64" in readme
    assert f"--maxShapes=image:{max_batch}x1x64x64" in readme


def test_rewriting_replaces_the_model_folder(engine: Path, tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_triton_repo([engine], repo, platform="tensorrt")
    write_triton_repo([engine], repo, platform="python")
    model = repo / "hip_screen"
    assert not (model / "README.txt").exists() and not (model / "model-fp16.onnx").exists()
    assert (model / "1" / "model.py").is_file()
    assert not list(model.rglob("*.tmp"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"platform": "tflite"},
            r"platform: expected one of \('onnxruntime', 'tensorrt', 'python'\), got 'tflite'",
        ),
        ({"max_batch_size": 0}, "max_batch_size: expected 1 or more, got 0"),
        ({"instances": 0}, "instances: expected 1 or more, got 0"),
        (
            {"preferred_batch_sizes": (4, 16)},
            r"preferred_batch_sizes: expected sizes in 1\.\.8 \(max_batch_size\), got \[4, 16\]",
        ),
        ({"preferred_batch_sizes": (0,)}, r"preferred_batch_sizes: .*got \[0\]"),
        ({"preferred_batch_sizes": ()}, r"preferred_batch_sizes: .*got \[\]"),
        (
            {"max_queue_delay_microseconds": -1},
            "max_queue_delay_microseconds: expected 0 or more, got -1",
        ),
        ({"instance_kind": "KIND_TPU"}, r"instance_kind: expected one of .*got 'KIND_TPU'"),
    ],
)
def test_bad_arguments_are_refused(
    engine: Path, tmp_path: Path, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(TritonRepoError, match=match):
        write_triton_repo([engine], tmp_path / "models", **kwargs)
    assert not (tmp_path / "models").exists()


def test_no_engines_or_duplicate_names_are_refused(engine: Path, tmp_path: Path) -> None:
    with pytest.raises(
        TritonRepoError, match="engine_folders: expected at least one engine folder, got none"
    ):
        write_triton_repo([], tmp_path / "models")
    with pytest.raises(
        TritonRepoError, match=r"engine names must be unique, got \['hip_screen'\] twice"
    ):
        write_triton_repo([engine, engine], tmp_path / "models")


def test_the_engine_cache_is_never_written_over(engine: Path, tmp_path: Path) -> None:
    # `engines triton-repo var/engines` replaced the engine's folder by its model folder:
    # checkpoint, ONNX and manifest deleted, then "No such file or directory".
    before = sorted(p.name for p in engine.iterdir())
    with pytest.raises(TritonRepoError, match=r"^out: .* over the engine folder .*hip_screen"):
        write_triton_repo([engine], engine.parent)
    with pytest.raises(TritonRepoError, match=r"over the engine folder"):
        write_triton_repo([engine], engine / "models")  # inside it
    assert sorted(p.name for p in engine.iterdir()) == before
    other_cache = tmp_path / "cache"  # another cache's engine of the same name
    shutil.copytree(engine, other_cache / "hip_screen")
    with pytest.raises(TritonRepoError, match=r"is an engine folder \(it holds manifest\.yaml\)"):
        write_triton_repo([engine], other_cache)
    assert (other_cache / "hip_screen" / MANIFEST_NAME).is_file()


def test_missing_manifest_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "not_an_engine"
    empty.mkdir()
    with pytest.raises(ManifestError, match=rf"{empty / MANIFEST_NAME}: cannot read manifest"):
        write_triton_repo([empty], tmp_path / "models")


def test_tampered_onnx_is_not_copied(engine: Path, tmp_path: Path) -> None:
    folder = tmp_path / "hip_screen"
    folder.mkdir()
    shutil.copyfile(engine / MANIFEST_NAME, folder / MANIFEST_NAME)
    shutil.copyfile(engine / "model.onnx", folder / "model.onnx")
    with (folder / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ManifestError, match=r"artefact 'onnx_fp32' .* has SHA-256"):
        write_triton_repo([folder], tmp_path / "models")
    assert not (tmp_path / "models" / "hip_screen").exists()


def test_non_float_tensor_is_refused_before_writing(engine: Path, tmp_path: Path) -> None:
    import yaml

    folder = tmp_path / "hip_screen"
    folder.mkdir()
    shutil.copyfile(engine / "model.onnx", folder / "model.onnx")
    raw = yaml.safe_load((engine / MANIFEST_NAME).read_text())
    raw["outputs"][0]["dtype"] = "int64"
    (folder / MANIFEST_NAME).write_text(yaml.safe_dump(raw))
    with pytest.raises(TritonRepoError, match="logits: expected dtype float32, got 'int64'"):
        write_triton_repo([folder], tmp_path / "models")
    assert not (tmp_path / "models").exists()


def test_fusion_engines_get_their_named_inputs(fusion_cache: Path, tmp_path: Path) -> None:
    """The multimodal engine's CT volume, text embedding and presence mask, and the
    osteoporosis engine's clinical values and mask, go to Triton like any tensor (the text
    encoder stays in the node, which sends the embedding)."""
    folders = [fusion_cache / "hip_multimodal", fusion_cache / "osteoporosis"]
    multimodal, osteoporosis = write_triton_repo(folders, tmp_path / "models")
    parsed = _parse(multimodal / "config.pbtxt")
    assert [(t.name, list(t.dims)) for t in parsed.input] == [
        ("radiograph", [1, 64, 64]),
        ("ct", [1, 16, 32, 32]),
        ("text", [384]),
        ("present", [3]),
    ]
    assert [t.name for t in parsed.output] == [
        "logits", "radiograph_logits", "features", "attention"
    ]  # fmt: skip
    parsed = _parse(osteoporosis / "config.pbtxt")
    assert [(t.name, list(t.dims)) for t in parsed.input] == [
        ("image", [1, 80, 80]),
        ("clinical", [7]),
        ("missing", [7]),
    ]
    assert [(t.name, list(t.dims)) for t in parsed.output] == [("logits", [2])]
