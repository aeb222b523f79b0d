"""File Meta Information for a spooled instance, encoded directly.

The group is a handful of short elements; building it through pydicom's
Dataset machinery cost more per instance than the element walk of the whole
data set, so it is written here by hand (a test checks it is byte-identical to
pydicom's ``write_file_meta_info``).
"""

from __future__ import annotations

import struct

from dicom_node.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

PREAMBLE = b"\x00" * 128 + b"DICM"


def _short(group_elem: tuple[int, int], vr: bytes, value: bytes, pad: bytes) -> bytes:
    if len(value) % 2:
        value += pad
    return struct.pack("<HH2sH", *group_elem, vr, len(value)) + value


def _fixed_tail() -> bytes:
    return _short((2, 0x12), b"UI", IMPLEMENTATION_CLASS_UID.encode(), b"\x00") + _short(
        (2, 0x13), b"SH", IMPLEMENTATION_VERSION_NAME.encode(), b" "
    )


_VERSION = struct.pack("<HH2s2xI", 2, 1, b"OB", 2) + b"\x00\x01"
_TAIL = _fixed_tail()


def file_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str
) -> bytes:
    """Encoded group 0002 (with its group length) for one instance."""
    body = b"".join(
        (
            _VERSION,
            _short((2, 2), b"UI", sop_class_uid.encode("ascii"), b"\x00"),
            _short((2, 3), b"UI", sop_instance_uid.encode("ascii"), b"\x00"),
            _short((2, 0x10), b"UI", transfer_syntax.encode("ascii"), b"\x00"),
            _TAIL,
            _short((2, 0x16), b"AE", source_ae.encode("ascii", "replace"), b" "),
        )
    )
    return struct.pack("<HH2sHI", 2, 0, b"UL", 4, len(body)) + body
