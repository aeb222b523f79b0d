from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from engines.catalog import engine_spec
from engines.manifest import (
    NOT_FOR_CLINICAL_USE,
    ManifestError,
    read_manifest,
    verify_artefacts,
    write_manifest,
)
from engines.models import create
from engines.package import package_engine


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("engine") / "hip_screen"
    package_engine(
        engine_spec("hip_screen"),
        create("hip_screen"),
        64,
        folder,
        "9.9.9-test",
        evaluation={"accuracy": 0.5},
    )
    return folder


def test_manifest_records_everything_a_runtime_needs(packaged: Path) -> None:
    m = read_manifest(packaged)
    assert (m.name, m.version, m.model) == ("hip_screen", "9.9.9-test", "hip_screen")
    assert m.class_names[0] == "normal" and len(m.classes) == 8
    assert m.classes[3].code == "5913000"
    assert [t.name for t in m.inputs] == ["image"]
    assert m.inputs[0].shape == (-1, 1, 64, 64)
    assert [(t.name, t.shape) for t in m.outputs] == [
        ("logits", (-1, 8)),
        ("features", (-1, 2048, 2, 2)),
    ]
    assert m.heatmap.kind == "gradcam-gem" and m.heatmap.gem_p == pytest.approx(3.0)
    assert set(m.artefacts) == {"checkpoint", "onnx_fp32", "onnx_fp16", "head"}
    assert m.preprocessing.size == 64 and m.output_is_logits
    assert "not for clinical use" in m.clinical_use
    head = np.load(m.artefact_path(packaged, "head"))
    assert head["weight"].shape == (8, 2048)
    verify_artefacts(m, packaged)
    # The written file is plain YAML (no Python tags) and round-trips.
    raw = yaml.safe_load((packaged / "manifest.yaml").read_text())
    assert raw["artefacts"]["onnx_fp32"]["path"] == "model.onnx"
    write_manifest(m, packaged)
    assert read_manifest(packaged) == m


