"""Check an incoming data set's structure and read its identifying attributes.

The C-STORE handler must never decode pixels, yet it must refuse a truncated or
garbled stream before acknowledging it (pydicom reads a short Pixel Data value
without complaint). This walker visits every element of the encoded stream,
checks that each length fits, that sequences and encapsulated pixel data are
delimited, that the stream ends on an element boundary, and that native Pixel
Data holds as many bytes as Rows x Columns x frames need. It reads only the
few top-level attributes the node routes on. It costs one pass over the
element headers: values are skipped, never copied. A deflated data set is
inflated first, never past the node's instance size limit.

A sequence is walked wherever pydicom will later read one: an SQ element, an
undefined-length element of no explicit VR or of VR UN, and a defined-length
element of no explicit VR (Implicit VR Little Endian) or of VR UN whose tag the
DICOM dictionary gives as SQ (pydicom turns those into sequences when it reads
them; a UN value is Implicit VR Little Endian inside, PS3.5 6.2.2).
"""

from __future__ import annotations

import struct
import zlib

from pydicom.datadict import dictionary_VR, keyword_dict

from dicom_node.config import NodeConfig
from dicom_node.errors import RejectedInstanceError
from dicom_node.models import Header

# Status codes (PS3.4 B.2.3; the C2xx sub-codes are ours, listed in docs/conformance.md).
CANNOT_UNDERSTAND = 0xC210
MISSING_UIDS = 0xC211
UID_MISMATCH = 0xC212
INVALID_UID = 0xC213
DOES_NOT_MATCH_SOP_CLASS = 0xA900
OUT_OF_RESOURCES = 0xA700

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
_NATIVE = {IMPLICIT_VR_LE, "1.2.840.10008.1.2.1", EXPLICIT_VR_BE, DEFLATED}

_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
# Group FFFE tags other than an item's end where a data element belongs: pydicom reads them
# as elements and the job then failed (NotImplementedError).
_DELIMITATION_NAMES = {_ITEM: "item tag", _SEQ_END: "sequence delimiter"}
# Standard tags whose dictionary VR is SQ, built once (a few ms at import): an element
# without an explicit VR (or with VR UN) costs one set lookup, no dictionary_VR call. The
# repeating-group entries hold no SQ; private tags are not in this dictionary.
_SQ_TAGS = frozenset(tag for tag in keyword_dict.values() if dictionary_VR(tag) == "SQ")
# pydicom turns a UN element of a tag whose VR is SQ into a sequence only below this
# length (pydicom.hooks.raw_element_vr); a longer one stays bytes, unread: not walked either.
_UN_AS_SQ_LIMIT = 0xFFFF
# Output of a deflated data set is inflated this much at a time into one buffer: asked for
# at once, zlib builds it in blocks and joins them, twice the limit at the peak.
_INFLATE_CHUNK = 1 << 20
# Deep enough for any real SR content tree or functional groups (under 10 levels), shallow
# enough for what reads the instance later: copying a patient-module sequence into the
# results (copy.deepcopy of a pydicom Dataset) overflows Python's recursion limit past ~70
# levels, and a radiograph nested 100 deep, stored at 128, failed its job there.
_MAX_DEPTH = 32

# Top-level attributes read as text, by tag.
_TEXT_TAGS = {
    0x00080016: "sop_class_uid",
    0x00080018: "sop_instance_uid",
    0x00080060: "modality",
    0x00080070: "manufacturer",
    0x0008103E: "series_description",
    0x0020000D: "study_uid",
    0x0020000E: "series_uid",
    0x00280004: "photometric_interpretation",
    0x00280008: "number_of_frames",
}
_UID_TAGS = frozenset((0x00080016, 0x00080018, 0x0020000D, 0x0020000E))
_US_TAGS = {
    0x00280002: "samples_per_pixel",
    0x00280010: "rows",
    0x00280011: "columns",
    0x00280100: "bits_allocated",
}


