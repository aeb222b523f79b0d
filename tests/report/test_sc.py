"""The Grad-CAM overlay Secondary Capture of a phantom AP pelvis and of a left lateral."""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pydicom.config
import pytest
from helpers import run_tool
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.tag import Tag
from pydicom.valuerep import PersonName

from dicom_node.errors import ReportError
from dicom_node.identity import MANUFACTURER, MODEL_NAME
from dicom_node.report import codes
from dicom_node.report.overlay import with_banner
from dicom_node.report.sc import OverlayHip, banner_lines, build_overlay_sc, overlay_pixels
from dicom_node.report.uids import ResultIdentity, sc_identity, series_uid
from engines.phantoms.studies import write_study
from engines.pixels import display_pixels, pixel_spacing, prepare
from engines.regions import HipRegion, hip_regions

THA = "total_hip_arthroplasty"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
ENGINE, VERSION = "hip_screen", "1.2.3-test"
CLINICAL_USE = "not for clinical use: test"
SIZE = 64  # one hip region's edge: the pelvis is 64 x 128, the lateral 64 x 64


@dataclass(frozen=True)
class Image:
    header: Dataset  # no pixels, as the node keeps it
    picture: npt.NDArray[np.float32]  # the displayed picture, [0, 1]


def _image(path: Path) -> Image:
    ds = pydicom.dcmread(path)
    picture = display_pixels(ds)
    del ds.PixelData
    return Image(ds, picture)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Image, Image]:
    """(the AP pelvis, the left hip's lateral) of one phantom study."""
    folder = tmp_path_factory.mktemp("sc-study")
    st = write_study(folder, 5, "femoral_neck_fracture", THA, {"L": "dislocation"}, size=SIZE)
    ap, lateral = (_image(p) for p in st.files)
    assert (ap.header.BodyPartExamined, ap.header.ImageLaterality) == ("PELVIS", "B")
    assert (lateral.header.BodyPartExamined, lateral.header.ImageLaterality) == ("HIP", "L")
    assert ap.picture.shape == (SIZE, 2 * SIZE)
    assert lateral.picture.shape == (SIZE, SIZE)
    return ap, lateral


@pytest.fixture
def ap(images: tuple[Image, Image]) -> Image:
    return images[0]


@pytest.fixture
def lateral(images: tuple[Image, Image]) -> Image:
    return images[1]


def peaked(row: int, column: int) -> npt.NDArray[np.float32]:
    """A 4 x 4 map on the engine's grid: 1.0 in one cell, 0 elsewhere."""
    heat = np.zeros((4, 4), dtype=np.float32)
    heat[row, column] = 1.0
    return heat


def hip(
    image: Image,
    region: HipRegion,
    heatmap: npt.NDArray[np.float32] | None = None,
    finding: str = "femoral neck fracture",
    probability: str = "p=0.83",
    present: bool = True,
    priority: str = "URGENT",
) -> OverlayHip:
    """One hip of ``image``; by default its map peaks at canonical cell (1, 0): the shaft side."""
    _, geometry = prepare(region.cut(image.picture), pixel_spacing(image.header), SIZE)
    return OverlayHip(
        region=region,
        geometry=geometry,
        heatmap=peaked(1, 0) if heatmap is None else heatmap,
        finding=finding,
        probability=probability,
        present=present,
        priority=priority,
    )


def both_hips(image: Image) -> list[OverlayHip]:
    right, left = hip_regions(image.picture.shape, "B")
    return [
        hip(image, right),
        hip(
            image,
            left,
            finding="osteoarthritis",
            probability="p=0.30",
            present=False,
            priority="NONE",
        ),
    ]


def identity_of(image: Image, engine: str = ENGINE) -> ResultIdentity:
    header = image.header
    return sc_identity(
        str(header.StudyInstanceUID), (engine, VERSION), str(header.SOPInstanceUID), 9002, 1
    )


def overlay(
    image: Image,
    hips: Sequence[OverlayHip],
    method: Code = codes.GRADCAM,
    max_edge: int = 1536,
    institution_name: str = "Phantom Hospital",
) -> Dataset:
    return build_overlay_sc(
        image.header,
        image.picture,
        hips,
        ENGINE,
        VERSION,
        CLINICAL_USE,
        identity_of(image),
        method=method,
        max_edge=max_edge,
        institution_name=institution_name,
    )


