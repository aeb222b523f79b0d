"""What each engine reports: its classes with SNOMED CT codes, thresholds and high-risk findings.

This is the clinical meaning of an engine's outputs, kept apart from the
architecture (``engines.models``) and written into every manifest. Codes were
checked against pydicom's DICOM concept dictionaries where DICOM lists them
(``source="dicom"``), otherwise against a national SNOMED CT value set
(``source="snomed-valueset"``). Where no exact concept could be confirmed the
nearest broader concept is used and marked ``source="broader"`` (its meaning
is the SNOMED term, never our class name), or no code is given
(``source="none"``); docs/engines.md lists them for review before clinical use.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicom_node.errors import DicomNodeError


class UnknownEngineError(DicomNodeError, KeyError):
    """No engine of that name is in the catalogue."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


@dataclass(frozen=True)
class Finding:
    """One output class: its name, SNOMED CT concept, default threshold and urgency."""

    name: str
    display: str  # short human wording for banners and tables
    code: str | None  # SNOMED CT concept id (scheme SCT)
    meaning: str | None  # the concept's SNOMED term
    source: str  # dicom | snomed-valueset | broader | none
    threshold: float  # probability at or above which the finding is called present
    high_risk: bool  # a present high-risk finding makes the case URGENT
    normal: bool = False  # the "no abnormality" class: present is not a finding


@dataclass(frozen=True)
class EngineSpec:
    name: str  # engine name (also its cache folder)
    model: str  # registry name in engines.models
    title: str
    seed: str  # the paper it follows (../shared/seeds)
    findings: tuple[Finding, ...]
    views: tuple[str, ...]  # the views it takes per hip
    production_size: int  # the published input edge (bench/inference.py measures it)
    demo_size: int  # input edge of the demo profile (CPU build in minutes)
    heatmap: str  # gradcam-gem | gradcam-avg (from logits + feature map) | interpretive-map | none
    single_label: bool = True
    # Inputs besides the radiograph views: "ct" (a CT series of the study), "text" (its
    # clinical text), "clinical" (the patient's age, sex, size and weight).
    modalities: tuple[str, ...] = ()
    demo_volume: tuple[int, int, int] | None = None  # CT grid (D, H, W) of the demo profile
    production_volume: tuple[int, int, int] | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.findings)

    def finding(self, name: str) -> Finding:
        for item in self.findings:
            if item.name == name:
                return item
        raise UnknownEngineError(f"engine {self.name!r} has no class {name!r}")


# Classes two engines share (the screening and the multimodal engine).
_NORMAL = Finding("normal", "normal", "17621005", "Normal", "dicom", 0.5, False)
_OSTEOARTHRITIS = Finding(
    "osteoarthritis",
    "osteoarthritis",
    "239872002",
    "Osteoarthritis of hip",
    "snomed-valueset",
    0.5,
    False,
)
_OSTEONECROSIS = Finding(
    "osteonecrosis_of_femoral_head",
    "osteonecrosis of the femoral head",
    "444849002",
    "Avascular necrosis of bone of hip",
    "snomed-valueset",
    0.5,
    False,
)

_SCREEN = (
    _NORMAL,
    _OSTEOARTHRITIS,
    _OSTEONECROSIS,
    Finding(
        "femoral_neck_fracture",
        "femoral neck fracture",
        "5913000",
        "Fracture of neck of femur",
        "snomed-valueset",
        0.4,
        True,
    ),
    Finding(
        "intertrochanteric_fracture",
        "intertrochanteric fracture",
        "700097003",
        "Fracture of bone of hip region",
        "broader",
        0.4,
        True,
    ),
    Finding(
        "developmental_dysplasia_of_hip",
        "developmental dysplasia of the hip",
        "52781008",
        "Congenital hip dysplasia",
        "snomed-valueset",
        0.5,
        False,
    ),
    Finding(
        "total_hip_arthroplasty",
        "total hip arthroplasty",
        "52734007",
        "Total replacement of hip",
        "snomed-valueset",
        0.5,
        False,
    ),
    Finding(
        "metallic_internal_fixation",
        "metallic internal fixation",
        "31031000",
        "Orthopedic internal fixation system",
        "snomed-valueset",
        0.5,
        False,
    ),
)

