"""A Grad-CAM overlay as an RGB Secondary Capture in the source image's study (pure builder).

The windowed radiograph with the heat map of each hip's reported finding
blended in, and a burned-in banner that states the findings, probabilities,
priority, and that this is an AI result to be verified (Burned In Annotation
YES). New series; Image Type DERIVED\\SECONDARY; a Source Image Sequence; the
derivation coded with CID 217: (130403, DCM, "Gradient-weighted class activation")
for Grad-CAM, (130402, DCM, "Class activation") for an interpretive head's maps.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.coding import Code

from dicom_node.errors import ReportError
from dicom_node.identity import MANUFACTURER, MODEL_NAME, SOFTWARE_VERSION
from dicom_node.report import codes
from dicom_node.report.overlay import blend, scale_down, with_banner
from dicom_node.report.patient import (
    building,
    evidence_header,
    fit_charset,
    output_charset,
    with_patient_and_study,
)
from dicom_node.report.sr import SIDE_WORDS
from dicom_node.report.uids import ResultIdentity, series_uid
from engines.pixels import InputGeometry, pixel_spacing, square_pixels
from engines.regions import HipRegion, patient_orientation


@dataclass(frozen=True)
class OverlayHip:
    """One hip's contribution to an overlay: where it lies, its map and what it says."""

    region: HipRegion
    geometry: InputGeometry
    heatmap: npt.NDArray[np.float32]  # [0, 1] on the engine's grid
    finding: str  # display wording
    probability: str  # as the banner prints it, "p=0.83" (triage.probability_text)
    present: bool
    priority: str
    normal: bool = False  # the normal class (a hip without findings): drawn faint, not hot


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _orientation(source: Dataset) -> tuple[str, str]:
    """The source's Patient Orientation (the overlay keeps its rows and columns)."""
    read = patient_orientation(source.get("PatientOrientation"))
    if read is not None:
        return read  # as engines.regions read it when it placed the hips
    # Not given (or not valid): the display engines.regions assumed when it placed the hips
    # (an AP or PA radiograph's; only those get overlays). It read the View Position, so an
    # empty one (Type 2) stamped A/F, a lateral's, on an image split left and right.
    return ("L", "F")


# Each map is stretched from its lowest to its highest value (engines.gradcam.normalise); a
# hip whose finding is below its threshold is drawn at half strength (fainter, cooler
# colours), so it never looks as hot as a present finding.
BELOW_THRESHOLD_STRENGTH = 0.5


def overlay_pixels(
    picture: npt.NDArray[np.float32],
    hips: Sequence[OverlayHip],
    lines: Sequence[tuple[str, bool]],
    max_edge: int,
    spacing: tuple[float, float] | None = None,
) -> npt.NDArray[np.uint8]:
    """The overlay's RGB pixels: the maps placed on the source's grid, both made square by
    the source's (row, column) ``spacing`` (a Secondary Capture carries no spacing, so an
    anisotropic grid would show the anatomy stretched in every viewer), scaled down to
    ``max_edge`` and put under the banner."""
    heat = np.zeros(picture.shape, dtype=np.float32)
    for hip in hips:
        if hip.region.rows != picture.shape[0]:
            raise ReportError(
                f"region of {hip.region.rows} rows does not fit a picture of shape {picture.shape}"
            )
        strength = 1.0 if hip.present and not hip.normal else BELOW_THRESHOLD_STRENGTH
        hip.region.place(strength * np.clip(hip.geometry.to_region(hip.heatmap), 0.0, 1.0), heat)
    picture, heat = square_pixels(picture, spacing), square_pixels(heat, spacing)
    return with_banner(blend(scale_down(picture, max_edge), scale_down(heat, max_edge)), lines)


def banner_lines(
    engine: str,
    version: str,
    clinical_use: str,
    hips: Sequence[OverlayHip],
    method: Code,
    map_branch: str | None = None,
) -> list[tuple[str, bool]]:
    lines = [("AI RESULT - TO BE VERIFIED BY A RADIOLOGIST", False)]
    if clinical_use:
        lines.append((clinical_use, False))
    for hip in hips:
        state = "" if hip.present else " (below threshold)"
        lines.append(
            (
                f"{SIDE_WORDS[hip.region.side].upper()} HIP: {hip.finding} "
                f"{hip.probability}{state} - priority {hip.priority}",
                hip.priority == "URGENT",
            )
        )
    branch = f" of its {map_branch} branch" if map_branch else ""
    lines.append((f"{engine} {version}, heat map: {method.meaning.lower()}{branch}", False))
    return lines


def overlay_series(source: Dataset, engine: str) -> tuple[str, str, str]:
    """What puts an overlay in a series of its own: (Series Description, side, body part).
    Overlays of one engine share a series only where their side and body part agree."""
    part = str(source.get("BodyPartExamined", "")).upper()
    laterality = str(source.get("ImageLaterality") or source.get("Laterality") or "")
    side = laterality if laterality in ("R", "L") else ""
    return f"AI heat maps {engine}"[:64], side, part


