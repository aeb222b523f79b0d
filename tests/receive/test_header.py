from __future__ import annotations

import copy
import struct
import tracemalloc
import zlib

import pytest
from helpers import tiny_image
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from dicom_node.errors import RejectedInstanceError
from dicom_node.receive.header import is_valid_uid, read_header


def encode(ds: Dataset, syntax: str) -> bytes:
    """The data set as a C-STORE carries it: no preamble, no file meta."""
    fp = DicomBytesIO()
    fp.is_little_endian = syntax != ExplicitVRBigEndian
    fp.is_implicit_VR = syntax == ImplicitVRLittleEndian
    write_dataset(fp, ds)
    data = fp.getvalue()
    if syntax == DeflatedExplicitVRLittleEndian:
        packer = zlib.compressobj(9, zlib.DEFLATED, -15)
        data = packer.compress(data) + packer.flush()
    return data


def with_sequence(ds: Dataset) -> Dataset:
    item = Dataset()
    item.CodeValue = "399348003"
    item.CodingSchemeDesignator = "SCT"
    nested = Dataset()
    nested.CodeMeaning = "nested"
    item.ConceptNameCodeSequence = Sequence([nested])
    ds.ViewCodeSequence = Sequence([item])
    return ds


@pytest.mark.parametrize(
    "syntax",
    [
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    ],
)
def test_native_syntaxes_read_identifying_attributes(syntax: str) -> None:
    ds = with_sequence(tiny_image(transfer_syntax=syntax))
    ds.Manufacturer = "Acme"
    ds.SeriesDescription = "AP PELVIS"
    header = read_header(encode(ds, syntax), syntax)
    assert header.sop_instance_uid == ds.SOPInstanceUID
    assert header.study_uid == ds.StudyInstanceUID
    assert header.series_uid == ds.SeriesInstanceUID
    assert header.sop_class_uid == ds.SOPClassUID
    assert (header.modality, header.manufacturer, header.series_description) == (
        "CR",
        "Acme",
        "AP PELVIS",
    )
    assert header.has_pixel_data


def read_like_pydicom(data: bytes) -> Dataset:
    return read_dataset(DicomBytesIO(data), is_implicit_VR=False, is_little_endian=True)