_FAILURE = (
    Finding(
        "periprosthetic_joint_infection",
        "periprosthetic joint infection",
        "1268822006",
        "Infection associated with prosthesis of hip joint",
        "snomed-valueset",
        0.4,
        True,
    ),
    Finding(
        "aseptic_loosening",
        "aseptic loosening",
        "240267008",
        "Loosening of hip joint prosthesis",
        "snomed-valueset",
        0.5,
        False,
    ),
    Finding(
        "dislocation",
        "prosthesis dislocation",
        "157265008",
        "Dislocation of hip joint",
        "broader",
        0.4,
        True,
    ),
    Finding(
        "periprosthetic_fracture",
        "periprosthetic fracture",
        "71620000",
        "Fracture of femur",
        "broader",
        0.4,
        True,
    ),
    Finding(
        "polyethylene_wear",
        "polyethylene wear",
        "116224001",
        "Complication of procedure",
        "broader",
        0.5,
        False,
    ),
)

_MULTIMODAL = (
    _NORMAL,
    _OSTEOARTHRITIS,
    _OSTEONECROSIS,
    # No SNOMED CT concept for femoroacetabular impingement could be confirmed here.
    Finding(
        "femoroacetabular_impingement",
        "femoroacetabular impingement",
        None,
        None,
        "none",
        0.5,
        False,
    ),
)

_OSTEOPOROSIS = (
    # The engine's "nothing found" class, coded Normal like the other engines' normal class.
    Finding(
        "no_osteoporosis",
        "no osteoporosis",
        "17621005",
        "Normal",
        "dicom",
        0.5,
        False,
        normal=True,
    ),
    Finding(
        "osteoporosis", "osteoporosis", "64859006", "Osteoporosis", "snomed-valueset", 0.5, False
    ),
)

ENGINES: dict[str, EngineSpec] = {
    "hip_screen": EngineSpec(
        name="hip_screen",
        model="hip_screen",
        title="Hip multi-abnormality screening (ResNet-50 + CBAM + GeM)",
        seed="001",
        findings=_SCREEN,
        views=("AP",),
        production_size=512,
        demo_size=96,
        heatmap="gradcam-gem",
    ),
    "hipnet": EngineSpec(
        name="hipnet",
        model="hipnet",
        title="Hip-Net: causes of hip prosthesis failure (dual-view ensemble of 4)",
        seed="002",
        findings=_FAILURE,
        views=("AP", "LATERAL"),
        production_size=384,
        demo_size=64,
        heatmap="interpretive-map",
    ),
    "hip_multimodal": EngineSpec(
        name="hip_multimodal",
        model="hip_multimodal",
        title="Hip radiograph + CT + clinical text, fused by attention over modality tokens",
        seed="000",
        findings=_MULTIMODAL,
        views=("AP",),
        production_size=384,
        demo_size=64,
        heatmap="gradcam-avg",
        modalities=("ct", "text"),
        demo_volume=(16, 32, 32),
        production_volume=(64, 128, 128),
    ),
    "osteoporosis": EngineSpec(
        name="osteoporosis",
        model="osteoporosis",
        title="Osteoporosis risk from a hip radiograph and clinical variables "
        "(VGG19 + InceptionV3 + ResNet-50 features, PCA, FC network)",
        seed="003",
        findings=_OSTEOPOROSIS,
        views=("AP",),
        production_size=299,
        demo_size=80,
        heatmap="none",
        modalities=("clinical",),
    ),
}


def engine_spec(name: str) -> EngineSpec:
    try:
        return ENGINES[name]
    except KeyError:
        raise UnknownEngineError(
            f"unknown engine {name!r}; available: {', '.join(sorted(ENGINES))}"
        ) from None