def build_overlay_sc(
    source: Dataset,
    picture: npt.NDArray[np.float32],
    hips: Sequence[OverlayHip],
    engine: str,
    version: str,
    clinical_use: str,
    identity: ResultIdentity,
    method: Code = codes.GRADCAM,
    max_edge: int = 1536,
    institution_name: str | None = None,
    map_branch: str | None = None,
    study: Dataset | None = None,
) -> hd.sc.SCImage:
    """The overlay of ``source`` (its header) whose displayed ``picture`` the hips annotate.

    ``map_branch`` names the part of a fusion engine the maps come from (``"radiograph"``)
    when they are not of the reported, fused result itself: the banner and the derivation
    say so. ``study`` is the header whose patient and study attributes the overlay carries
    (default: ``source``'s), the same for every result of the study.
    """
    if not hips:
        raise ReportError("build_overlay_sc: expected at least one hip, got none")
    if method not in codes.HEATMAP_METHODS.values():
        known = ", ".join(sorted({c.value for c in codes.HEATMAP_METHODS.values()}))
        raise ReportError(f"method: expected a CID 217 code ({known}), got {method.value}")
    lines = banner_lines(engine, version, clinical_use, hips, method, map_branch)
    pixels = overlay_pixels(picture, hips, lines, max_edge, pixel_spacing(source))
    laterality = str(source.get("ImageLaterality") or source.get("Laterality") or "")
    orientation = _orientation(source)
    series_description, side, part = overlay_series(source, engine)
    series = series_uid(str(source.StudyInstanceUID), "sc", str(identity.series_number),
                        series_description, side, part)  # fmt: skip
    evidence = evidence_header(source)
    if study is not None:
        # Also when ``study`` is ``source``'s own header: it may carry an issuer lent by
        # the study's other images (results._with_the_issuer), which the SR carries too.
        evidence = with_patient_and_study(evidence, evidence_header(study))
    with building("overlay"):
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=evidence,
            pixel_array=pixels,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series,
            series_number=identity.series_number,
            sop_instance_uid=identity.sop_instance_uid,
            instance_number=identity.instance_number,
            manufacturer=MANUFACTURER,
            laterality=None,  # the side goes into Image Laterality, below
            # highdicom takes single letters only: the source's own value is set below.
            patient_orientation=(orientation[0][0], orientation[1][0]),
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            manufacturer_model_name=MODEL_NAME,
            software_versions=SOFTWARE_VERSION,
            institution_name=institution_name,
            series_description=series_description,
            specific_character_set=output_charset(source),
        )
    sc.PatientOrientation = list(orientation)
    if part:
        sc.BodyPartExamined = part
    # Image Laterality, not the series' Laterality: it can say both (B) or unpaired (U), and
    # its presence lifts Laterality's Type 2C condition (a paired part), while a Laterality
    # beside an unpaired part (a single hip taken as PELVIS) is an error (dciodvfy).
    # No side given: the node analysed the image as both hips.
    sc.ImageLaterality = laterality if laterality in ("R", "L", "B", "U") else "B"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.ConversionType = "WSD"  # made by software on a workstation, not digitised
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = "NO"
    of = (
        f"its {map_branch} branch's classifier for the reported finding per hip (the reported "
        "result fuses other inputs too)"
        if map_branch
        else "the reported finding per hip"
    )
    sc.DerivationDescription = (
        f"{engine} {version}: {method.meaning.lower()} map of {of}, "
        "blended over the windowed source image; AI result to be verified"
    )[:1024]
    sc.DerivationCodeSequence = DicomSequence([_code_item(method)])
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    reference.PurposeOfReferenceCodeSequence = DicomSequence(
        [_code_item(codes.SOURCE_FOR_PROCESSING)]
    )
    sc.SourceImageSequence = DicomSequence([reference])
    _copy_patient_and_study(evidence, sc)
    meta = getattr(source, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if str(source.get("LossyImageCompression", "")) == "01" or syntax in LOSSY_SYNTAXES:
        # PS3.3 C.7.6.1.1.5: an image derived from a lossy compressed one stays marked so;
        # the attribute is Type 3 in CR and DX's own modules, so a source received in a
        # lossy syntax may not say it itself.
        sc.LossyImageCompression = "01"
        for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if keyword in source:
                sc[keyword] = copy.deepcopy(source[keyword])
        if "LossyImageCompressionMethod" not in sc and syntax in LOSSY_SYNTAXES:
            sc.LossyImageCompressionMethod = LOSSY_SYNTAXES[syntax]
    fit_charset(sc)
    return sc


# The transfer syntaxes that are lossy whatever their parameters (JPEG 2000's .91 may be
# either: its images say which), with the CID 7201 method each names.
LOSSY_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",  # JPEG Extended
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",  # JPEG-LS near-lossless
}

# Patient and General Study attributes highdicom's from_ref_dataset leaves out: the SR
# (from the same evidence) carries them, and a PACS that tracks several patient-ID issuers
# files the overlay by them.
_PATIENT_AND_STUDY = (
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "OtherPatientIDsSequence",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyDescription",
    "IssuerOfAccessionNumberSequence",
)


def _copy_patient_and_study(source: Dataset, sc: Dataset) -> None:
    for keyword in _PATIENT_AND_STUDY:
        if keyword in source and keyword not in sc:
            sc[keyword] = copy.deepcopy(source[keyword])
