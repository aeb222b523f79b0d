from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from engines.phantoms import PhantomError
from engines.phantoms.studies import PhantomStudy, write_study

THA = "total_hip_arthroplasty"


@pytest.fixture
def study(tmp_path: Path) -> PhantomStudy:
    return write_study(
        tmp_path / "study", 11, THA, THA, {"R": "aseptic_loosening", "L": "dislocation"}, size=128
    )


def test_pelvis_and_laterals(study: PhantomStudy) -> None:
    assert study.labels == {
        "R": THA,
        "L": THA,
        "R_failure": "aseptic_loosening",
        "L_failure": "dislocation",
    }
    pelvis, right, left = (pydicom.dcmread(f) for f in study.files)
    assert (pelvis.Modality, pelvis.ViewPosition, pelvis.ImageLaterality) == ("DX", "AP", "B")
    assert (right.ViewPosition, right.ImageLaterality) == ("RL", "R")
    assert (left.ViewPosition, left.ImageLaterality) == ("LL", "L")
    assert pelvis.pixel_array.shape == (128, 256)
    assert right.pixel_array.shape == left.pixel_array.shape == (128, 128)
    for ds in (pelvis, right, left):
        assert ds.BitsStored == 12 and int(ds.pixel_array.max()) <= 4095
        assert ds.StudyInstanceUID == study.identity.study_uid
        assert float(ds.PixelSpacing[0]) == pytest.approx(200.0 / 128)
    assert len({ds.SeriesInstanceUID for ds in (pelvis, right, left)}) == 3


def test_left_lateral_is_mirrored_back(study: PhantomStudy) -> None:
    """The left hip's lateral shows the femur toward the image's right edge."""
    left = pydicom.dcmread(study.files[2]).pixel_array.astype(np.float64)
    right = pydicom.dcmread(study.files[1]).pixel_array.astype(np.float64)
    # Both views have the femoral shaft near the middle; the anterior skin line is at the
    # left edge of the right lateral and at the right edge of the left lateral.
    assert right[:, :8].mean() < right[:, -8:].mean()
    assert left[:, -8:].mean() < left[:, :8].mean()


def test_no_lateral_without_a_failure(tmp_path: Path) -> None:
    st = write_study(tmp_path, 2, "osteoarthritis", THA, size=64)
    assert [f.name for f in st.files] == ["pelvis_ap.dcm"]
    assert st.labels == {"R": "osteoarthritis", "L": THA}


def test_is_deterministic(tmp_path: Path) -> None:
    a = write_study(tmp_path / "a", 4, THA, "normal", {"R": "polyethylene_wear"}, size=64)
    b = write_study(tmp_path / "b", 4, THA, "normal", {"R": "polyethylene_wear"}, size=64)
    for fa, fb in zip(a.files, b.files, strict=True):
        assert fa.read_bytes() == fb.read_bytes()


def test_files_pass_dciodvfy(study: PhantomStudy, dciodvfy: Callable[[Path], list[str]]) -> None:
    for path in study.files:
        assert dciodvfy(path) == []


def test_compressed_files_pass_dciodvfy(
    tmp_path: Path, dciodvfy: Callable[[Path], list[str]]
) -> None:
    st = write_study(tmp_path, 5, "normal", THA, {"L": "periprosthetic_fracture"}, 64, RLELossless)
    for path in st.files:
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == RLELossless
        assert dciodvfy(path) == []


@pytest.mark.parametrize(
    ("failure", "match"),
    [
        ({"R": "dislocation"}, r'failure\[R\]: "dislocation" needs a total_hip_arthroplasty hip'),
        ({"X": "dislocation"}, r"failure: expected sides \('R', 'L'\), got \"X\""),
        ({"L": "wobbly"}, r"failure\[L\]: expected one of .*got \"wobbly\""),
    ],
)
def test_bad_failures_raise(tmp_path: Path, failure: dict[str, str], match: str) -> None:
    with pytest.raises(PhantomError, match=match):
        write_study(tmp_path, 1, "normal", THA, failure, size=64)


def test_bad_labels_raise(tmp_path: Path) -> None:
    with pytest.raises(PhantomError, match=r"right: expected one of .*got \"hip\""):
        write_study(tmp_path, 1, "hip", THA, size=64)
    with pytest.raises(PhantomError, match=r"size: expected 64-4096 pixels, got 10"):
        write_study(tmp_path, 1, "normal", THA, size=10)


def test_bone_factor_changes_only_the_bone(tmp_path: Path) -> None:
    dense = write_study(tmp_path / "dense", 8, "normal", "normal", size=64)
    thin = write_study(tmp_path / "thin", 8, "normal", "normal", size=64, bone=0.7)
    a = pydicom.dcmread(dense.files[0]).pixel_array.astype(float)
    b = pydicom.dcmread(thin.files[0]).pixel_array.astype(float)
    assert a.shape == b.shape and b.mean() < a.mean()
    # Soft tissue at the image edge is unchanged; the bone is where it differs.
    assert np.abs(a[:, :4] - b[:, :4]).mean() < 0.2 * np.abs(a - b).mean()
    for bad in (0.1, True, "0.8"):
        with pytest.raises(PhantomError, match=r"bone: expected a factor from 0\.3 to 1\.5"):
            write_study(tmp_path / "bad", 8, "normal", "normal", size=64, bone=bad)  # type: ignore[arg-type]


def test_other_pixels_under_the_same_seed_are_other_instances(tmp_path: Path) -> None:
    normal = write_study(tmp_path / "a", 7, "normal", "normal", size=64)
    arthritic = write_study(tmp_path / "b", 7, "osteoarthritis", "normal", size=64)
    uids = [pydicom.dcmread(s.files[0]).SOPInstanceUID for s in (normal, arthritic)]
    # Was the same SOP Instance UID for different pixels: a node took the second for a
    # corrected version of the first.
    assert uids[0] != uids[1]
    assert normal.identity.study_uid == arthritic.identity.study_uid  # the same patient