def assert_same_identity(data: bytes, syntax: str) -> None:
    header = read_header(data, syntax)
    ds = read_like_pydicom(data)
    assert (header.sop_class_uid, header.sop_instance_uid) == (ds.SOPClassUID, ds.SOPInstanceUID)
    assert (header.study_uid, header.series_uid) == (ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert header.modality == ds.Modality


def with_un_sequence(ds: Dataset) -> Dataset:
    """A private sequence as an archive without its dictionary passes it on: UN, undefined length."""
    holder = with_sequence(Dataset())
    second = Dataset()
    second.CodeValue = "12345"  # a defined-length item
    holder.ViewCodeSequence.append(second)
    holder["ViewCodeSequence"].is_undefined_length = True
    holder.ViewCodeSequence[0].is_undefined_length_sequence_item = True
    holder.ViewCodeSequence[0]["ConceptNameCodeSequence"].is_undefined_length = True
    items = encode(holder, ImplicitVRLittleEndian)[8:-8]  # less the header and the delimiter
    ds.add_new(0x00090010, "LO", "ACME 1.0")
    ds.add_new(0x00091001, "UN", items)
    ds[0x00091001].is_undefined_length = True  # pydicom writes the delimiter
    return ds


def test_undefined_length_un_holds_implicit_vr_items() -> None:
    ds = with_un_sequence(tiny_image())
    data = encode(ds, ExplicitVRLittleEndian)
    assert_same_identity(data, ExplicitVRLittleEndian)
    assert len(read_like_pydicom(data)[0x00091001].value) == 2  # pydicom reads the items too
    # The items are walked, not skipped: a garbled item delimiter is refused.
    assert data.index(b"\xfe\xff\x0d\xe0") > data.index(b"ACME 1.0")
    broken = data.replace(b"\xfe\xff\x0d\xe0", b"\xfe\xff\x0d\xe1", 1)
    with pytest.raises(RejectedInstanceError, match=r"malformed data set") as info:
        read_header(broken, ExplicitVRLittleEndian)
    assert info.value.status == 0xC210


def test_undefined_length_un_without_its_delimiter_is_refused() -> None:
    ds = tiny_image()
    ds.add_new(0x00090010, "LO", "ACME 1.0")
    ds.add_new(0x00091001, "UN", b"")
    ds[0x00091001].is_undefined_length = True
    data = encode(ds, ExplicitVRLittleEndian)
    delimiter = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    assert delimiter in data
    with pytest.raises(RejectedInstanceError, match=r"expected a sequence item"):
        read_header(data.replace(delimiter, b""), ExplicitVRLittleEndian)


def test_undefined_length_sequences_are_walked() -> None:
    ds = with_sequence(tiny_image())
    ds.ViewCodeSequence.is_undefined_length = True
    ds.ViewCodeSequence[0].is_undefined_length_sequence_item = True
    data = encode(ds, ExplicitVRLittleEndian)
    assert read_header(data, ExplicitVRLittleEndian).study_uid == ds.StudyInstanceUID


def encapsulated(syntax: str, frames: list[bytes]) -> tuple[Dataset, bytes]:
    ds = tiny_image(transfer_syntax=syntax)
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].is_undefined_length = True
    ds["PixelData"].VR = "OB"
    return ds, encode(ds, ExplicitVRLittleEndian)


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless])
def test_encapsulated_pixel_data_is_accepted_without_decoding(syntax: str) -> None:
    ds, data = encapsulated(syntax, [b"\x01\x02\x03\x04"])
    assert read_header(data, syntax).sop_instance_uid == ds.SOPInstanceUID


def with_icon(ds: Dataset, pixels: bytes, tag: int = 0x7FE00010) -> Dataset:
    icon = Dataset()
    icon.Rows = icon.Columns = 2
    icon.SamplesPerPixel = 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.BitsAllocated = icon.BitsStored = 8
    icon.HighBit = 7
    icon.PixelRepresentation = 0
    icon[tag] = DataElement(tag, "OB", pixels, is_undefined_length=True)
    ds.IconImageSequence = Sequence([icon])
    return ds


def test_encapsulated_icon_pixel_data_is_accepted() -> None:
    ds, _ = encapsulated(RLELossless, [b"\x01\x02\x03\x04"])
    data = encode(with_icon(ds, encapsulate([b"\x05\x06"])), ExplicitVRLittleEndian)
    assert_same_identity(data, RLELossless)
    assert read_header(data, RLELossless).has_pixel_data
    # The icon's fragments are walked: one cut short is refused.
    with pytest.raises(RejectedInstanceError, match=r"broken encapsulated Pixel Data fragment"):
        read_header(
            data.replace(b"\x02\x00\x00\x00\x05\x06", b"\x02\x01\x00\x00\x05\x06"), RLELossless
        )


def test_encapsulated_icon_does_not_stand_for_the_image() -> None:
    ds = with_icon(tiny_image(), encapsulate([b"\x05\x06"]))
    del ds.PixelData
    header = read_header(encode(ds, ExplicitVRLittleEndian), RLELossless)
    assert not header.has_pixel_data


def test_undefined_length_ob_other_than_pixel_data_is_refused() -> None:
    ds, _ = encapsulated(RLELossless, [b"\x01\x02\x03\x04"])
    data = encode(with_icon(ds, encapsulate([b"\x05\x06"]), tag=0x00091010), ExplicitVRLittleEndian)
    with pytest.raises(RejectedInstanceError, match=r"undefined length on VR OB") as info:
        read_header(data, RLELossless)
    assert info.value.status == 0xC210


