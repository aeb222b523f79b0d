"""`dicom-node engines ...` in-process, on a tiny phantom profile."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.cli import main
from engines import demo_profiles
from engines.demo_profiles import Profile
from engines.manifest import read_manifest
from engines.training.loop import TrainOptions


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setitem(
        demo_profiles.DEMO_PROFILES,
        "hip_screen",
        Profile(64, 2, 1, 1, TrainOptions(epochs=1, batch_size=8)),
    )
    path = tmp_path / "c.yaml"
    path.write_text(f"engines:\n  cache_dir: {tmp_path / 'cache'}\n  backend: onnxruntime\n")
    return path


def test_build_list_export_and_train(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["engines", "list", "--config", str(config)]) == 0
    listed = capsys.readouterr().out
    assert "hip_screen      -" in listed and "hip_multimodal  -" in listed

    assert (
        main(["engines", "build", "--demo", "--engine", "hip_screen", "--config", str(config)]) == 0
    )
    captured = capsys.readouterr()
    assert "not for clinical use" in captured.out
    assert "hip_screen 0.1.0-demo: built in" in captured.out and "accuracy" in captured.out
    assert "epoch 1/1" in captured.err  # the progress bar

    assert main(["engines", "list", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "hip_screen      0.1.0-demo   onnxruntime     64  accuracy" in out
    assert "hipnet          -" in out and "1 engines built" in out

    assert (
        main(["engines", "export", "hip_screen", "--version", "2.0.0", "--config", str(config)])
        == 0
    )
    out = capsys.readouterr().out
    assert "onnx_fp16" in out and "sha256" in out
    manifest = read_manifest(tmp_path / "cache" / "hip_screen")
    assert manifest.version == "2.0.0" and manifest.evaluation["items"] == 8

    # A site's own checkpoint: new version required, old figures dropped, clinical note changed.
    checkpoint = str(tmp_path / "cache" / "hip_screen" / "model.pt")
    export = [
        "engines",
        "export",
        "hip_screen",
        "--checkpoint",
        checkpoint,
        "--config",
        str(config),
    ]
    assert main(export) == 2
    assert "give --version for the new weights" in capsys.readouterr().err
    assert main([*export, "--version", "3.0.0-site"]) == 0
    capsys.readouterr()
    manifest = read_manifest(tmp_path / "cache" / "hip_screen")
    assert manifest.evaluation == {} and "validate locally" in manifest.clinical_use
    # ...which a demo build does not silently replace.
    build = ["engines", "build", "--demo", "--engine", "hip_screen", "--config", str(config)]
    assert main(build) == 2
    assert "not a demo engine; refusing to replace it" in capsys.readouterr().err

    assert (
        main(
            [
                "engines",
                "train",
                "hip_screen",
                "--phantoms",
                "2",
                "--epochs",
                "1",
                "--size",
                "64",
                "--batch-size",
                "8",
                "--attention-weight",
                "0.5",
                "--batch-norm-items",
                "16",
                "--out",
                str(tmp_path / "mine"),
                "--config",
                str(config),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "epoch 1: loss" in out and "recall normal" in out
    mine = read_manifest(tmp_path / "mine")
    assert f"checkpoints in {tmp_path / 'mine' / 'checkpoints'}" in out
    assert (tmp_path / "mine" / "checkpoints" / "epoch-001.pt").is_file()  # kept for the user
    assert mine.training["profile"]["options"]["attention_weight"] == 0.5
    assert mine.training["profile"]["options"]["batch_norm_items"] == 16


def test_triton_repo_needs_built_engines(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["engines", "triton-repo", str(tmp_path / "repo"), "--config", str(config)]) == 2
    assert "no built engine in" in capsys.readouterr().err


def test_export_of_the_fusion_engines_keeps_their_inputs_and_artefacts(
    fusion_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    cache = tmp_path / "cache"
    for name in ("hip_multimodal", "osteoporosis"):
        shutil.copytree(fusion_cache / name, cache / name)
    before = read_manifest(cache / "osteoporosis")
    config = tmp_path / "c.yaml"
    config.write_text(f"engines:\n  cache_dir: {cache}\n  backend: onnxruntime\n")
    for name in ("hip_multimodal", "osteoporosis"):
        args = ["engines", "export", name, "--version", "0.0.2-test", "--config", str(config)]
        assert main(args) == 0
    out = capsys.readouterr().out
    assert "text_encoder" in out and "reduction" in out
    multimodal = read_manifest(cache / "hip_multimodal")
    assert multimodal.version == "0.0.2-test"
    assert multimodal.preprocessing.volume == (16, 32, 32)
    assert {"text_encoder", "text_tokenizer", "head"} <= set(multimodal.artefacts)
    osteoporosis = read_manifest(cache / "osteoporosis")
    assert osteoporosis.preprocessing.clinical == before.preprocessing.clinical
    # The same weights: the reduction (network buffers) is reproduced byte for byte.
    assert osteoporosis.artefacts["reduction"] == before.artefacts["reduction"]
    assert osteoporosis.evaluation == before.evaluation


def test_train_defaults_are_those_of_train_options() -> None:
    # The CLI repeats TrainOptions' defaults as literals (importing torch at start-up to read
    # them would slow every subcommand); this keeps the two from drifting apart.
    from dataclasses import fields

    from dicom_node.cli import _parser

    args = _parser().parse_args(["engines", "train", "hip_screen"])
    flags = {f.name for f in fields(TrainOptions)} - {"max_seconds", "weight_decay"}
    assert {name: getattr(args, name) for name in flags} == {
        name: getattr(TrainOptions(), name) for name in flags
    }