class _Reader:
    def __init__(self, data: bytes | bytearray | memoryview, little: bool, implicit: bool) -> None:
        self.data = memoryview(data)
        self.end = len(data)
        self.encoding(little, implicit)
        self.text: dict[str, str] = {}
        self.us: dict[str, int] = {}
        self.pixel_bytes: int | None = None
        self.encapsulated = False
        self.depth = 0  # sequences open around the element being read

    def encoding(self, little: bool, implicit: bool) -> None:
        """Read elements from here on in this byte order and VR encoding."""
        self.little = little
        self.implicit = implicit
        self.u16 = struct.Struct("<H" if little else ">H")
        self.u32 = struct.Struct("<I" if little else ">I")
        self.tag_fmt = struct.Struct("<HH" if little else ">HH")

    def fail(self, pos: int, what: str) -> RejectedInstanceError:
        return RejectedInstanceError(CANNOT_UNDERSTAND, f"malformed data set at byte {pos}: {what}")

    def header(self, pos: int) -> tuple[int, bytes, int, int]:
        """Return (tag, vr, length, value offset) of the element at ``pos``."""
        if pos + 8 > self.end:
            raise self.fail(pos, "truncated element header")
        group, elem = self.tag_fmt.unpack_from(self.data, pos)
        tag = (group << 16) | elem
        if group == 0xFFFE or self.implicit:
            (length,) = self.u32.unpack_from(self.data, pos + 4)
            return tag, b"", length, pos + 8
        vr = bytes(self.data[pos + 4 : pos + 6])
        if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
            raise self.fail(pos, f"invalid VR 0x{vr.hex()} for tag ({group:04X},{elem:04X})")
        if vr in _LONG_VRS:
            if pos + 12 > self.end:
                raise self.fail(pos, "truncated element header")
            (length,) = self.u32.unpack_from(self.data, pos + 8)
            return tag, vr, length, pos + 12
        (length,) = self.u16.unpack_from(self.data, pos + 6)
        return tag, vr, length, pos + 8

    def dataset(self, pos: int, end: int, top: bool, until_item_end: bool) -> int:
        """Walk elements from ``pos``; return the offset after the data set."""
        last_tag = -1
        while pos < end:
            tag, vr, length, value = self.header(pos)
            if tag >= 0xFFFE0000:  # group FFFE: one comparison for every element
                if tag != _ITEM_END:
                    name = _DELIMITATION_NAMES.get(tag, "delimitation tag")
                    raise self.fail(
                        pos, f"{name} (FFFE,{tag & 0xFFFF:04X}) where a data element belongs"
                    )
                if not until_item_end:
                    raise self.fail(pos, "item delimiter outside an item")
                return value
            if top and tag <= last_tag:
                raise self.fail(pos, f"tag ({tag >> 16:04X},{tag & 0xFFFF:04X}) out of order")
            if top and tag >> 16 == 0x0002:
                # Spooled after the node's own File Meta, a second group 0002 is read as
                # part of it (pydicom takes its Transfer Syntax UID, and misreads the rest).
                raise self.fail(
                    pos, f"File Meta element ({tag >> 16:04X},{tag & 0xFFFF:04X}) in the data set"
                )
            last_tag = tag
            if length == _UNDEFINED:
                if tag == _PIXEL_DATA:  # the only element A.4 lets encapsulate, at any level
                    pos = self.fragments(value, top)
                elif vr == b"UN":
                    pos = self.un_sequence(value, end, delimited=True)
                elif vr in (b"", b"SQ"):
                    pos = self.sequence(value, end, delimited=True)
                else:
                    raise self.fail(pos, f"undefined length on VR {vr.decode(errors='replace')}")
                continue
            if value + length > end:
                raise self.fail(pos, f"value of {length} bytes runs past the end")
            if vr == b"SQ":
                self.sequence(value, value + length, delimited=False)
            elif tag in _SQ_TAGS and vr == b"":
                # pydicom reads these as sequences: unchecked, a garbled or 100-deep one
                # was acknowledged and its job failed (RecursionError).
                self.sequence(value, value + length, delimited=False)
            elif tag in _SQ_TAGS and vr == b"UN" and length < _UN_AS_SQ_LIMIT:
                self.un_as_sequence(value, value + length)
            if top:
                self.collect(tag, value, length)
            pos = value + length
        if pos != end or until_item_end:
            raise self.fail(pos, "data set ends inside an element or item")
        return pos

    def sequence(self, pos: int, end: int, delimited: bool) -> int:
        if self.depth >= _MAX_DEPTH:  # the walk recurses: a hostile nesting must not crash it
            raise self.fail(pos, f"sequences nested deeper than {_MAX_DEPTH} levels")
        self.depth += 1
        try:
            return self._items(pos, end, delimited)
        finally:
            self.depth -= 1

    def sequence_in(
        self, pos: int, end: int, delimited: bool, *, little: bool, implicit: bool
    ) -> int:
        """Walk a sequence whose items are in another encoding than the data set's."""
        outer = (self.little, self.implicit)
        self.encoding(little, implicit)
        try:
            return self.sequence(pos, end, delimited)
        finally:
            self.encoding(*outer)

    def un_sequence(self, pos: int, end: int, delimited: bool) -> int:
        """Walk a sequence sent as UN: its items are Implicit VR Little Endian whatever
        the transfer syntax (PS3.5 6.2.2)."""
        return self.sequence_in(pos, end, delimited, little=True, implicit=True)

    def un_as_sequence(self, pos: int, end: int) -> None:
        """Walk a defined-length UN value that pydicom reads as a sequence (its tag's VR is
        SQ) as pydicom reads it: in the data set's byte order, its items Implicit VR (PS3.5
        6.2.2) or, as pydicom also takes them (it looks at the first item), Explicit VR, a
        misencoding some archives write. Refused when they are neither."""
        try:
            self.sequence_in(pos, end, False, little=self.little, implicit=True)
        except RejectedInstanceError as implicit_error:
            try:
                self.sequence_in(pos, end, False, little=self.little, implicit=False)
            except RejectedInstanceError:
                raise implicit_error from None  # what PS3.5 says it is, and why not

    def _items(self, pos: int, end: int, delimited: bool) -> int:
        while pos < end:
            tag, _, length, value = self.header(pos)
            if tag == _SEQ_END:
                return value
            if tag != _ITEM:
                raise self.fail(pos, "expected a sequence item")
            if length == _UNDEFINED:
                # Bounded by the sequence: an item must not run past a defined length.
                pos = self.dataset(value, end, top=False, until_item_end=True)
            elif value + length > end:
                raise self.fail(pos, f"item of {length} bytes runs past the end")
            else:
                self.dataset(value, value + length, top=False, until_item_end=False)
                pos = value + length
        if delimited:
            raise self.fail(pos, "sequence without its delimiter")
        return pos

    def fragments(self, pos: int, top: bool) -> int:
        count = 0
        while True:
            tag, _, length, value = self.header(pos)
            if tag == _SEQ_END:
                if count < 2:  # the basic offset table plus at least one fragment
                    raise self.fail(pos, "encapsulated Pixel Data without fragments")
                if top:  # not an icon's, nested in a sequence item
                    self.encapsulated = True
                    self.pixel_bytes = count
                return value
            if tag != _ITEM or length == _UNDEFINED or value + length > self.end:
                raise self.fail(pos, "broken encapsulated Pixel Data fragment")
            count += 1
            pos = value + length

    def collect(self, tag: int, value: int, length: int) -> None:
        if tag in _TEXT_TAGS:
            raw = bytes(self.data[value : value + length])
            text = raw.decode("ascii", errors="replace")
            if tag in _UID_TAGS:
                # Only trailing padding: a leading NUL or space stays in the file (and in the
                # results), so it must reach the UID check, not be stripped here.
                self.text[_TEXT_TAGS[tag]] = text.rstrip("\x00 ")
            else:
                self.text[_TEXT_TAGS[tag]] = text.strip("\x00 ")
        elif tag in _US_TAGS and length == 2:
            (self.us[_US_TAGS[tag]],) = self.u16.unpack_from(self.data, value)
        elif tag == _PIXEL_DATA:
            self.pixel_bytes = length