def test_cut_anywhere_is_refused() -> None:
    ds = with_sequence(tiny_image())
    data = encode(ds, ExplicitVRLittleEndian)
    for cut in (1, 7, 9, 30, len(data) // 2, len(data) - 300, len(data) - 1):
        with pytest.raises(
            RejectedInstanceError, match=r"malformed data set|needs|missing"
        ) as info:
            read_header(data[:cut], ExplicitVRLittleEndian)
        assert info.value.status in (0xC210, 0xC211, 0xA900)


def test_truncated_pixel_data_is_refused() -> None:
    ds = tiny_image(size=16)
    data = encode(ds, ExplicitVRLittleEndian)
    with pytest.raises(RejectedInstanceError, match=r"runs past the end") as info:
        read_header(data[:-10], ExplicitVRLittleEndian)
    assert info.value.status == 0xC210
    ds.PixelData = ds.PixelData[:100]
    with pytest.raises(
        RejectedInstanceError, match=r"Pixel Data holds 100 bytes, the image needs 512"
    ):
        read_header(encode(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian)


def test_truncated_encapsulated_pixel_data_is_refused() -> None:
    _, data = encapsulated(RLELossless, [b"\x01\x02\x03\x04"])
    with pytest.raises(
        RejectedInstanceError, match=r"truncated element header|broken encapsulated"
    ):
        read_header(data[:-8], RLELossless)
    _, empty = encapsulated(RLELossless, [])
    with pytest.raises(RejectedInstanceError, match=r"encapsulated Pixel Data without fragments"):
        read_header(empty, RLELossless)


def test_pixel_encoding_must_match_the_transfer_syntax() -> None:
    _, data = encapsulated(RLELossless, [b"\x01\x02"])
    with pytest.raises(RejectedInstanceError, match=r"encapsulated Pixel Data in a native"):
        read_header(data, ExplicitVRLittleEndian)
    native = encode(tiny_image(), ExplicitVRLittleEndian)
    with pytest.raises(RejectedInstanceError, match=r"native Pixel Data in a compressed"):
        read_header(native, RLELossless)


def test_garbage_and_empty_streams_are_refused() -> None:
    with pytest.raises(RejectedInstanceError, match=r"invalid VR"):
        read_header(b"garbage!" * 64, ExplicitVRLittleEndian)
    with pytest.raises(RejectedInstanceError, match=r"runs past the end|out of order"):
        read_header(b"\x08\x00\x18\x00\xff\xff\x00\x10" * 8, ImplicitVRLittleEndian)
    with pytest.raises(RejectedInstanceError, match=r"empty data set"):
        read_header(b"", ExplicitVRLittleEndian)
    with pytest.raises(RejectedInstanceError, match=r"deflated data set does not inflate"):
        read_header(b"\xff\xff\xff\xff" * 4, DeflatedExplicitVRLittleEndian)


def zero_image(size: int) -> tuple[Dataset, bytes]:
    """A large image of zeros: its deflated stream is a small fraction of its size."""
    ds = tiny_image(transfer_syntax=DeflatedExplicitVRLittleEndian, size=size)
    ds.PixelData = bytes(size * size * 2)
    return ds, encode(ds, ExplicitVRLittleEndian)


def test_deflated_data_set_inflates_up_to_the_limit() -> None:
    ds, raw = zero_image(1024)
    data = encode(ds, DeflatedExplicitVRLittleEndian)
    assert len(data) * 100 < len(raw)
    header = read_header(data, DeflatedExplicitVRLittleEndian, max_inflated_bytes=len(raw))
    assert header.sop_instance_uid == ds.SOPInstanceUID
    assert header.has_pixel_data
    # A pad byte after the end of the deflate stream is ignored.
    assert (
        read_header(data + b"\x00", DeflatedExplicitVRLittleEndian).study_uid == ds.StudyInstanceUID
    )


def test_deflate_bomb_is_refused_at_the_limit() -> None:
    ds, raw = zero_image(1024)
    data = encode(ds, DeflatedExplicitVRLittleEndian)
    limit = len(raw) - 1
    with pytest.raises(
        RejectedInstanceError,
        match=rf"^inflated data set exceeds the size limit \({limit} bytes\)$",
    ) as info:
        read_header(data, DeflatedExplicitVRLittleEndian, max_inflated_bytes=limit)
    assert info.value.status == 0xA700  # as for an instance sent over node.max_instance_bytes
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = packer.compress(bytes(64 * 1024**2)) + packer.flush()
    with pytest.raises(RejectedInstanceError, match=r"exceeds the size limit \(1048576 bytes\)"):
        read_header(bomb, DeflatedExplicitVRLittleEndian, max_inflated_bytes=1024**2)


def test_truncated_deflated_data_set_is_refused() -> None:
    data = encode(tiny_image(), DeflatedExplicitVRLittleEndian)
    with pytest.raises(
        RejectedInstanceError, match=r"deflated data set does not inflate: truncated stream"
    ) as info:
        read_header(data[: len(data) // 2], DeflatedExplicitVRLittleEndian)
    assert info.value.status == 0xC210


def test_elements_out_of_order_are_refused() -> None:
    good = encode(tiny_image(), ExplicitVRLittleEndian)
    # Swap in a second copy of the first element at the end: a tag going backwards.
    first = good[: 8 + int.from_bytes(good[6:8], "little")]
    with pytest.raises(RejectedInstanceError, match=r"out of order"):
        read_header(good + first, ExplicitVRLittleEndian)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_a_file_meta_element_in_the_data_set_is_refused(syntax: str) -> None:
    # Was stored with 0x0000: behind the node's File Meta, pydicom read its Transfer Syntax
    # UID (Big Endian here) as the file's, and the study's job failed on it.
    ds = tiny_image()
    ds.add(DataElement(0x00020010, "UI", ExplicitVRBigEndian))
    with pytest.raises(
        RejectedInstanceError,
        match=r"^malformed data set at byte 0: File Meta element \(0002,0010\)",
    ) as info:
        read_header(encode(ds, syntax), syntax)
    assert info.value.status == 0xC210


def test_missing_and_invalid_uids() -> None:
    ds = tiny_image()
    del ds.StudyInstanceUID
    del ds.SeriesInstanceUID
    with pytest.raises(
        RejectedInstanceError, match=r"missing identifying attributes: study_uid, series_uid"
    ) as info:
        read_header(encode(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian)
    assert info.value.status == 0xC211
    ds = tiny_image()
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        ds.StudyInstanceUID = "1.2.3.abc"
    with pytest.raises(
        RejectedInstanceError, match=r"study_uid is not a valid UID: '1\.2\.3\.abc'"
    ) as info:
        read_header(encode(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian)
    assert info.value.status == 0xC213


def test_pixel_data_without_geometry() -> None:
    ds = tiny_image()
    del ds.Rows
    with pytest.raises(
        RejectedInstanceError, match=r"Pixel Data without Rows, Columns or Bits"
    ) as info:
        read_header(encode(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian)
    assert info.value.status == 0xA900
    ds = tiny_image()
    ds.NumberOfFrames = 2
    element = b"\x28\x00\x08\x00IS\x02\x002 "
    data = encode(ds, ExplicitVRLittleEndian).replace(element, element[:-2] + b"x ")
    with pytest.raises(RejectedInstanceError, match=r"invalid Number of Frames 'x'"):
        read_header(data, ExplicitVRLittleEndian)


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("NumberOfFrames", "0", r"^invalid Number of Frames '0'$"),
        ("NumberOfFrames", "-3", r"^invalid Number of Frames '-3'$"),
        ("Rows", 0, r"^Pixel Data of an image with rows 0$"),
        ("Columns", 0, r"^Pixel Data of an image with columns 0$"),
        ("BitsAllocated", 0, r"^Pixel Data of an image with bits allocated 0$"),
    ],
)
def test_a_truncated_image_is_refused_whatever_its_frame_count_says(
    keyword: str, value: str | int, message: str
) -> None:
    # Two bytes of Pixel Data for a 16 x 16 image were acknowledged (0x0000) when Number of
    # Frames read 0 or -3: the bytes it needed came out at 0 or fewer.
    ds = tiny_image()
    ds.PixelData = b"\x00\x00"
    setattr(ds, keyword, value)
    with pytest.raises(RejectedInstanceError, match=message) as info:
        read_header(encode(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian)
    assert info.value.status == 0xC210


def test_item_delimiter_outside_an_item() -> None:
    data = encode(tiny_image(), ExplicitVRLittleEndian)
    with pytest.raises(RejectedInstanceError, match=r"item delimiter outside an item"):
        read_header(data + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00", ExplicitVRLittleEndian)


def test_uid_grammar() -> None:
    assert is_valid_uid("1.2.840.10008.5.1.4.1.1.1")
    assert not is_valid_uid("")
    assert not is_valid_uid("1." + "2" * 70)
    assert not is_valid_uid("1..2")
    assert not is_valid_uid("../../etc")
    assert not is_valid_uid("1.2.٣")
    assert is_valid_uid("1.2.0003.04")  # leading zeros: accepted, as documented


def test_native_ybr_full_422_needs_two_thirds_of_three_samples() -> None:
    ds = tiny_image(size=10)  # 10 x 10
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "YBR_FULL_422"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PlanarConfiguration = 7, 0
    ds.PixelData = bytes(10 * 10 * 2)  # Y Y Cb Cr for every two pixels
    header = read_header(encode(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian)
    assert header.has_pixel_data  # was refused: "holds 200 bytes, the image needs 300"
    ds.PixelData = bytes(198)
    with pytest.raises(RejectedInstanceError, match=r"holds 198 bytes, the image needs 200$"):
        read_header(encode(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_sequences_nested_beyond_the_limit_are_refused_not_a_crash(syntax: str) -> None:
    def nested(levels: int) -> bytes:
        """tiny_image without its pixels, then Content Sequences nested ``levels`` deep
        (undefined lengths, written by hand: pydicom's writer recurses too)."""
        ds = tiny_image()
        del ds.PixelData
        sq = b"\x40\x00\x30\xa7" + (b"" if syntax == ImplicitVRLittleEndian else b"SQ\x00\x00")
        opened = sq + b"\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
        closed = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
        return encode(ds, syntax) + opened * levels + closed * levels

    assert read_header(nested(32), syntax).sop_instance_uid
    with pytest.raises(RejectedInstanceError, match=r"nested deeper than 32 levels") as info:
        read_header(nested(33), syntax)  # at 128, a stored instance's results failed (below)
    assert info.value.status == 0xC210
    with pytest.raises(RejectedInstanceError, match=r"nested deeper than 32 levels"):
        read_header(nested(600), syntax)  # was: RecursionError, answered 0x0110


def test_what_the_walker_accepts_the_results_can_copy() -> None:
    # The results deep-copy patient-module sequences from the image's header; pydicom's
    # Datasets overflow Python's recursion there past ~70 levels (a job failed).
    top = inner = Dataset()
    for _ in range(32):
        item = Dataset()
        inner.ContentSequence = Sequence([item])
        inner = item
    assert copy.deepcopy(top) == top


def other_ids(levels: int) -> Dataset:
    """Other Patient IDs Sequences (a standard SQ) nested ``levels`` deep, defined lengths."""
    top = inner = Dataset()
    for _ in range(levels):
        item = Dataset()
        item.PatientID = "OTHER"
        inner.OtherPatientIDsSequence = Sequence([item])
        inner = item
    return top


def with_element(ds: Dataset, tag: int, raw: bytes, syntax: str) -> bytes:
    """``ds`` encoded with the hand-made element ``raw`` in its place (tag order)."""
    return encode(ds[:tag], syntax) + raw + encode(ds[tag + 1 :], syntax)


def implicit_value(ds: Dataset) -> bytes:
    """The value of the only element of ``ds``, encoded Implicit VR Little Endian."""
    return encode(ds, ImplicitVRLittleEndian)[8:]


OTHER_IDS = 0x00101002


def implicit_other_ids(value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0010, 0x1002, len(value)) + value


def un_other_ids(value: bytes) -> bytes:
    """Other Patient IDs Sequence as an archive without its dictionary passes it on: UN."""
    return struct.pack("<HH2sHI", 0x0010, 0x1002, b"UN", 0, len(value)) + value


def test_defined_length_sequences_in_implicit_vr_are_walked_to_the_depth_limit() -> None:
    # Implicit VR has no VR to say SQ: a 100-deep defined-length sequence was skipped as an
    # opaque value, acknowledged 0x0000, and its job died with RecursionError.
    ds = tiny_image()
    ds.update(other_ids(32))
    data = encode(ds, ImplicitVRLittleEndian)
    assert b"\xfe\xff\xdd\xe0" not in data  # defined lengths throughout
    assert read_header(data, ImplicitVRLittleEndian).sop_instance_uid == ds.SOPInstanceUID
    for levels in (33, 100):
        ds.update(other_ids(levels))
        with pytest.raises(RejectedInstanceError, match=r"nested deeper than 32 levels") as info:
            read_header(encode(ds, ImplicitVRLittleEndian), ImplicitVRLittleEndian)
        assert info.value.status == 0xC210


def test_garbled_defined_length_sequence_in_implicit_vr_is_refused() -> None:
    # Was acknowledged: the garbled bytes ended up in the results.
    ds = tiny_image()
    value = implicit_value(other_ids(1))
    garbled = (b"\x01\x02\x03\x04" * len(value))[: len(value)]
    data = with_element(ds, OTHER_IDS, implicit_other_ids(garbled), ImplicitVRLittleEndian)
    with pytest.raises(RejectedInstanceError, match=r"expected a sequence item") as info:
        read_header(data, ImplicitVRLittleEndian)
    assert info.value.status == 0xC210
    good = with_element(ds, OTHER_IDS, implicit_other_ids(value), ImplicitVRLittleEndian)
    assert read_header(good, ImplicitVRLittleEndian).study_uid == ds.StudyInstanceUID


def test_opaque_values_of_tags_not_known_as_sequences_are_not_walked() -> None:
    # A private tag (no dictionary VR) or a standard non-SQ tag holds any bytes, as pydicom
    # reads them: not refused as a broken sequence.
    ds = tiny_image()
    ds.add_new(0x00090010, "LO", "ACME 1.0")
    ds.add_new(0x00091001, "OB", b"\x01\x02\x03\x04")
    ds.add_new(0x00091002, "UN", b"\xfe\xff\x00\xe0\x01\x02")  # looks like an item
    ds.PatientComments = "\xfe\xff\x00\xe0"
    for syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
        assert read_header(encode(ds, syntax), syntax).study_uid == ds.StudyInstanceUID


def test_defined_length_un_of_a_sequence_tag_is_walked_as_implicit_vr() -> None:
    ds = tiny_image()
    value = implicit_value(other_ids(2))
    data = with_element(ds, OTHER_IDS, un_other_ids(value), ExplicitVRLittleEndian)
    assert_same_identity(data, ExplicitVRLittleEndian)
    read = read_like_pydicom(data)  # pydicom reads it as the sequence its dictionary says
    assert read[OTHER_IDS].VR == "SQ"
    assert read.OtherPatientIDsSequence[0].OtherPatientIDsSequence[0].PatientID == "OTHER"
    deep = with_element(
        ds, OTHER_IDS, un_other_ids(implicit_value(other_ids(100))), ExplicitVRLittleEndian
    )
    with pytest.raises(RejectedInstanceError, match=r"nested deeper than 32 levels") as info:
        read_header(deep, ExplicitVRLittleEndian)  # was acknowledged 0x0000
    assert info.value.status == 0xC210
    garbled = (b"\x01\x02\x03\x04" * len(value))[: len(value)]
    with pytest.raises(RejectedInstanceError, match=r"expected a sequence item"):
        read_header(
            with_element(ds, OTHER_IDS, un_other_ids(garbled), ExplicitVRLittleEndian),
            ExplicitVRLittleEndian,
        )


def test_a_un_sequence_is_walked_as_pydicom_reads_it() -> None:
    # Items in Explicit VR inside the UN (a misencoding some archives write): pydicom reads
    # them (it looks at the first item), so the walker accepts them, as before it walked
    # UN values at all; and a UN value of 0xFFFF bytes or more pydicom leaves as bytes.
    ds = tiny_image()
    explicit = encode(other_ids(2), ExplicitVRLittleEndian)[12:]  # the value after its header
    data = with_element(ds, OTHER_IDS, un_other_ids(explicit), ExplicitVRLittleEndian)
    assert read_like_pydicom(data).OtherPatientIDsSequence[0].PatientID == "OTHER"
    assert_same_identity(data, ExplicitVRLittleEndian)
    large = b"\x01\x02\x03\x04" * 0x4000  # 65536 bytes: no sequence to pydicom either
    data = with_element(ds, OTHER_IDS, un_other_ids(large), ExplicitVRLittleEndian)
    assert read_like_pydicom(data)[OTHER_IDS].VR == "UN"
    assert_same_identity(data, ExplicitVRLittleEndian)
    # Neither implicit nor explicit items: refused, saying why as Implicit VR (PS3.5 6.2.2).
    garbled = b"\xfe\xff\x00\xe0\x08\x00\x00\x00" + b"\x01" * 8
    with pytest.raises(RejectedInstanceError, match=r"runs past the end|ends inside"):
        read_header(
            with_element(ds, OTHER_IDS, un_other_ids(garbled), ExplicitVRLittleEndian),
            ExplicitVRLittleEndian,
        )


def test_a_un_sequence_in_big_endian_is_read_in_its_byte_order() -> None:
    # pydicom reads a UN value of a sequence tag in the data set's byte order: Implicit VR
    # Little Endian items in an Explicit VR Big Endian data set became an item of garbage
    # (an Escape Triplet, no Patient ID), which the walker had accepted as little endian.
    ds = tiny_image()
    items = implicit_value(other_ids(1))
    raw = struct.pack(">HH2sHI", 0x0010, 0x1002, b"UN", 0, len(items)) + items
    data = with_element(ds, OTHER_IDS, raw, ExplicitVRBigEndian)
    with pytest.raises(RejectedInstanceError, match=r"expected a sequence item") as info:
        read_header(data, ExplicitVRBigEndian)
    assert info.value.status == 0xC210


def test_an_item_may_not_run_past_its_defined_length_sequence() -> None:
    # An undefined-length item inside a 16-byte UN sequence: its delimiter lies beyond the
    # sequence's value, where the data set goes on in Explicit VR.
    ds = tiny_image()
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + b"\x10\x00\x20\x00\x00\x00\x00\x00"
    data = with_element(ds, OTHER_IDS, un_other_ids(item), ExplicitVRLittleEndian)
    with pytest.raises(
        RejectedInstanceError, match=r"data set ends inside an element or item"
    ) as info:
        read_header(data, ExplicitVRLittleEndian)
    assert info.value.status == 0xC210


def content_sequence_holding(stray: bytes, syntax: str) -> bytes:
    """tiny_image without its pixels, then an undefined-length Content Sequence whose one
    undefined-length item holds ``stray`` where its data elements belong."""
    ds = tiny_image()
    del ds.PixelData
    sq = b"\x40\x00\x30\xa7" + (b"" if syntax == ImplicitVRLittleEndian else b"SQ\x00\x00")
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + stray + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    return encode(ds, syntax) + sq + b"\xff\xff\xff\xff" + item + b"\xfe\xff\xdd\xe0\0\0\0\0"


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize(
    ("stray", "message"),
    [
        (b"\xfe\xff\x00\xe0\x00\x00\x00\x00", r"item tag \(FFFE,E000\)"),
        (b"\xfe\xff\x00\xe0\x02\x00\x00\x00\x00\x00", r"item tag \(FFFE,E000\)"),
        (b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", r"sequence delimiter \(FFFE,E0DD\)"),
        (b"\xfe\xff\x01\xe0\x00\x00\x00\x00", r"delimitation tag \(FFFE,E001\)"),
    ],
)
def test_group_fffe_tags_where_a_data_element_belongs_are_refused(
    syntax: str, stray: bytes, message: str
) -> None:
    # Were read as ordinary elements and acknowledged; the job then failed on them
    # (NotImplementedError). At the top level and inside an item alike.
    data = encode(tiny_image(), syntax)
    with pytest.raises(RejectedInstanceError, match=message + " where a data element belongs"):
        read_header(data + stray, syntax)
    with pytest.raises(RejectedInstanceError, match=message) as info:
        read_header(content_sequence_holding(stray, syntax), syntax)
    assert info.value.status == 0xC210
    # The item delimiter that ends an undefined-length item is still where it belongs.
    assert read_header(content_sequence_holding(b"", syntax), syntax).sop_instance_uid


def with_study_uid(ds: Dataset, value: bytes) -> bytes:
    raw = struct.pack("<HH2sH", 0x0020, 0x000D, b"UI", len(value)) + value
    return with_element(ds, 0x0020000D, raw, ExplicitVRLittleEndian)


@pytest.mark.parametrize("padding", [b"\x00", b" "])
def test_a_uid_with_leading_padding_is_refused_not_stripped(padding: bytes) -> None:
    # A leading NUL was stripped here but stayed in the file: the study was indexed under
    # the clean UID while the results copied the invalid one.
    ds = tiny_image()
    uid = ds.StudyInstanceUID.encode()
    value = padding + uid + (b"\x00" if len(uid) % 2 == 0 else b"")
    with pytest.raises(
        RejectedInstanceError, match=r"^study_uid is not a valid UID: '(\\x00| )1\.2\."
    ) as info:
        read_header(with_study_uid(ds, value), ExplicitVRLittleEndian)
    assert info.value.status == 0xC213
    # Trailing padding (NUL as UI pads, or a space) is still not part of the UID.
    for pad in (b"\x00", b" "):
        value = uid + pad * (2 - len(uid) % 2)
        header = read_header(with_study_uid(ds, value), ExplicitVRLittleEndian)
        assert header.study_uid == ds.StudyInstanceUID


def test_inflating_a_bomb_peaks_near_the_limit_not_twice_it() -> None:
    # zlib asked for limit + 1 bytes at once builds them in blocks and joins them: 652 KB of
    # deflate against a 512 MiB limit cost 1 GiB.
    limit = 64 * 1024**2
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(limit)
    bomb = packer.compress(zeros) + packer.compress(zeros) + packer.flush()
    del zeros
    tracemalloc.start()
    try:
        with pytest.raises(
            RejectedInstanceError,
            match=rf"^inflated data set exceeds the size limit \({limit} bytes\)$",
        ) as info:
            read_header(bomb, DeflatedExplicitVRLittleEndian, max_inflated_bytes=limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.status == 0xA700
    assert peak < 1.3 * limit


def test_deflated_data_set_of_many_chunks_inflates_whole_or_is_refused_as_truncated() -> None:
    ds, raw = zero_image(2048)  # 8 MiB inflated: several chunks
    data = encode(ds, DeflatedExplicitVRLittleEndian)
    header = read_header(data, DeflatedExplicitVRLittleEndian, max_inflated_bytes=len(raw))
    assert header.sop_instance_uid == ds.SOPInstanceUID
    for cut in (len(data) // 2, len(data) - 1):
        with pytest.raises(
            RejectedInstanceError, match=r"deflated data set does not inflate: truncated stream"
        ) as info:
            read_header(data[:cut], DeflatedExplicitVRLittleEndian)
        assert info.value.status == 0xC210
