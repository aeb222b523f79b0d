"""The Storage SCP against real clients: statuses, spool contents and the index agree."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from dicom_clients import dataset_bytes, send_files, storescu
from helpers import tiny_image
from pydicom import dcmread
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    generate_uid,
)
from pynetdicom import AE

from dicom_node.identity import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    MANUFACTURER,
)
from dicom_node.node import Node
from dicom_node.synthetic.dcmtk import storescu_profile

NATIVE = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
]
StartNode = Callable[..., Node]


def spooled(node: Node, study: str, sop: str) -> Path:
    assert node.spool is not None
    return node.spool.instances / study / f"{sop}.dcm"


def write(ds_list: list, folder: Path) -> list[Path]:  # type: ignore[type-arg]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in ds_list:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.mark.parametrize("syntax", NATIVE)
def test_pynetdicom_store_is_byte_identical_and_indexed(
    start_node: StartNode, tmp_path: Path, syntax: str
) -> None:
    node = start_node()
    study = "1.2.826.0.1.3680043.8.498.1"
    files = write([tiny_image(study, transfer_syntax=syntax) for _ in range(3)], tmp_path / "in")
    assert send_files(node.port, files) == [0, 0, 0]
    assert node.state is not None
    for path in files:
        sop = dcmread(path).SOPInstanceUID
        stored = spooled(node, study, sop)
        assert dataset_bytes(stored) == dataset_bytes(path)
        meta = dcmread(stored).file_meta
        assert meta.TransferSyntaxUID == syntax
        assert meta.SourceApplicationEntityTitle == "PACS"
        assert node.state.indexed(sop).path == f"instances/{study}/{sop}.dcm"
    [summary] = node.state.studies()
    assert (summary.study_uid, summary.instance_count) == (study, 3)


@pytest.mark.parametrize("syntax", NATIVE)
def test_storescu_store_is_byte_identical(
    start_node: StartNode, tmp_path: Path, dcmtk_env: dict[str, str], syntax: str
) -> None:

    node = start_node()
    files = write([tiny_image(transfer_syntax=syntax) for _ in range(2)], tmp_path / "in")
    storescu(node.port, files, dcmtk_env, storescu_profile(tmp_path / "scu.cfg", [syntax]))
    for path in files:
        ds = dcmread(path)
        stored = spooled(node, ds.StudyInstanceUID, ds.SOPInstanceUID)
        assert dcmread(stored).file_meta.TransferSyntaxUID == syntax
        assert dataset_bytes(stored) == dataset_bytes(path)


def test_duplicates_are_idempotent_and_changes_replace(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start_node()
    ds = tiny_image()
    [path] = write([ds], tmp_path / "a")
    assert send_files(node.port, [path, path]) == [0, 0]
    assert send_files(node.port, [path], calling_ae="OTHER_PACS") == [0]
    assert node.state is not None
    assert node.state.instance_count() == 1
    assert len(node.state.studies()) == 1
    spooled_meta = dcmread(spooled(node, ds.StudyInstanceUID, ds.SOPInstanceUID)).file_meta
    assert spooled_meta.SourceApplicationEntityTitle == "PACS"  # identical: not rewritten
    ds.SeriesDescription = "corrected"
    [changed] = write([ds], tmp_path / "b")
    assert send_files(node.port, [changed]) == [0]
    assert dataset_bytes(spooled(node, ds.StudyInstanceUID, ds.SOPInstanceUID)) == dataset_bytes(
        changed
    )
    assert node.state.instance_count() == 1


def test_same_sop_instance_moved_to_another_study_leaves_no_orphan(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start_node()
    ds = tiny_image("1.2.3.1")
    [first] = write([ds], tmp_path / "a")
    ds.StudyInstanceUID = "1.2.3.2"
    [second] = write([ds], tmp_path / "b")
    assert send_files(node.port, [first, second]) == [0, 0]
    assert not spooled(node, "1.2.3.1", ds.SOPInstanceUID).exists()
    assert spooled(node, "1.2.3.2", ds.SOPInstanceUID).exists()


def test_a_store_holds_its_study_lock_while_it_writes_and_indexes(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start_node()
    assert node.spool is not None and node.state is not None
    study = "1.2.826.0.1.3680043.8.498.61"
    files = write([tiny_image(study)], tmp_path / "in")
    statuses: list[list[int]] = []
    with node.spool.study_lock(study):  # as a purge of the study holds it
        sending = threading.Thread(target=lambda: statuses.append(send_files(node.port, files)))
        sending.start()
        time.sleep(0.5)
        assert statuses == [] and node.state.instance_count() == 0  # waits, unacknowledged
        assert not (node.spool.instances / study).exists()
    sending.join(10)
    assert statuses == [[0]]
    assert node.state.instance_count() == 1


def test_an_enhanced_multi_frame_ct_is_stored_and_counts_as_one_instance(
    start_node: StartNode, tmp_path: Path
) -> None:
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    from dicom_node.synthetic import StudyIdentity, make_ct_series

    volume = np.zeros((4, 8, 8))
    slices = make_ct_series(volume, identity=StudyIdentity.synthetic(3))
    series = str(slices[0].SeriesInstanceUID)
    sop = generate_uid()
    image = LegacyConvertedEnhancedCTImage(slices, series, 1, sop, 1)
    [path] = write([image], tmp_path / "in")
    node = start_node()
    assert send_files(node.port, [path]) == [0]
    stored = spooled(node, str(image.StudyInstanceUID), sop)
    assert dataset_bytes(stored) == dataset_bytes(path)
    assert dcmread(stored).SOPClassUID == "1.2.840.10008.5.1.4.1.1.2.2"


def test_own_outputs_are_accepted_and_not_processed(start_node: StartNode, tmp_path: Path) -> None:
    node = start_node()
    sc = tiny_image(sop_class="1.2.840.10008.5.1.4.1.1.7")
    sc.Manufacturer = MANUFACTURER
    [path] = write([sc], tmp_path)
    assert send_files(node.port, [path]) == [0]
    assert node.state is not None
    assert node.state.instance_count() == 1
    assert node.state.studies() == []  # no study, no timer, no job


def test_malformed_inputs_fail_with_a_reason_and_the_node_keeps_serving(
    start_node: StartNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node()
    good = tiny_image()
    [valid] = write([good], tmp_path / "ok")
    data = valid.read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()
    truncated = bad / "truncated.dcm"
    truncated.write_bytes(data[:-100])
    garbage = bad / "garbage.dcm"
    garbage.write_bytes(data[: len(data) - len(dataset_bytes(valid))] + b"\xde\xad\xbe\xef" * 50)
    no_study = tiny_image()
    del no_study.StudyInstanceUID
    [missing] = write([no_study], bad / "m")
    mismatch = tiny_image()
    [wrong_class] = write([mismatch], bad / "w")
    wrong_class.write_bytes(
        wrong_class.read_bytes().replace(
            b"1.2.840.10008.5.1.4.1.1.1\x00", b"1.2.840.10008.5.1.4.1.1.2\x00", 1
        )
    )  # file meta now says CT, the data set still says CR
    with caplog.at_level(logging.WARNING, logger="dicom_node"):
        statuses = send_files(node.port, [truncated, garbage, missing, wrong_class, valid])
    assert statuses == [0xC210, 0xC210, 0xC211, 0xA900, 0x0000]
    text = caplog.text
    assert "runs past the end" in text
    assert "invalid VR" in text
    assert "missing identifying attributes: study_uid" in text
    assert "differs from the request's" in text
    assert "PHANTOM" not in text  # logs never carry patient names or IDs
    assert node.state is not None
    assert node.state.instance_count() == 1
    assert spooled(node, good.StudyInstanceUID, good.SOPInstanceUID).exists()
    assert node.spool is not None
    assert list(node.spool.tmp.iterdir()) == []


def test_disk_guard_refuses_with_a700_and_leaves_nothing(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start_node(storage__min_free_bytes=2**60)
    [path] = write([tiny_image()], tmp_path)
    assert send_files(node.port, [path]) == [0xA700]
    assert node.spool is not None
    assert list(node.spool.instances.iterdir()) == []
    assert list(node.spool.tmp.iterdir()) == []
    assert node.state is not None
    assert node.state.instance_count() == 0


def test_error_comment_explains_the_refusal(start_node: StartNode) -> None:
    node = start_node(storage__min_free_bytes=2**60)
    ae = AE("PACS")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1", ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="TRIAGE")
    try:
        status = assoc.send_c_store(tiny_image())
    finally:
        assoc.release()
    assert status.Status == 0xA700
    assert "storage.min_free_bytes" in status.ErrorComment or "bytes free" in status.ErrorComment


def test_verification(start_node: StartNode, dcmtk_env: dict[str, str]) -> None:
    from helpers import run_tool

    node = start_node()
    result = run_tool(
        ["echoscu", "-aet", "PACS", "-aec", "TRIAGE", "127.0.0.1", str(node.port)], dcmtk_env
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("proposed", "accepted"),
    [
        # A PACS that stores J2K lossless and offers fallbacks in the same context keeps
        # its compression (was: Implicit VR, so the PACS had to decompress every image).
        ([JPEG2000Lossless, ExplicitVRLittleEndian, ImplicitVRLittleEndian], JPEG2000Lossless),
        ([ImplicitVRLittleEndian, JPEGLosslessSV1], JPEGLosslessSV1),
        # Never lossy where the caller offers uncompressed: no loss made for the node.
        ([JPEGBaseline8Bit, ExplicitVRLittleEndian, ImplicitVRLittleEndian],
         ExplicitVRLittleEndian),
        ([ImplicitVRLittleEndian, ExplicitVRLittleEndian], ExplicitVRLittleEndian),
        ([JPEGBaseline8Bit], JPEGBaseline8Bit),  # an image already lossy: as it is
    ],
)  # fmt: skip
def test_one_context_of_several_syntaxes_gets_the_nodes_preference(
    start_node: StartNode, proposed: list[str], accepted: str
) -> None:
    node = start_node()
    ae = AE("PACS")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1", proposed)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="TRIAGE")
    try:
        assert assoc.is_established
        (context,) = assoc.accepted_contexts
        assert context.transfer_syntax[0] == accepted
        # The node names itself as its conformance statement says (was pynetdicom's).
        assert assoc.acceptor.implementation_class_uid == IMPLEMENTATION_CLASS_UID
        assert assoc.acceptor.implementation_version_name == IMPLEMENTATION_VERSION_NAME
    finally:
        assoc.release()


def factory_files(folder: Path) -> list[Path]:
    """DX, CR and a CT slice in every transfer syntax the node accepts."""
    import numpy as np

    from dicom_node.synthetic import (
        TRANSFER_SYNTAXES,
        StudyIdentity,
        make_cr,
        make_ct_series,
        make_dx,
        write,
    )

    folder.mkdir(parents=True, exist_ok=True)
    identity = StudyIdentity.synthetic(7)
    image = (np.add.outer(np.arange(48), np.arange(40)) * 37 % 4000).astype(np.uint16)
    paths = []
    for n, syntax in enumerate(TRANSFER_SYNTAXES):
        objects = [
            make_dx(
                image,
                identity=identity,
                view="LATERAL",
                laterality="L",
                instance_number=n + 1,
                transfer_syntax=syntax,
            ),
            make_cr(
                image,
                identity=identity,
                photometric="MONOCHROME1",
                instance_number=n + 1,
                transfer_syntax=syntax,
            ),
        ]
        if syntax != "1.2.840.10008.1.2.4.50":  # CT needs >= 12 bits; baseline JPEG has 8
            volume = np.stack([image - 1000.0])
            objects += make_ct_series(volume, identity=identity, transfer_syntax=syntax)
        for ds in objects:
            paths.append(write(ds, folder / f"{ds.Modality}-{n:02d}.dcm"))
    return paths


def assert_spooled_unchanged(node: Node, files: list[Path]) -> None:
    assert node.state is not None
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        stored = spooled(node, ds.StudyInstanceUID, ds.SOPInstanceUID)
        assert (
            dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID
            == ds.file_meta.TransferSyntaxUID
        )
        assert dataset_bytes(stored) == dataset_bytes(path), path.name
        assert node.state.indexed(ds.SOPInstanceUID).path == str(
            stored.relative_to(node.spool.root)
        )  # type: ignore[union-attr]
    assert node.state.instance_count() == len(files)


def test_every_transfer_syntax_from_pynetdicom(start_node: StartNode, tmp_path: Path) -> None:
    node = start_node()
    files = factory_files(tmp_path / "in")
    assert send_files(node.port, files) == [0] * len(files)
    assert_spooled_unchanged(node, files)


def test_every_transfer_syntax_from_storescu(
    start_node: StartNode, tmp_path: Path, dcmtk_env: dict[str, str]
) -> None:
    node = start_node()
    files = factory_files(tmp_path / "in")
    storescu(node.port, files, dcmtk_env, storescu_profile(tmp_path / "scu.cfg"))
    assert_spooled_unchanged(node, files)
