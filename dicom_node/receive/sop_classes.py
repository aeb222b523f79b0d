"""What the Storage SCP accepts: SOP classes and transfer syntaxes (see docs/conformance.md)."""

from __future__ import annotations

from pydicom import uid

STORAGE_SOP_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.35",  # Extensible SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection Document
    "1.2.840.10008.5.1.4.1.1.88.67",  # X-Ray Radiation Dose SR
)

SR_SOP_CLASSES = frozenset(
    c for c in STORAGE_SOP_CLASSES if c.startswith("1.2.840.10008.5.1.4.1.1.88.")
)
SC_SOP_CLASSES = frozenset(
    c for c in STORAGE_SOP_CLASSES if c.startswith("1.2.840.10008.5.1.4.1.1.7")
)

# Every syntax accepted (also the set the synthetic factory writes), in the node's order
# of preference: where one presentation context proposes several, pynetdicom takes the
# first of this list that the caller proposed, not the caller's first. Lossless
# compression first, so a PACS that stores it and offers it beside uncompressed
# fallbacks need not decompress; then uncompressed; lossy syntaxes last, so an image the
# caller could send uncompressed is never lossy-compressed for the node.
LOSSLESS_COMPRESSED: tuple[uid.UID, ...] = (
    uid.JPEG2000Lossless,
    uid.JPEGLSLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLossless,
    uid.RLELossless,
    uid.DeflatedExplicitVRLittleEndian,
)
UNCOMPRESSED: tuple[uid.UID, ...] = (
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
)
LOSSY: tuple[uid.UID, ...] = (
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLSNearLossless,
    uid.JPEG2000,
)
TRANSFER_SYNTAXES: tuple[uid.UID, ...] = LOSSLESS_COMPRESSED + UNCOMPRESSED + LOSSY