def banner_height(width: int, hips: Sequence[OverlayHip], method: Code = codes.GRADCAM) -> int:
    lines = banner_lines(ENGINE, VERSION, CLINICAL_USE, hips, method)
    return int(with_banner(np.zeros((1, width, 3), dtype=np.uint8), lines).shape[0] - 1)


def coloured(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    mask: npt.NDArray[np.bool_] = (rgb[..., 0] != rgb[..., 1]) | (rgb[..., 1] != rgb[..., 2])
    return mask


def grey(picture: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    return np.rint(np.clip(picture, 0.0, 1.0) * 255).astype(np.uint8)


def below_banner(sc: Dataset, rows: int) -> npt.NDArray[np.uint8]:
    pixels: npt.NDArray[np.uint8] = sc.pixel_array
    return pixels[-rows:]


def dciodvfy_findings(path: Path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    result = run_tool(["dciodvfy", str(path)], env=dict(os.environ))
    assert "SCImage" in result.stdout + result.stderr  # it recognised the IOD
    lines = (result.stderr + result.stdout).splitlines()
    return [line for line in lines if line.startswith(("Error", "Warning"))]


# --- pixels -------------------------------------------------------------------------------


def test_rgb_8_bit_with_the_banner_above_the_source(ap: Image) -> None:
    hips = both_hips(ap)
    sc = overlay(ap, hips)
    assert (sc.PhotometricInterpretation, sc.SamplesPerPixel) == ("RGB", 3)
    assert (sc.BitsAllocated, sc.BitsStored, sc.HighBit, sc.PixelRepresentation) == (8, 8, 7, 0)
    assert sc.PlanarConfiguration == 0
    banner = banner_height(2 * SIZE, hips)
    assert banner > 0
    assert (sc.Rows, sc.Columns) == (banner + SIZE, 2 * SIZE)
    assert sc.pixel_array.shape == (banner + SIZE, 2 * SIZE, 3)
    assert sc.pixel_array.dtype == np.uint8


def test_grey_where_the_map_is_cold_and_coloured_at_its_peak(ap: Image) -> None:
    sc = overlay(ap, both_hips(ap))
    image = below_banner(sc, SIZE)
    colour = coloured(image)
    # Both maps peak at canonical cell (1, 0), rows 16-31 on a 64-row grid.
    assert colour[16:32].any()
    assert not colour[56:].any()  # far from either peak: the map is ~0 there
    cold = ~colour
    assert cold.mean() > 0.6
    expected = grey(ap.picture)
    for channel in range(3):
        assert np.array_equal(image[..., channel][cold], expected[cold])
    # The bottom rows are exactly the windowed source.
    assert np.array_equal(image[56:], np.repeat(expected[56:, :, None], 3, axis=2))


def _coloured_columns(sc: Dataset) -> npt.NDArray[np.intp]:
    columns: npt.NDArray[np.intp] = np.nonzero(coloured(below_banner(sc, SIZE)).any(axis=0))[0]
    return columns


def test_right_hip_lies_in_the_image_left_half(ap: Image) -> None:
    right, _ = hip_regions(ap.picture.shape, "B")
    columns = _coloured_columns(overlay(ap, [hip(ap, right)]))
    assert columns.size > 0
    # Canonical column 0 (the femoral shaft) is the image's left edge for a right hip.
    assert columns.min() == 0 and columns.max() < SIZE // 2


def test_left_hip_is_mirrored_into_the_image_right_half(ap: Image) -> None:
    _, left = hip_regions(ap.picture.shape, "B")
    assert left.mirrored
    columns = _coloured_columns(overlay(ap, [hip(ap, left)]))
    assert columns.size > 0
    # Canonical column 0 of a left hip is the image's right edge.
    assert columns.max() == 2 * SIZE - 1 and columns.min() >= 2 * SIZE - SIZE // 2


def test_map_peak_lands_where_the_heatmap_says(ap: Image) -> None:
    """The most coloured pixel of a hip lies inside its peak cell (mapped to the image)."""
    right, left = hip_regions(ap.picture.shape, "B")
    cell = SIZE // 4
    for region, row, col in ((right, 2, 3), (left, 0, 1)):
        sc = overlay(ap, [hip(ap, region, heatmap=peaked(row, col))])
        image = below_banner(sc, SIZE).astype(np.int32)
        strength = np.abs(image[..., 0] - image[..., 1]) + np.abs(image[..., 1] - image[..., 2])
        y, x = np.unravel_index(int(np.argmax(strength)), strength.shape)
        canonical_x = x if not region.mirrored else 2 * SIZE - 1 - x
        assert row * cell <= y < (row + 1) * cell
        assert col * cell <= canonical_x < (col + 1) * cell


def test_banner_is_dark_with_bright_and_urgent_text(ap: Image) -> None:
    hips = both_hips(ap)
    sc = overlay(ap, hips)
    banner = sc.pixel_array[: banner_height(2 * SIZE, hips)].astype(np.int32)
    dark = (banner.max(axis=2) < 40).mean()
    assert dark > 0.7
    white = (banner.min(axis=2) > 200).sum()
    assert white > 20
    # The right hip is URGENT: its line is drawn in the urgent red.
    red = ((banner[..., 0] > 200) & (banner[..., 1] < 140) & (banner[..., 2] < 140)).sum()
    assert red > 5


def test_banner_lines_state_findings_and_that_it_is_an_ai_result(ap: Image) -> None:
    hips = both_hips(ap)
    lines = banner_lines(ENGINE, VERSION, CLINICAL_USE, hips, codes.CLASS_ACTIVATION)
    assert lines == [
        ("AI RESULT - TO BE VERIFIED BY A RADIOLOGIST", False),
        (CLINICAL_USE, False),
        ("RIGHT HIP: femoral neck fracture p=0.83 - priority URGENT", True),
        ("LEFT HIP: osteoarthritis p=0.30 (below threshold) - priority NONE", False),
        (f"{ENGINE} {VERSION}, heat map: class activation", False),
    ]
    without_use = banner_lines(ENGINE, VERSION, "", hips[:1], codes.GRADCAM)
    assert len(without_use) == 3
    assert without_use[-1][0].endswith("gradient-weighted class activation")


def test_max_edge_scales_a_larger_source_down(ap: Image) -> None:
    hips = both_hips(ap)
    sc = overlay(ap, hips, max_edge=SIZE)
    banner = banner_height(SIZE, hips)
    assert (sc.Rows, sc.Columns) == (banner + SIZE // 2, SIZE)
    image = below_banner(sc, SIZE // 2)
    # Still the source: the quiet bottom rows average the source's 2 x 2 blocks.
    expected = ap.picture[48:].reshape(8, 2, SIZE, 2).mean(axis=(1, 3))
    assert np.abs(image[24:, :, 0].astype(np.float64) - expected * 255).max() <= 1.0
    assert coloured(image).any()
    # A source within max_edge is not scaled.
    assert overlay(ap, hips, max_edge=2 * SIZE).Columns == 2 * SIZE


def test_overlay_pixels_matches_the_dataset(ap: Image) -> None:
    hips = both_hips(ap)
    lines = banner_lines(ENGINE, VERSION, CLINICAL_USE, hips, codes.GRADCAM)
    pixels = overlay_pixels(ap.picture, hips, lines, 1536)
    assert np.array_equal(pixels, overlay(ap, hips).pixel_array)


# --- attributes ---------------------------------------------------------------------------


def test_secondary_capture_attributes(ap: Image) -> None:
    sc = overlay(ap, both_hips(ap))
    source = ap.header
    identity = identity_of(ap)
    assert sc.SOPClassUID == SC_STORAGE
    assert sc.SOPInstanceUID == identity.sop_instance_uid
    assert sc.SeriesInstanceUID == series_uid(
        source.StudyInstanceUID, "sc", "9002", "AI heat maps hip_screen", "", "PELVIS"
    )
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert (sc.SeriesNumber, sc.InstanceNumber) == (9002, 1)
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "AccessionNumber"):
        assert sc[keyword].value == source[keyword].value, keyword
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY"]
    assert sc.BurnedInAnnotation == "YES"
    assert sc.RecognizableVisualFeatures == "NO"
    assert (sc.Manufacturer, sc.ManufacturerModelName) == (MANUFACTURER, MODEL_NAME)
    assert sc.InstitutionName == "Phantom Hospital"
    assert sc.SeriesDescription == f"AI heat maps {ENGINE}"
    assert sc.BodyPartExamined == "PELVIS"
    assert "Laterality" not in sc  # a pelvis is not a paired part
    assert list(sc.PatientOrientation) == list(source.PatientOrientation)
    (reference,) = sc.SourceImageSequence
    assert reference.ReferencedSOPClassUID == source.SOPClassUID
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    (purpose,) = reference.PurposeOfReferenceCodeSequence
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("121322", "DCM")
    assert "AI result to be verified" in sc.DerivationDescription


@pytest.mark.parametrize(
    ("method", "value", "meaning"),
    [
        (codes.GRADCAM, "130403", "Gradient-weighted class activation"),
        (codes.CLASS_ACTIVATION, "130402", "Class activation"),
    ],
)
def test_derivation_is_coded_from_cid_217(
    ap: Image, method: Code, value: str, meaning: str
) -> None:
    sc = overlay(ap, both_hips(ap), method=method)
    (code,) = sc.DerivationCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
        value,
        "DCM",
        meaning,
    )
    assert sc.DerivationDescription.startswith(f"{ENGINE} {VERSION}: {meaning.lower()} map")


def test_single_hip_source_keeps_its_laterality(lateral: Image) -> None:
    (region,) = hip_regions(lateral.picture.shape, "L")
    assert region.mirrored
    sc = overlay(lateral, [hip(lateral, region)], method=codes.CLASS_ACTIVATION)
    assert sc.ImageLaterality == "L" and "Laterality" not in sc
    assert sc.BodyPartExamined == "HIP"
    assert sc.Columns == SIZE
    columns = _coloured_columns(sc)
    assert columns.max() == SIZE - 1 and columns.min() >= SIZE // 2  # mirrored back


def test_the_file_reads_back(ap: Image, tmp_path: Path) -> None:
    sc = overlay(ap, both_hips(ap))
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    read = pydicom.dcmread(path)
    assert read.file_meta.MediaStorageSOPClassUID == SC_STORAGE
    assert read.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert np.array_equal(read.pixel_array, sc.pixel_array)


def test_dciodvfy_accepts_the_pelvis_overlay(ap: Image, tmp_path: Path) -> None:
    path = tmp_path / "sc.dcm"
    overlay(ap, both_hips(ap)).save_as(path, enforce_file_format=True)
    assert dciodvfy_findings(path) == []


def test_dciodvfy_accepts_the_lateral_overlay(lateral: Image, tmp_path: Path) -> None:
    (region,) = hip_regions(lateral.picture.shape, "L")
    path = tmp_path / "sc.dcm"
    overlay(lateral, [hip(lateral, region)]).save_as(path, enforce_file_format=True)
    assert dciodvfy_findings(path) == []


def test_dciodvfy_accepts_an_overlay_of_both_hips_coded_hip(ap: Image, tmp_path: Path) -> None:
    """An AP of both hips coded BodyPartExamined HIP, ImageLaterality B (common at sites)."""
    header = copy.deepcopy(ap.header)
    header.BodyPartExamined = "HIP"
    both = Image(header, ap.picture)
    path = tmp_path / "sc.dcm"
    overlay(both, both_hips(both)).save_as(path, enforce_file_format=True)
    assert dciodvfy_findings(path) == []


# --- refusals -----------------------------------------------------------------------------


def test_no_hips_is_refused(ap: Image) -> None:
    with pytest.raises(ReportError, match="build_overlay_sc: expected at least one hip, got none"):
        overlay(ap, [])


def test_a_method_outside_cid_217_is_refused(ap: Image) -> None:
    segmentation = Code("113076", "DCM", "Segmentation")
    with pytest.raises(
        ReportError, match=r"method: expected a CID 217 code \(130402, 130403\), got 113076"
    ):
        overlay(ap, both_hips(ap), method=segmentation)


def test_a_region_of_another_picture_is_refused(ap: Image, lateral: Image) -> None:
    (region,) = hip_regions((2 * SIZE, SIZE), "L")  # 128 rows: not the pelvis's 64
    wrong = OverlayHip(
        region=region,
        geometry=hip(lateral, hip_regions(lateral.picture.shape, "L")[0]).geometry,
        heatmap=peaked(0, 0),
        finding="dislocation",
        probability="p=0.90",
        present=True,
        priority="URGENT",
    )
    with pytest.raises(
        ReportError, match=r"region of 128 rows does not fit a picture of shape \(64, 128\)"
    ):
        overlay(ap, [wrong])


def test_the_overlay_keeps_the_sources_patient_and_study_attributes(
    ap: Image, tmp_path: Path
) -> None:
    # What highdicom's from_ref_dataset leaves out and the SR carries: a PACS tracking
    # several patient-ID issuers files the overlay by them. A lossy source marks it lossy.
    header = copy.deepcopy(ap.header)
    header.IssuerOfPatientID = "PHANTOM-HOSPITAL"
    header.PatientAge = "071Y"
    header.StudyDescription = "XR PELVIS AP"
    header.LossyImageCompression = "01"
    header.LossyImageCompressionRatio = [10.0]
    header.LossyImageCompressionMethod = ["ISO_10918_1"]
    sc = overlay(Image(header, ap.picture), both_hips(ap))
    for keyword in (
        "IssuerOfPatientID",
        "PatientAge",
        "StudyDescription",
        "LossyImageCompression",
        "LossyImageCompressionRatio",
        "LossyImageCompressionMethod",
    ):
        assert sc[keyword].value == header[keyword].value, keyword
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    assert dciodvfy_findings(path) == []
    assert "LossyImageCompression" not in overlay(ap, both_hips(ap))  # a lossless source
    # A source received in JPEG Baseline that does not say so itself (Type 3 in CR): the
    # overlay of its lossy pixels went out unmarked.
    unmarked = copy.deepcopy(ap.header)
    unmarked.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"
    sc = overlay(Image(unmarked, ap.picture), both_hips(ap))
    assert (sc.LossyImageCompression, sc.LossyImageCompressionMethod) == ("01", "ISO_10918_1")
    sc.save_as(path, enforce_file_format=True)
    assert dciodvfy_findings(path) == []


def test_a_finding_below_its_threshold_is_drawn_fainter(ap: Image) -> None:
    right, left = hip_regions(ap.picture.shape, "B")
    present, absent = hip(ap, right), hip(ap, left, present=False, priority="NONE")
    pixels = below_banner(overlay(ap, [present, absent]), SIZE).astype(np.float64)
    shade = np.abs(pixels - grey(ap.picture)[..., None])  # how far from the radiograph
    right_half, left_half = shade[:, : SIZE // 2], shade[:, SIZE:]
    assert left_half.max() > 0  # still shown
    assert left_half.max() < 0.6 * right_half.max()  # but never as hot as a present finding


def test_a_map_of_a_fusion_engines_branch_says_so(ap: Image) -> None:
    sc = build_overlay_sc(
        ap.header, ap.picture, both_hips(ap), "hip_multimodal", VERSION, CLINICAL_USE,
        identity_of(ap, "hip_multimodal"), map_branch="radiograph",
    )  # fmt: skip
    assert "map of its radiograph branch's classifier" in sc.DerivationDescription
    lines = banner_lines("hip_multimodal", VERSION, CLINICAL_USE, both_hips(ap), codes.GRADCAM,
                         "radiograph")  # fmt: skip
    assert lines[-1][0].endswith("of its radiograph branch")
    assert "branch" not in overlay(ap, both_hips(ap)).DerivationDescription


def test_a_normal_hip_is_drawn_faint_like_a_finding_below_threshold(ap: Image) -> None:
    right, left = hip_regions(ap.picture.shape, "B")
    present = hip(ap, right)
    normal = hip(ap, left, finding="normal", probability="p=0.90", priority="NONE")
    normal = dataclasses.replace(normal, normal=True)  # present, but nothing to point at
    pixels = below_banner(overlay(ap, [present, normal]), SIZE).astype(np.float64)
    shade = np.abs(pixels - grey(ap.picture)[..., None])
    right_half, left_half = shade[:, : SIZE // 2], shade[:, SIZE:]
    assert left_half.max() > 0
    assert left_half.max() < 0.6 * right_half.max()  # was: as hot as the fracture


@pytest.mark.parametrize(
    ("part", "side", "laterality", "image_laterality"),
    [(None, "L", None, "L"), ("", "B", None, "B"), ("FEMUR", "R", None, "R"),
     ("PELVIS", None, None, "B"), ("HIP", "U", None, "U"), (None, None, None, "B"),
     # One hip taken under a pelvis protocol: was Laterality L beside PELVIS (dciodvfy:
     # present when its condition is unsatisfied).
     ("PELVIS", "L", None, "L"), ("ABDOMEN", "R", None, "R"), ("HIP", "L", None, "L")],
)  # fmt: skip
def test_the_side_is_kept_whatever_the_body_part(
    ap: Image, tmp_path: Path, part: str | None, side: str | None,
    laterality: str | None, image_laterality: str | None,
) -> None:  # fmt: skip
    header = copy.deepcopy(ap.header)
    for keyword in ("BodyPartExamined", "ImageLaterality", "Laterality"):
        if keyword in header:
            del header[keyword]
    if part is not None:
        header.BodyPartExamined = part
    if side is not None:
        header.ImageLaterality = side
    sc = overlay(Image(header, ap.picture), both_hips(ap))
    # Was: no side at all when the body part was absent, empty or not HIP.
    assert (sc.get("Laterality"), sc.get("ImageLaterality")) == (laterality, image_laterality)
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    assert dciodvfy_findings(path) == []


@pytest.mark.parametrize(
    ("given", "kept"),
    [(["A", "FR"], ["A", "FR"]), (["LP", "F"], ["LP", "F"]), (["X", "F"], ["L", "F"]),
     # As engines.regions read it when it split the hips (was L\F on an image whose right
     # hip had been taken from its right half).
     (["r", "f"], ["R", "F"]), (["R", "FEET"], ["L", "F"])],
)  # fmt: skip
def test_an_oblique_patient_orientation_is_kept(
    ap: Image, tmp_path: Path, given: list[str], kept: list[str]
) -> None:
    header = copy.deepcopy(ap.header)
    # Set unvalidated: a modality's lower case, as received.
    header["PatientOrientation"] = DataElement(
        Tag("PatientOrientation"), "CS", given, validation_mode=pydicom.config.IGNORE
    )
    sc = overlay(Image(header, ap.picture), both_hips(ap))  # was: ReportError, study failed
    assert list(sc.PatientOrientation) == kept
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    assert dciodvfy_findings(path) == []


@pytest.mark.parametrize("view", ["", None, "AP"], ids=["empty", "absent", "ap"])
def test_without_a_patient_orientation_the_overlay_says_how_its_hips_were_placed(
    ap: Image, view: str | None
) -> None:
    # An empty View Position (Type 2) stamped A/F, a lateral's rows, on an image whose
    # halves were read as the right and left hip (L/F).
    header = copy.deepcopy(ap.header)
    del header.PatientOrientation
    if view is None:
        del header.ViewPosition
    else:
        header.ViewPosition = view
    sc = overlay(Image(header, ap.picture), both_hips(ap))
    assert list(sc.PatientOrientation) == ["L", "F"]


def test_a_japanese_character_set_is_written_as_utf_8(ap: Image, tmp_path: Path) -> None:
    header = copy.deepcopy(ap.header)
    header.SpecificCharacterSet = ["", "ISO 2022 IR 87"]  # PS3.5 Annex H
    # As read from a file: raw bytes, where 本 is encoded with a 0x5C (backslash) byte.
    name = "Yamamoto^Tarou=山本^太郎=やまもと^たろう"
    encoded = PersonName(name).encode(["iso8859", "iso2022_jp"])
    assert b"\\" in encoded
    header[0x00100010] = RawDataElement(Tag(0x00100010), "PN", len(encoded), encoded, 0,
                                        False, True)  # fmt: skip
    sc = overlay(Image(header, ap.picture), both_hips(ap))  # was: ReportError, study failed
    assert sc.SpecificCharacterSet == "ISO_IR 192"
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    assert str(pydicom.dcmread(path).PatientName) == name  # was: 'Yamamoto^Tarou=\x1b$B;3K'
    assert dciodvfy_findings(path) == []


def test_overlays_share_a_series_only_where_their_series_attributes_agree(
    ap: Image, lateral: Image
) -> None:
    # A series' Laterality, Body Part Examined and Series Description hold for all of its
    # instances (dcentvfy): overlays of an R and an L image, of another body part or
    # another engine go to other series; the same attributes keep one series.
    def single(image: Image, side: str) -> Image:
        header = copy.deepcopy(image.header)
        header.ImageLaterality = side
        return Image(header, image.picture)

    (region,) = hip_regions(lateral.picture.shape, "L")
    right, left = (single(lateral, side) for side in "RL")
    by_side = {s: overlay(img, [hip(img, region)]) for s, img in (("R", right), ("L", left))}
    assert (by_side["R"].ImageLaterality, by_side["L"].ImageLaterality) == ("R", "L")
    assert by_side["R"].SeriesInstanceUID != by_side["L"].SeriesInstanceUID
    assert overlay(left, [hip(left, region)]).SeriesInstanceUID == by_side["L"].SeriesInstanceUID
    pelvis = overlay(ap, both_hips(ap))
    assert pelvis.SeriesInstanceUID not in {s.SeriesInstanceUID for s in by_side.values()}
    hipnet = build_overlay_sc(
        ap.header, ap.picture, both_hips(ap), "hipnet", VERSION, CLINICAL_USE,
        identity_of(ap, "hipnet"), method=codes.GRADCAM,
    )  # fmt: skip
    assert hipnet.SeriesDescription == "AI heat maps hipnet"
    assert hipnet.SeriesInstanceUID != pelvis.SeriesInstanceUID


def test_an_anisotropic_source_makes_a_square_pixel_overlay(ap: Image) -> None:
    # 0.1 mm rows, 0.15 mm columns: a Secondary Capture carries no spacing, so the overlay
    # was the source's grid and showed the pelvis stretched 1.5 times in every viewer.
    header = copy.deepcopy(ap.header)
    header.PixelSpacing = [0.1, 0.15]
    wide = Image(header, ap.picture)
    sc = overlay(wide, both_hips(wide))
    rows = sc.Rows - banner_height(3 * SIZE, both_hips(wide))
    assert (rows, sc.Columns) == (SIZE, 3 * SIZE)  # 128 columns of 0.15 mm: 192 of 0.1 mm
    assert "PixelAspectRatio" not in sc  # square: nothing for a viewer to honour or ignore


@pytest.mark.parametrize(
    ("charset", "institution", "written"),
    [(None, "Hôpital Saint-Éloi", "ISO_IR 192"), ("ISO_IR 100", "Szpital Łódź", "ISO_IR 192"),
     ("ISO_IR 100", "Hôpital Saint-Éloi", "ISO_IR 100"), (None, "Phantom Hospital", None)],
)  # fmt: skip
def test_the_configured_institution_gets_a_character_set_that_can_write_it(
    ap: Image, tmp_path: Path, charset: str | None, institution: str, written: str | None
) -> None:
    header = copy.deepcopy(ap.header)
    if "SpecificCharacterSet" in header:
        del header.SpecificCharacterSet
    if charset is not None:
        header.SpecificCharacterSet = charset
        name = "Müller^Jörg".encode("latin_1")  # raw, as read from a file
        header[0x00100010] = RawDataElement(Tag(0x00100010), "PN", len(name), name, 0,
                                            False, True)  # fmt: skip
    sc = overlay(Image(header, ap.picture), both_hips(ap), institution_name=institution)
    assert sc.get("SpecificCharacterSet") == written
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    assert back.InstitutionName == institution
    if charset is not None:
        assert str(back.PatientName) == "Müller^Jörg"
    assert dciodvfy_findings(path) == []


def test_a_malformed_patients_age_is_not_copied(ap: Image, tmp_path: Path) -> None:
    header = copy.deepcopy(ap.header)
    age = b"67"  # as many modalities write it: not an Age String (nnnD/W/M/Y)
    header[0x00101010] = RawDataElement(Tag(0x00101010), "AS", len(age), age, 0, False, True)
    sc = overlay(Image(header, ap.picture), both_hips(ap))
    assert "PatientAge" not in sc  # was copied: dciodvfy 'Length invalid for this VR'
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    assert dciodvfy_findings(path) == []