def test_tampered_or_missing_artefact_is_refused(packaged: Path, tmp_path: Path) -> None:
    m = read_manifest(packaged)
    copy = tmp_path / "copy"
    copy.mkdir()
    data = bytearray((packaged / "head.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "head.npz").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"artefact 'head' at .* has SHA-256 .* manifest says"):
        verify_artefacts(m, copy, ("head",))
    with pytest.raises(ManifestError, match="artefact 'onnx_fp32' missing at"):
        verify_artefacts(m, copy, ("onnx_fp32",))
    with pytest.raises(ManifestError, match="manifest lists no artefact 'plan'"):
        m.artefact_path(copy, "plan")


def test_bad_manifest_files(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.yaml").write_text("a: [")
    with pytest.raises(ManifestError, match="not valid YAML"):
        read_manifest(tmp_path)
    # Saved in Latin-1 (a title with an accent): was a UnicodeDecodeError traceback.
    (tmp_path / "manifest.yaml").write_bytes("title: Hanche gauche opérée\n".encode("latin-1"))
    with pytest.raises(
        ManifestError,
        match=r"manifest\.yaml: not UTF-8 text \(byte 0xE9 at offset 23\); save it as UTF-8$",
    ):
        read_manifest(tmp_path)
    (tmp_path / "manifest.yaml").write_text("- 1\n")
    with pytest.raises(ManifestError, match="expected a mapping, got list"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.yaml").write_text("schema: 7\n")
    with pytest.raises(
        ManifestError, match=r"schema: expected 1 \(the manifest format this node reads\), got 7$"
    ):
        read_manifest(tmp_path)
    # Was "schema: expected 1, got None", naming no missing key.
    (tmp_path / "manifest.yaml").write_text("name: x\n")
    with pytest.raises(ManifestError, match=r"schema: required \(the manifest format: 1\)$"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.yaml").write_text("schema: 1\nname: x\n")
    with pytest.raises(ManifestError, match="missing key 'version'"):
        read_manifest(tmp_path)
    # A class entry with a key Finding does not have: the TypeError, named with the file.
    (tmp_path / "manifest.yaml").write_text(
        "schema: 1\nname: x\nversion: '1'\nmodel: m\ntitle: t\n"
        "classes: [{name: normal, colour: red}]\n"
    )
    with pytest.raises(
        ManifestError,
        match=r"manifest\.yaml: classes\[0\] \(\w+\)\.colour: unknown key \(known: name, "
        r"display, .*\)$",
    ):
        read_manifest(tmp_path)


def _edited(packaged: Path, folder: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of the packaged manifest (without its artefacts) with ``edit`` applied."""
    raw = yaml.safe_load((packaged / "manifest.yaml").read_text())
    edit(raw)
    folder.mkdir(exist_ok=True)
    (folder / "manifest.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder


@pytest.mark.parametrize("value", ["false", "true", 0, 1, None])
def test_output_is_logits_must_be_a_yaml_boolean(
    packaged: Path, tmp_path: Path, value: object
) -> None:
    folder = _edited(packaged, tmp_path, lambda raw: raw.update(output_is_logits=value))
    with pytest.raises(
        ManifestError, match=rf"output_is_logits: expected true or false, got {value!r}"
    ):
        read_manifest(folder)
    _edited(packaged, tmp_path, lambda raw: raw.update(output_is_logits=False))
    assert read_manifest(folder).output_is_logits is False


def test_clinical_use_defaults_to_not_for_clinical_use(packaged: Path, tmp_path: Path) -> None:
    folder = _edited(packaged, tmp_path, lambda raw: raw.pop("clinical_use"))
    clinical_use = read_manifest(folder).clinical_use
    assert clinical_use == NOT_FOR_CLINICAL_USE  # the dataclass's default, not ""
    assert clinical_use.startswith("not for clinical use")


@pytest.mark.parametrize("value", ["", "   ", None, 3])
def test_an_empty_clinical_use_is_refused(packaged: Path, tmp_path: Path, value: object) -> None:
    folder = _edited(packaged, tmp_path, lambda raw: raw.update(clinical_use=value))
    with pytest.raises(
        ManifestError, match=rf"clinical_use: expected a non-empty statement, got {value!r}"
    ):
        read_manifest(folder)


@pytest.mark.parametrize(
    ("key", "value", "supported"),
    [("canonical_side", "L", "'R'"), ("canonical_side", "r", "'R'"), ("region", "knee", "'hip'")],
)
def test_preprocessing_serving_does_not_implement_is_refused(
    packaged: Path, tmp_path: Path, key: str, value: str, supported: str
) -> None:
    folder = _edited(packaged, tmp_path, lambda raw: raw["preprocessing"].update({key: value}))
    with pytest.raises(
        ManifestError,
        match=rf"preprocessing\.{key}: expected {supported} \(what serving implements\), "
        rf"got '{value}'$",
    ):
        read_manifest(folder)


@pytest.mark.parametrize(
    ("unseen", "shown"), [(["sex_other"], r"\['sex_other'\]"), ("age", "'age'")]
)
def test_clinical_unseen_must_name_clinical_columns(
    packaged: Path, tmp_path: Path, unseen: object, shown: str
) -> None:
    def edit(raw: dict[str, Any]) -> None:
        raw["preprocessing"].update(clinical=["age"], clinical_unseen=unseen)

    with pytest.raises(
        ManifestError,
        match=r"preprocessing\.clinical_unseen: expected a list of columns of "
        rf"preprocessing\.clinical \(age\), got {shown}$",
    ):
        read_manifest(_edited(packaged, tmp_path, edit))
    fine = _edited(
        packaged, tmp_path / "fine",
        lambda raw: raw["preprocessing"].update(clinical=["age"], clinical_unseen=["age"]),
    )  # fmt: skip
    assert read_manifest(fine).preprocessing.clinical_unseen == ("age",)
    assert read_manifest(packaged).preprocessing.clinical_unseen is None  # no clinical input


@pytest.mark.parametrize(
    "limits", [{"weight": [20, 120]}, {"age": [90, 20]}, {"age": [20]}, {"age": ["a", 9]}, [1]]
)
def test_clinical_limits_must_be_ranges_of_clinical_columns(
    packaged: Path, tmp_path: Path, limits: object
) -> None:
    def edit(raw: dict[str, Any]) -> None:
        raw["preprocessing"].update(clinical=["age"], clinical_limits=limits)

    with pytest.raises(ManifestError, match=r"preprocessing\.clinical_limits"):
        read_manifest(_edited(packaged, tmp_path, edit))
    fine = _edited(
        packaged, tmp_path / "fine",
        lambda raw: raw["preprocessing"].update(clinical=["age"], clinical_limits={"age": [20, 110.5]}),
    )  # fmt: skip
    assert read_manifest(fine).preprocessing.clinical_limits == {"age": (20.0, 110.5)}


def _drop_last_class(raw: dict[str, Any]) -> None:
    raw["classes"].pop()


def _repeat_first_class(raw: dict[str, Any]) -> None:
    raw["classes"][1]["name"] = raw["classes"][0]["name"]


def _threshold(value: object) -> Callable[[dict[str, Any]], None]:
    return lambda raw: raw["classes"][0].update(threshold=value)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_drop_last_class, r"classes: output '\w+' gives \d+ values per case, the manifest "
                           r"lists \d+ classes$"),
        (_repeat_first_class, r"classes: '\w+' is listed twice$"),
        (lambda raw: raw.update(classes=[]), r"classes: expected at least one, got none$"),
        (_threshold("high"), r"classes\[\w+\]\.threshold: expected a probability between 0 and 1, got 'high'$"),
        (_threshold(1.5), r"\.threshold: expected a probability between 0 and 1, got 1\.5$"),
        (_threshold(True), r"\.threshold: expected a probability between 0 and 1, got True$"),
        (lambda raw: raw["classes"][0].update(high_risk="false"),
         r"classes\[\w+\]\.high_risk: expected true or false, got 'false'$"),
        (lambda raw: raw.update(probability_output="nope"),
         r"probability_output: expected one of the outputs \(.+\), got 'nope'$"),
        (lambda raw: raw["outputs"][0].update(shape=[-1, "x"]),
         r"outputs\[0\]\.shape: expected a list of whole numbers, .* got \[-1, 'x'\]$"),
        (lambda raw: raw.update(artefacts=["model.onnx"]),
         r"artefacts: expected a mapping, got \['model\.onnx'\]$"),
        # Errors that did not say where ("malformed entry (Finding.__init__() missing ...").
        (lambda raw: raw["classes"][1].pop("threshold"), r"classes\[1\] \(\w+\)\.threshold: required$"),
        (lambda raw: raw["inputs"][0].pop("dtype"), r"inputs\[0\]\.dtype: required$"),
        (lambda raw: raw.update(model_kwargs=["a"]), r"model_kwargs: expected a mapping, got \['a'\]$"),
        # Each below loaded, then crashed a listing or failed every study, or was used wrongly.
        (lambda raw: raw["outputs"][0].update(shape=[]),  # was an IndexError
         r"outputs\[0\]\.shape: expected a list of whole numbers, .* got \[\]$"),
        (_threshold(0.0), r"\.threshold: expected a probability between 0 and 1, got 0\.0$"),
        (lambda raw: raw.update(clinical_usage="CE-marked"),  # a typo: the default was used
         r"manifest\.yaml: clinical_usage: unknown key \(known: .*clinical_use"),
        (lambda raw: raw["preprocessing"].update(size=-96),
         r"preprocessing\.size: expected a whole number of pixels from 1 to 4096, got -96$"),
        (lambda raw: raw["preprocessing"].update(std=0),
         r"preprocessing\.std: expected a number > 0, got 0$"),
        (lambda raw: raw["preprocessing"].update(mean=float("nan")),
         r"preprocessing\.mean: expected a finite number, got nan$"),
        (lambda raw: raw["preprocessing"].update(volume=[-1, 0, 5]),
         r"preprocessing\.volume: expected three whole numbers > 0 \(D, H, W\), got \[-1, 0, 5\]$"),
        (lambda raw: raw["preprocessing"].update(size=raw["preprocessing"]["size"] * 2),
         r"preprocessing\.size: \d+, but input '\w+' is \[-1, 1, \d+, \d+\]"),
        # A fixed batch: every pelvis (a batch of 2) was refused before the runtime could
        # cut it to the model's size.
        (lambda raw: raw["inputs"][0].update(shape=[1, *raw["inputs"][0]["shape"][1:]]),
         r"inputs\[0\]\.shape: expected a list of whole numbers, the first -1 \(the batch: any "
         r"size\), got \[1, 1, \d+, \d+\]$"),
        # No input for the AP hip region: the node fed the first input listed.
        (lambda raw: raw["inputs"][0].update(name="picture"),
         r"inputs: expected exactly one image input named 'image' or 'ap' or 'radiograph' of "
         r"shape \[batch, channels, height, width\] \(the AP hip region goes there\), got "
         r"\[\['picture', \[-1, 1, \d+, \d+\]\]\]$"),
        (lambda raw: raw["artefacts"]["onnx_fp32"].update(path="../../other/model.onnx"),
         r"artefacts\.onnx_fp32\.path: expected a path inside the engine's folder, got '\.\./"),
        (lambda raw: raw["artefacts"]["onnx_fp32"].update(path="/etc/passwd"),
         r"artefacts\.onnx_fp32\.path: expected a path inside the engine's folder"),
        (lambda raw: raw["artefacts"]["onnx_fp32"].update(sha256="abc123"),
         r"artefacts\.onnx_fp32\.sha256: expected 64 lower-case hexadecimal digits, got 'abc123'$"),
        (lambda raw: raw["heatmap"].update(gem_p=-3),
         r"heatmap\.gem_p: expected a number > 0, got -3$"),
        (lambda raw: raw.update(version="1.0 beta final"),
         r"version: expected up to 64 characters without spaces or backslashes .* got '1\.0 beta"),
        (lambda raw: raw["classes"][1].update(code="59-13000 X"),
         r"classes\[\w+\]\.code: expected a SNOMED CT or DICOM code .* got '59-13000 X'$"),
        (lambda raw: raw["classes"][1].update(code=5913000),
         r"classes\[\w+\]\.code: expected .* quoted string of digits, or null, got 5913000$"),
        # A backslash went into the SR's Series Description and failed every positive study.
        (lambda raw: raw["classes"][1].update(display="Schenkelhals\\Fraktur"),
         r"classes\[\w+\]\.display: expected 1-64 characters without backslashes or control "
         r"characters \(it goes into the SR\), got 'Schenkelhals\\\\Fraktur'$"),
        (lambda raw: raw["classes"][1].update(display=" "),
         r"classes\[\w+\]\.display: expected 1-64 characters .* got ' '$"),
        (lambda raw: raw["classes"][1].update(source="made-up"),
         r"classes\[\w+\]\.source: expected one of dicom, .* got 'made-up'$"),
    ],
)  # fmt: skip
def test_a_manifest_that_contradicts_itself_is_refused_when_opened(
    packaged: Path, tmp_path: Path, edit: Callable[[dict[str, Any]], None], match: str
) -> None:
    # Was accepted, and every study then failed as an internal error (IndexError, zip,
    # TypeError, KeyError), or a threshold of "false" made every hip URGENT.
    folder = _edited(packaged, tmp_path, edit)
    with pytest.raises(ManifestError, match=match):
        read_manifest(folder)
