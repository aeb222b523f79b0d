from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import RLELossless

from dicom_node.synthetic import StudyIdentity
from engines.ct_grid import engine_volume
from engines.models.hip_multimodal import MULTIMODAL_CLASSES
from engines.phantoms.ct import (
    DEFAULT_SHAPE,
    DEFAULT_SPACING,
    HU_RANGE,
    CtPhantom,
    ct_hip,
    phantom_image,
    write_ct_study_series,
)
from engines.phantoms.phantom import PhantomError
from engines.volumes import read_ct_series

LESIONS = [label for label in MULTIMODAL_CLASSES if label != "normal"]


def _same(a: CtPhantom, b: CtPhantom) -> bool:
    return (
        a.array.tobytes() == b.array.tobytes()
        and np.array_equal(a.mask, b.mask)
        and (a.label, a.spacing) == (b.label, b.spacing)
    )


@pytest.mark.parametrize("label", MULTIMODAL_CLASSES)
def test_deterministic_per_seed(label: str) -> None:
    a = ct_hip(label, 7)
    assert _same(a, ct_hip(label, 7))
    assert a.array.shape == a.mask.shape == DEFAULT_SHAPE
    assert a.array.dtype == np.float32 and a.mask.dtype == np.bool_
    assert a.spacing == DEFAULT_SPACING and a.label == label


