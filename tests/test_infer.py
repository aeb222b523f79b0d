"""EngineSet over the packaged (untrained) test engines on ONNX Runtime, fed phantom hips."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml

from dicom_node import infer
from dicom_node.config import EnginesConfig
from dicom_node.infer import EngineOutputError, EngineSet, EngineUnavailableError, HipBatchItem
from dicom_node.models import HipTask, Prediction
from dicom_node.preprocess import PreparedImage, hip_input, load_image, normalise
from dicom_node.route.plan import source_image
from engines.phantoms.studies import write_study
from engines.runtimes import EngineRuntimeError, Runtime, RuntimeOptions, open_runtime

THA = "total_hip_arthroplasty"


def config(cache: Path) -> EnginesConfig:
    return EnginesConfig(cache_dir=cache, backend="onnxruntime", threads=1)


@pytest.fixture(scope="module")
def engines(engine_cache: Path) -> Iterator[EngineSet]:
    opened = EngineSet(config(engine_cache), ["hip_screen", "hipnet", "hip_screen"])
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[PreparedImage, PreparedImage]:
    """(AP pelvis, left lateral) of a phantom with a loosening left THA, 64 px per hip."""
    study = write_study(
        tmp_path_factory.mktemp("study"), 7, "normal", THA, failure={"L": "aseptic_loosening"},
        size=64,
    )  # fmt: skip
    pelvis, lateral = (load_image(source_image(pydicom.dcmread(p), p, "PACS")) for p in study.files)
    return pelvis, lateral


def items_for(
    engines: EngineSet,
    engine: str,
    images: tuple[PreparedImage, PreparedImage],
    with_lateral: bool = True,
) -> list[HipBatchItem]:
    """One item per hip of the pelvis; for a dual-view engine the left hip has its lateral."""
    pelvis, lateral = images
    pre = engines.manifest(engine).preprocessing
    items = []
    for side in ("R", "L"):
        view = lateral if side == "L" and with_lateral and engine == "hipnet" else None
        task = HipTask(engine, side, pelvis.source, view.source if view else None, "test")
        items.append(
            HipBatchItem(
                task=task,
                ap=hip_input(pelvis, side, pre),
                lateral=hip_input(view, side, pre) if view else None,
            )
        )
    return items


def check_prediction(prediction: Prediction, engines: EngineSet, name: str) -> None:
    manifest = engines.manifest(name)
    assert prediction.version == manifest.version == "0.0.1-test"
    assert prediction.classes == manifest.class_names
    assert len(prediction.probabilities) == len(prediction.classes)
    assert all(0.0 <= p <= 1.0 for p in prediction.probabilities)
    assert sum(prediction.probabilities) == pytest.approx(1.0, abs=1e-5)
    assert set(prediction.heatmaps) == set(prediction.classes)
    for heatmap in prediction.heatmaps.values():
        assert heatmap.ndim == 2 and heatmap.dtype == np.float32
        # Stretched from lowest to highest: a sigmoid map's floor (Hip-Net) is transparent.
        low, high = float(heatmap.min()), float(heatmap.max())
        assert (low, high) in ((0.0, 0.0), (0.0, pytest.approx(1.0)), (1.0, 1.0))


def test_both_engines_open_once(engines: EngineSet) -> None:
    assert engines.names == ("hip_screen", "hipnet")
    assert engines.backend("hip_screen") == engines.backend("hipnet") == "onnxruntime"
    assert engines.manifest("hip_screen").name == "hip_screen"
    assert engines.manifest("hipnet").name == "hipnet"


def test_hip_screen_predicts_softmax_probabilities_and_gradcam_maps(
    engines: EngineSet, images: tuple[PreparedImage, PreparedImage], engine_cache: Path
) -> None:
    items = items_for(engines, "hip_screen", images)
    predictions = engines.predict("hip_screen", items)
    assert [p.task for p in predictions] == [i.task for i in items]
    for prediction in predictions:
        check_prediction(prediction, engines, "hip_screen")
        assert prediction.pji_risk is None
    assert predictions[0].probabilities != predictions[1].probabilities  # two different hips
    # The probabilities are the softmax of the engine's logits.
    pre = engines.manifest("hip_screen").preprocessing
    with open_runtime(engine_cache / "hip_screen", RuntimeOptions("onnxruntime", threads=1)) as rt:
        logits = rt.infer(
            {"image": np.stack([normalise(i.ap.pixels, pre) for i in items])[:, None]}
        )["logits"]
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    for n, prediction in enumerate(predictions):
        np.testing.assert_allclose(prediction.probabilities, expected[n], rtol=1e-5, atol=1e-6)


def test_hipnet_predicts_ensemble_probabilities_maps_and_pji_risk(
    engines: EngineSet, images: tuple[PreparedImage, PreparedImage]
) -> None:
    items = items_for(engines, "hipnet", images)
    assert items[0].lateral is None and items[1].lateral is not None
    predictions = engines.predict("hipnet", items)
    assert [p.task for p in predictions] == [i.task for i in items]
    for prediction in predictions:
        check_prediction(prediction, engines, "hipnet")
        # A 0-100 score: the PJI probability in percent.
        pji = prediction.probability("periprosthetic_joint_infection")
        assert prediction.pji_risk == pytest.approx(100.0 * pji, rel=1e-5)


def test_hipnet_without_a_lateral_runs_with_lateral_present_zero(
    engines: EngineSet, images: tuple[PreparedImage, PreparedImage], engine_cache: Path
) -> None:
    items = items_for(engines, "hipnet", images, with_lateral=False)
    assert all(i.lateral is None for i in items)
    predictions = engines.predict("hipnet", items)
    for prediction in predictions:
        check_prediction(prediction, engines, "hipnet")
    # The same batch, built by hand with a zero lateral and lateral_present = 0.
    pre = engines.manifest("hipnet").preprocessing
    ap = np.stack([normalise(i.ap.pixels, pre) for i in items])[:, None]
    with open_runtime(engine_cache / "hipnet", RuntimeOptions("onnxruntime", threads=1)) as rt:
        absent = rt.infer({"ap": ap, "lateral": np.zeros_like(ap), "lateral_present": np.zeros(2)})
        present = rt.infer({"ap": ap, "lateral": np.zeros_like(ap), "lateral_present": np.ones(2)})
    for n, prediction in enumerate(predictions):
        np.testing.assert_allclose(
            prediction.probabilities, absent["probabilities"][n], rtol=1e-5, atol=1e-6
        )
        assert prediction.pji_risk == pytest.approx(float(absent["pji_risk"][n]), abs=1e-6)
    assert not np.allclose(absent["probabilities"], present["probabilities"], atol=1e-7)


def test_a_prediction_does_not_depend_on_its_batch(
    engines: EngineSet, images: tuple[PreparedImage, PreparedImage]
) -> None:
    for name in ("hip_screen", "hipnet"):
        items = items_for(engines, name, images)
        together = engines.predict(name, items)
        alone = [engines.predict(name, [item])[0] for item in items]
        for a, b in zip(together, alone, strict=True):
            np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=1e-4, atol=1e-6)
            for cls in a.classes:
                np.testing.assert_allclose(a.heatmaps[cls], b.heatmaps[cls], atol=1e-4)


def test_an_empty_batch_gives_no_predictions(engines: EngineSet) -> None:
    assert engines.predict("hip_screen", []) == []
    assert engines.predict("hipnet", []) == []


def test_a_missing_engine_folder_says_how_to_build_one(tmp_path: Path) -> None:
    with pytest.raises(
        EngineUnavailableError,
        match=rf"^engine 'hip_screen': no manifest in {re.escape(str(tmp_path / 'hip_screen'))} "
        r"\(build the demo engines with `dicom-node engines build --demo`, ",
    ):
        EngineSet(config(tmp_path), ["hip_screen"])


def test_one_missing_engine_fails_the_whole_set(engine_cache: Path) -> None:
    with pytest.raises(EngineUnavailableError, match=r"^engine 'hip_densenet': no manifest in "):
        EngineSet(config(engine_cache), ["hip_screen", "hip_densenet"])


def linked_copy(source: Path, target: Path) -> Path:
    """The engine folder ``source`` as ``target``: its manifest copied, artefacts linked."""
    target.mkdir()
    for path in source.iterdir():
        if path.name == "manifest.yaml":
            (target / path.name).write_bytes(path.read_bytes())
        else:
            (target / path.name).symlink_to(path)
    return target


def test_a_manifest_in_another_engines_folder_is_refused(
    engine_cache: Path, tmp_path: Path
) -> None:
    # Routing and triage overrides name engines by folder: a mismatch would be ignored.
    linked_copy(engine_cache / "hip_screen", tmp_path / "screening")
    with pytest.raises(
        EngineUnavailableError,
        match=r"^engine 'screening' in .*: name: the manifest names engine 'hip_screen', but "
        r"it is in the folder of engine 'screening' \(rename one of them\)$",
    ):
        EngineSet(config(tmp_path), ["screening"])


def test_inputs_go_by_name_whatever_the_manifests_order(
    engines: EngineSet,
    images: tuple[PreparedImage, PreparedImage],
    engine_cache: Path,
    tmp_path: Path,
) -> None:
    folder = linked_copy(engine_cache / "hipnet", tmp_path / "hipnet")
    manifest = folder / "manifest.yaml"
    raw = yaml.safe_load(manifest.read_text())
    raw["inputs"] = raw["inputs"][1:2] + raw["inputs"][:1] + raw["inputs"][2:]
    assert [i["name"] for i in raw["inputs"]] == ["lateral", "ap", "lateral_present"]
    manifest.write_text(yaml.safe_dump(raw))
    items = items_for(engines, "hipnet", images)
    reordered = EngineSet(config(tmp_path), ["hipnet"])
    try:
        # Was: the AP under the first input listed ("lateral"), then overwritten: every
        # study failed for want of "ap".
        got = reordered.predict("hipnet", items)
    finally:
        reordered.close()
    for a, b in zip(got, engines.predict("hipnet", items), strict=True):
        assert a.probabilities == b.probabilities
        assert a.pji_risk == b.pji_risk


@pytest.mark.parametrize("artefact", ["onnx_fp32", "head"])
def test_a_tampered_artefact_hash_is_refused(
    engine_cache: Path, tmp_path: Path, artefact: str
) -> None:
    folder = linked_copy(engine_cache / "hip_screen", tmp_path / "hip_screen")
    manifest = folder / "manifest.yaml"
    raw = yaml.safe_load(manifest.read_text())
    raw["artefacts"][artefact]["sha256"] = "0" * 64
    manifest.write_text(yaml.safe_dump(raw))
    with pytest.raises(
        EngineUnavailableError,
        match=rf"^engine 'hip_screen' in {re.escape(str(folder))}: hip_screen: artefact "
        rf"'{artefact}' at .* has SHA-256 [0-9a-f]{{64}}, manifest says 0{{64}}$",
    ):
        EngineSet(config(tmp_path), ["hip_screen"])


def test_a_tampered_artefact_file_is_refused(engine_cache: Path, tmp_path: Path) -> None:
    folder = linked_copy(engine_cache / "hip_screen", tmp_path / "hip_screen")
    head = folder / "head.npz"
    data = bytearray(head.read_bytes())
    head.unlink()
    data[-1] ^= 0xFF
    head.write_bytes(bytes(data))
    opened: list[Runtime] = []

    def spied(folder: Path, options: RuntimeOptions) -> Runtime:
        runtime = open_runtime(folder, options)
        opened.append(runtime)
        return runtime

    with (
        pytest.MonkeyPatch.context() as patch,
        pytest.raises(
            EngineUnavailableError,
            match=r"^engine 'hip_screen' in .*: hip_screen: artefact 'head' ",
        ),
    ):
        patch.setattr(infer, "open_runtime", spied)
        EngineSet(config(tmp_path), ["hip_screen"])
    # The runtime opened before the head failed its check is closed (was left open: on
    # TensorRT a CUDA context and its device memory).
    (runtime,) = opened
    with pytest.raises(EngineRuntimeError, match=r"closed"):
        runtime.infer({})


def test_an_engine_that_is_not_open(
    engines: EngineSet, images: tuple[PreparedImage, PreparedImage]
) -> None:
    with pytest.raises(
        EngineUnavailableError, match=r"^engine 'other' is not open \(open: hip_screen, hipnet\)$"
    ):
        engines.manifest("other")
    with pytest.raises(EngineUnavailableError, match=r"^engine 'other' is not open"):
        engines.predict("other", items_for(engines, "hip_screen", images))


def test_close_then_predict_raises(
    engine_cache: Path, images: tuple[PreparedImage, PreparedImage]
) -> None:
    engines = EngineSet(config(engine_cache), ["hip_screen"])
    try:
        items = items_for(engines, "hip_screen", images)
        assert len(engines.predict("hip_screen", items)) == 2
    finally:
        engines.close()
    engines.close()  # closing twice is harmless
    assert engines.names == ()
    with pytest.raises(
        EngineUnavailableError, match=r"^engine 'hip_screen' is not open \(open: none\)$"
    ):
        engines.predict("hip_screen", items)
    with pytest.raises(EngineUnavailableError, match=r"^engine 'hip_screen' is not open"):
        engines.manifest("hip_screen")
    # An empty batch is answered before the engine is looked up, even when closed.
    assert engines.predict("hip_screen", []) == []


def test_a_closed_runtime_refuses_to_run(engine_cache: Path) -> None:
    runtime = open_runtime(engine_cache / "hip_screen", RuntimeOptions("onnxruntime", threads=1))
    runtime.close()
    with pytest.raises(EngineRuntimeError, match=r"^hip_screen on onnxruntime: runtime is closed$"):
        runtime.infer({"image": np.zeros((1, 1, 64, 64), dtype=np.float32)})


def test_a_non_finite_output_is_refused_naming_the_engine_and_hip(
    engine_cache: Path,
    images: tuple[PreparedImage, PreparedImage],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A NaN compares false with every threshold: it must not become an "absent" finding.
    engines = EngineSet(config(engine_cache), ["hip_screen"])
    try:
        runtime = engines._engine("hip_screen").runtime
        real = runtime.infer

        def nan_for_the_left_hip(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            outputs = dict(real(batch))
            name = engines.manifest("hip_screen").probability_output
            scores = np.array(outputs[name], copy=True)
            scores[1, 2] = np.nan
            outputs[name] = scores
            return outputs

        monkeypatch.setattr(runtime, "infer", nan_for_the_left_hip)
        items = items_for(engines, "hip_screen", images)
        uid = re.escape(items[1].ap.image.source.sop_instance_uid)
        with pytest.raises(
            EngineOutputError,
            match=rf"^engine hip_screen 0\.0\.1-test \(onnxruntime\) gave non-finite "
            rf"probabilities for hip L of {uid}$",
        ):
            engines.predict("hip_screen", items)
    finally:
        engines.close()


@pytest.mark.parametrize(
    ("heatmap", "missing"),
    [
        ({"head_artefact": None}, r"heatmap\.head_artefact: required for kind 'gradcam-gem'"),
        ({"kind": "interpretive-map"}, r"heatmap\.map_output: required for kind 'interpretive-map'"),
        ({"kind": "gradcam-max"}, r"heatmap\.kind: expected one of gradcam-gem, .* got 'gradcam-max'"),
    ],
    ids=["gradcam-without-head", "interpretive-map-without-output", "unknown-kind"],
)  # fmt: skip
def test_a_manifest_without_a_way_to_its_heat_map_is_refused_when_opened(
    engine_cache: Path, tmp_path: Path, heatmap: dict[str, object], missing: str
) -> None:
    # Each loaded, then failed every study (or an unknown kind fell back to Grad-CAM and
    # failed the report): refused when the engine opens.
    folder = linked_copy(engine_cache / "hip_screen", tmp_path / "hip_screen")
    manifest = folder / "manifest.yaml"
    raw = yaml.safe_load(manifest.read_text())
    raw["heatmap"].update(heatmap)
    manifest.write_text(yaml.safe_dump(raw))
    with pytest.raises(EngineUnavailableError, match=rf"engine 'hip_screen' in .*: {missing}$"):
        EngineSet(config(tmp_path), ["hip_screen"])