def read_header(
    stream: bytes | memoryview,
    transfer_syntax: str,
    *,
    max_inflated_bytes: int = NodeConfig.max_instance_bytes,
) -> Header:
    """Check ``stream`` (the data set as sent, without file meta) and return its header.

    A deflated data set may inflate to at most ``max_inflated_bytes``.
    Raises :class:`RejectedInstanceError` with the DICOM status to answer.
    """
    data: bytes | bytearray | memoryview = stream
    if transfer_syntax == DEFLATED:
        data = _inflate(stream, max_inflated_bytes)
    reader = _Reader(
        data,
        little=transfer_syntax != EXPLICIT_VR_BE,
        implicit=transfer_syntax == IMPLICIT_VR_LE,
    )
    if len(data) == 0:
        raise RejectedInstanceError(CANNOT_UNDERSTAND, "empty data set")
    reader.dataset(0, reader.end, top=True, until_item_end=False)
    text = reader.text
    missing = [
        name
        for name in ("sop_class_uid", "sop_instance_uid", "study_uid", "series_uid")
        if not text.get(name)
    ]
    if missing:
        raise RejectedInstanceError(
            MISSING_UIDS, f"missing identifying attributes: {', '.join(missing)}"
        )
    for name in ("sop_class_uid", "sop_instance_uid", "study_uid", "series_uid"):
        if not is_valid_uid(text[name]):
            raise RejectedInstanceError(INVALID_UID, f"{name} is not a valid UID: {text[name]!r}")
    _check_pixels(reader, transfer_syntax)
    return Header(
        sop_class_uid=text["sop_class_uid"],
        sop_instance_uid=text["sop_instance_uid"],
        study_uid=text["study_uid"],
        series_uid=text["series_uid"],
        modality=text.get("modality", ""),
        manufacturer=text.get("manufacturer", ""),
        series_description=text.get("series_description", ""),
        has_pixel_data=reader.pixel_bytes is not None,
    )