def test_seeds_differ() -> None:
    arrays = [ct_hip("normal", seed).array for seed in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(arrays[i] - arrays[j]).mean() > 20.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_labels_differ_where_the_lesion_is(seed: int) -> None:
    normal = ct_hip("normal", seed)
    assert not normal.mask.any()
    for label in LESIONS:
        lesion = ct_hip(label, seed)
        assert lesion.mask.any(), label
        diff = np.abs(lesion.array - normal.array)
        # Same patient and noise: the change is at the lesion (osteoarthritis also
        # moves the acetabulum in, narrowing the joint space).
        assert diff[lesion.mask].mean() > 150.0, label
        assert diff[~lesion.mask].mean() < 40.0, label
        assert diff[lesion.mask].mean() > 5 * diff[~lesion.mask].mean(), label


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hu_ranges_are_plausible(seed: int) -> None:
    for label in MULTIMODAL_CLASSES:
        hu = ct_hip(label, seed).array
        assert HU_RANGE[0] <= hu.min() and hu.max() <= HU_RANGE[1]

        def share(lo: float, hi: float, values: np.ndarray = hu) -> float:
            return float(((values >= lo) & (values < hi)).mean())

        assert share(-1024, -900) > 0.05  # air beside the body
        assert share(-150, -50) > 0.02  # fat
        assert share(0, 80) > 0.25  # muscle
        assert share(150, 450) > 0.02  # trabecular bone
        assert share(1000, 1600) > 0.005  # cortical bone
        assert hu.max() < 2200


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_lesions_look_like_their_class(seed: int) -> None:
    normal = ct_hip("normal", seed).array
    oa = ct_hip("osteoarthritis", seed)
    # Subchondral sclerosis and osteophytes: denser than the same voxels of the normal hip.
    assert oa.array[oa.mask].mean() > normal[oa.mask].mean() + 200.0
    onfh = ct_hip("osteonecrosis_of_femoral_head", seed)
    # A lucent necrotic zone (and crescent) inside a sclerotic rim.
    low, high = np.percentile(onfh.array[onfh.mask], [10, 90])
    normal_low, normal_high = np.percentile(normal[onfh.mask], [10, 90])
    assert low < normal_low - 100.0 and high > normal_high
    fai = ct_hip("femoroacetabular_impingement", seed)
    # Cam bump or acetabular over-coverage: bone where the normal hip has soft tissue.
    assert np.median(fai.array[fai.mask]) > 400.0 and np.median(normal[fai.mask]) < 200.0


def test_both_kinds_of_impingement_occur() -> None:
    sizes = [int(ct_hip("femoroacetabular_impingement", seed).mask.sum()) for seed in range(8)]
    # The cam bump is small, the pincer rim large.
    assert min(sizes) < 200 < max(sizes)


def test_other_shapes_and_spacings_scale_the_anatomy() -> None:
    reference = ct_hip("osteoarthritis", 3)  # 48 x 64 x 64 mm

    def bone(p: CtPhantom) -> float:
        return float((p.array > 600.0).mean())

    # The same field at a coarser spacing, and a field twice as large: the anatomy
    # scales with the field, so bone and lesion fill about the same share of it.
    coarse = ct_hip("osteoarthritis", 3, shape=(24, 32, 32), spacing=(2.0, 2.0, 2.0))
    large = ct_hip("osteoarthritis", 3, shape=(32, 64, 64), spacing=(3.0, 2.0, 2.0))
    for p in (coarse, large):
        assert p.array.shape == p.mask.shape
        assert bone(p) == pytest.approx(bone(reference), rel=0.3)
        assert p.mask.mean() == pytest.approx(reference.mask.mean(), rel=0.4)
    assert coarse.array.shape == (24, 32, 32) and coarse.spacing == (2.0, 2.0, 2.0)
    odd = ct_hip("normal", 3, shape=(20, 60, 48), spacing=(2.0, 0.8, 1.0))
    assert odd.array.shape == (20, 60, 48) and odd.spacing == (2.0, 0.8, 1.0)


def test_default_shape_is_fast() -> None:
    ct_hip("normal", 0)
    start = time.process_time()
    for seed in range(20):
        ct_hip(MULTIMODAL_CLASSES[seed % 4], seed)
    # About 20 ms of CPU each; the bound leaves room for a busy machine.
    assert (time.process_time() - start) / 20 < 0.05


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(PhantomError, match=r'label: expected one of .*, got "fracture"'):
        ct_hip("fracture", 0)
    with pytest.raises(PhantomError, match=r"seed: expected a non-negative integer, got -1"):
        ct_hip("normal", -1)
    for shape in ((32, 64), (4, 64, 64), (32, 64, 64.0), (True, 64, 64)):
        with pytest.raises(PhantomError, match=r"shape: expected three integers 8-1024"):
            ct_hip("normal", 0, shape=shape)  # type: ignore[arg-type]
    for spacing in ((1.0, 1.0), (0.0, 1.0, 1.0), (1.0, float("nan"), 1.0), (1.0, 1.0, 11.0)):
        with pytest.raises(PhantomError, match=r"spacing: expected three positive numbers"):
            ct_hip("normal", 0, spacing=spacing)  # type: ignore[arg-type]


# DICOM series -------------------------------------------------------------------------


def test_series_reads_back_with_the_phantom_geometry(tmp_path: Path) -> None:
    phantom = ct_hip("osteonecrosis_of_femoral_head", 4)
    identity = StudyIdentity.synthetic(4)
    paths = write_ct_study_series(tmp_path / "ct", phantom, identity, series_number=3)
    assert len(paths) == DEFAULT_SHAPE[0]
    assert [p.name for p in paths[:2]] == ["CT003_0001.dcm", "CT003_0002.dcm"]
    first = dcmread(paths[0])
    assert first.StudyInstanceUID == identity.study_uid
    assert first.Modality == "CT" and first.SeriesNumber == 3 and first.Laterality == "R"
    ct = read_ct_series(paths[::-1], first.SeriesInstanceUID)
    assert ct.size == DEFAULT_SHAPE[::-1]
    np.testing.assert_allclose(ct.spacing, DEFAULT_SPACING[::-1], atol=1e-6)
    np.testing.assert_allclose(ct.direction, np.eye(3).ravel(), atol=1e-9)
    # Centred on the patient origin.
    centre = ct.image.TransformContinuousIndexToPhysicalPoint(
        [(n - 1) / 2 for n in ct.image.GetSize()]
    )
    np.testing.assert_allclose(centre, (0.0, 0.0, 0.0), atol=1e-6)
    # Stored as whole HU.
    np.testing.assert_allclose(ct.array(), phantom.array, atol=0.5)


def test_two_volumes_of_one_class_are_two_series(tmp_path: Path) -> None:
    # Seeds 1 and 2 of one class under one study: were the same Series and SOP Instance
    # UIDs for other pixels, which a PACS (or the node's spool) keeps only one of.
    identity = StudyIdentity.synthetic(1)
    one = write_ct_study_series(tmp_path / "1", ct_hip("normal", 1, shape=(8, 16, 16)), identity)
    two = write_ct_study_series(tmp_path / "2", ct_hip("normal", 2, shape=(8, 16, 16)), identity)
    assert dcmread(one[0]).SeriesInstanceUID != dcmread(two[0]).SeriesInstanceUID
    assert dcmread(one[0]).SOPInstanceUID != dcmread(two[0]).SOPInstanceUID


def test_series_uid_is_stable_and_syntax_selectable(tmp_path: Path) -> None:
    phantom = ct_hip("femoroacetabular_impingement", 1, shape=(8, 32, 32))
    identity = StudyIdentity.synthetic(1)
    a = write_ct_study_series(tmp_path / "a", phantom, identity)
    b = write_ct_study_series(tmp_path / "b", phantom, identity, transfer_syntax=RLELossless)
    uid = dcmread(a[0]).SeriesInstanceUID
    assert dcmread(b[0]).SeriesInstanceUID == uid
    assert dcmread(b[0]).file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(read_ct_series(a, uid).array(), read_ct_series(b, uid).array())
    other = write_ct_study_series(tmp_path / "c", phantom, identity, series_number=5)
    assert dcmread(other[0]).SeriesInstanceUID != uid
    given = write_ct_study_series(tmp_path / "d", phantom, identity, series_uid="1.2.3.4.5")
    assert dcmread(given[0]).SeriesInstanceUID == "1.2.3.4.5"
    with pytest.raises(PhantomError, match=r"series_number: expected a non-negative integer"):
        write_ct_study_series(tmp_path / "e", phantom, identity, series_number=-1)


def test_series_passes_dciodvfy(tmp_path: Path, dciodvfy: Callable[[Path], list[str]]) -> None:
    phantom = ct_hip("osteoarthritis", 2, shape=(8, 32, 32))
    paths = write_ct_study_series(tmp_path, phantom, StudyIdentity.synthetic(2))
    assert dciodvfy(paths[0]) == []


def test_phantom_image_is_what_reading_the_written_series_gives(tmp_path: Path) -> None:
    """Training feeds phantoms without files; the node reads files: same engine input."""
    phantom = ct_hip("femoroacetabular_impingement", 3, shape=(12, 40, 36))
    paths = write_ct_study_series(tmp_path, phantom, StudyIdentity.synthetic(3))
    series = str(dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
    read = read_ct_series(paths, series)
    image = phantom_image(phantom)
    assert read.image.GetSize() == image.GetSize()
    assert np.allclose(read.image.GetSpacing(), image.GetSpacing())
    assert np.allclose(read.image.GetOrigin(), image.GetOrigin(), atol=1e-3)
    assert np.allclose(read.image.GetDirection(), image.GetDirection())
    from_files = engine_volume(read, (8, 16, 16))
    in_memory = engine_volume(image, (8, 16, 16))
    assert from_files.shape == (8, 16, 16)
    # The series stores whole HU; the window maps 2000 HU to 4 units, so 0.5 HU is 1e-3.
    assert np.abs(from_files - in_memory).max() < 2e-3
