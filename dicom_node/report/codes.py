"""Coded concepts the results use, each checked against pydicom's DICOM concept dictionaries
(Urgent's meaning is SNOMED CT's, see PRIORITY_VALUES).

Where a concept comes from a Context Group it is named in the comment.
"""

from __future__ import annotations

from pydicom.sr.coding import Code

PROCEDURE = Code("168537006", "SCT", "Plain radiography")  # CID 10005
HIP_JOINT = Code("24136001", "SCT", "Hip joint")  # CID 4, 7304
HIP = Code("29836001", "SCT", "Hip")  # CID 4: the hip region
FEMUR = Code("71341001", "SCT", "Femur")  # CID 4
# Where a finding is, by its concept: the hip region for fractures of the proximal femur,
# bone density and fixation hardware (not in the joint: an intertrochanteric fracture is
# outside its capsule), the femur for a periprosthetic fracture of the shaft; the hip joint
# for the rest (joint disease, dysplasia, an arthroplasty and its failures) and for a
# site's own classes.
FINDING_SITES = {
    "5913000": HIP,  # fracture of neck of femur
    "700097003": HIP,  # fracture of bone of hip region (intertrochanteric)
    "31031000": HIP,  # orthopedic internal fixation system
    "64859006": HIP,  # osteoporosis
    "71620000": FEMUR,  # fracture of femur (periprosthetic)
}
RIGHT = Code("24028007", "SCT", "Right")  # CID 244
LEFT = Code("7771000", "SCT", "Left")  # CID 244
PROBABILITY = Code("122157", "DCM", "Probability")
NO_UNITS = Code("1", "UCUM", "no units")
PRESENCE = Code("121052", "DCM", "Presence of property")
PRESENT = Code("52101004", "SCT", "Present")  # CID 240
ABSENT = Code("272519000", "SCT", "Absent")  # CID 240
PRIORITY = Code("260870009", "SCT", "Priority")
# The study's triage priority as a value: SNOMED CT's qualifier value Urgent (DICOM lists
# the code only in CID 3414 "Procedure Urgency", as "Urgent Procedure": a procedure's
# urgency, not a study's priority, so SNOMED CT's meaning is kept); the two CAD summaries
# from CID 6047 say honestly whether the engines found anything.
PRIORITY_VALUES = {
    "URGENT": Code("103391001", "SCT", "Urgent"),
    "FLAG": Code("111242", "DCM", "All algorithms succeeded; with findings"),
    "NONE": Code("111241", "DCM", "All algorithms succeeded; without findings"),
}
# The same where an image of the study could not be analysed: "all succeeded" would be false.
INCOMPLETE_PRIORITY_VALUES = {
    "URGENT": PRIORITY_VALUES["URGENT"],
    "FLAG": Code("111244", "DCM", "Not all algorithms succeeded; with findings"),
    "NONE": Code("111243", "DCM", "Not all algorithms succeeded; without findings"),
}
GRADCAM = Code("130403", "DCM", "Gradient-weighted class activation")  # CID 217
CLASS_ACTIVATION = Code("130402", "DCM", "Class activation")  # CID 217
# How each manifest heat-map kind is made, as CID 217 "Visual Explanation" codes it.
HEATMAP_METHODS = {
    "gradcam-gem": GRADCAM,
    "gradcam-avg": GRADCAM,
    "interpretive-map": CLASS_ACTIVATION,
}
SOURCE_FOR_PROCESSING = Code("121322", "DCM", "Source image for image processing operation")

LATERALITY = {"R": RIGHT, "L": LEFT}

# Which inputs a multi-input engine had, each as a Present/Absent evaluation of the
# input's own concept: the two acquisition modalities (CID 29), the request's
# indications for the clinical text, the subject's age and sex (DCM) and LOINC's body
# height and weight (vital-signs codes).
INPUT_CODES = {
    "radiograph": Code("DX", "DCM", "Digital Radiography"),  # CID 29; CR: RADIOGRAPH_CODES
    "ct": Code("CT", "DCM", "Computed Tomography"),  # CID 29
    "text": Code("121109", "DCM", "Indications for Procedure"),
    "age": Code("121033", "DCM", "Subject Age"),
    "sex": Code("121032", "DCM", "Subject Sex"),
    "height": Code("8302-2", "LN", "Body height"),
    "weight": Code("29463-7", "LN", "Body weight"),
}
# The radiograph input in its own modality's concept (a CR image coded as DX misnamed it).
RADIOGRAPH_CODES = {"CR": Code("CR", "DCM", "Computed Radiography")}  # CID 29


def input_code(name: str, modality: str) -> Code:
    """The concept of input ``name``; the radiograph's is that of its ``modality``."""
    if name == "radiograph":
        return RADIOGRAPH_CODES.get(modality, INPUT_CODES[name])
    return INPUT_CODES[name]


INPUT_WORDS = {"radiograph": "radiograph", "ct": "CT", "text": "clinical text"}
COMMENT = Code("121106", "DCM", "Comment")  # CID 12101
# The finding type of a class with no confirmed SNOMED CT concept; a Comment names it.
FINDING = Code("121071", "DCM", "Finding")


def site_of(finding: Code) -> Code:
    """The finding site of a finding type (:data:`FINDING_SITES`, else the hip joint)."""
    return (
        FINDING_SITES.get(str(finding.value), HIP_JOINT)
        if finding.scheme_designator == "SCT"
        else HIP_JOINT
    )