def _inflate(stream: bytes | memoryview, limit: int) -> bytearray:
    # A few MB of deflate can inflate to GB: stop one byte past the limit, and grow one
    # buffer a chunk at a time so that the peak stays near the limit, not twice it.
    inflater = zlib.decompressobj(wbits=-15)
    data = bytearray()
    pending: bytes | memoryview = stream
    try:
        while not inflater.eof:
            wanted = min(_INFLATE_CHUNK, limit + 1 - len(data))
            chunk = inflater.decompress(pending, wanted)
            data += chunk
            if len(data) > limit:
                raise RejectedInstanceError(
                    OUT_OF_RESOURCES, f"inflated data set exceeds the size limit ({limit} bytes)"
                )
            pending = inflater.unconsumed_tail
            if not pending and len(chunk) < wanted:
                break  # all input used and nothing held back: the stream stops short
    except zlib.error as exc:
        raise RejectedInstanceError(
            CANNOT_UNDERSTAND, f"deflated data set does not inflate: {exc}"
        ) from None
    if not inflater.eof:
        raise RejectedInstanceError(
            CANNOT_UNDERSTAND, "deflated data set does not inflate: truncated stream"
        )
    return data


def _check_pixels(reader: _Reader, transfer_syntax: str) -> None:
    if reader.pixel_bytes is None:
        return
    if reader.encapsulated:
        if transfer_syntax in _NATIVE:
            raise RejectedInstanceError(
                CANNOT_UNDERSTAND, "encapsulated Pixel Data in a native transfer syntax"
            )
        return
    if transfer_syntax not in _NATIVE:
        raise RejectedInstanceError(
            CANNOT_UNDERSTAND, "native Pixel Data in a compressed transfer syntax"
        )
    us = reader.us
    if not all(k in us for k in ("rows", "columns", "bits_allocated")):
        raise RejectedInstanceError(
            DOES_NOT_MATCH_SOP_CLASS, "Pixel Data without Rows, Columns or Bits Allocated"
        )
    try:
        frames = int(reader.text.get("number_of_frames") or 1)
    except ValueError:
        frames = 0
    # 0 or fewer frames (or rows, columns, bits) made any Pixel Data long enough: a
    # truncated instance was acknowledged.
    if frames < 1:
        raise RejectedInstanceError(
            CANNOT_UNDERSTAND, f"invalid Number of Frames {reader.text['number_of_frames']!r}"
        )
    empty = [k for k in ("rows", "columns", "bits_allocated") if us[k] == 0]
    if empty:
        raise RejectedInstanceError(
            CANNOT_UNDERSTAND, f"Pixel Data of an image with {empty[0].replace('_', ' ')} 0"
        )
    samples = us["rows"] * us["columns"] * us.get("samples_per_pixel", 1) * frames
    if reader.text.get("photometric_interpretation") == "YBR_FULL_422":
        samples = samples // 3 * 2  # PS3.3 C.7.6.3.1.2: two chroma samples per two pixels
    bits = samples * us["bits_allocated"]
    expected = (bits + 7) // 8
    if reader.pixel_bytes < expected:
        raise RejectedInstanceError(
            CANNOT_UNDERSTAND,
            f"Pixel Data holds {reader.pixel_bytes} bytes, the image needs {expected}",
        )


def is_valid_uid(uid: str) -> bool:
    """PS3.5 9.1 UID syntax: 1-64 characters, digits in dot-separated components (a
    leading zero, which 9.1 forbids too, is let through: older devices write them)."""
    if not 0 < len(uid) <= 64:
        return False
    parts = uid.split(".")
    return all(p.isdigit() and p.isascii() for p in parts)
