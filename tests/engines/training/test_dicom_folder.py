from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from dicom_node.config_results import RoutingConfig
from dicom_node.preprocess import hip_input, load_image
from dicom_node.route.plan import source_image
from engines.catalog import EngineSpec, engine_spec
from engines.manifest import Preprocessing
from engines.phantoms import screen_hip
from engines.phantoms.studies import write_study
from engines.training.data import DataError
from engines.training.dicom_folder import load_labelled_folder


def _write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_screening_rows_take_each_hip_of_a_pelvis(tmp_path: Path) -> None:
    study = write_study(tmp_path / "s1", 7, "femoral_neck_fracture", "normal", size=128)
    pelvis = study.files[0].relative_to(tmp_path)
    csv = _write_csv(
        tmp_path / "labels.csv",
        "file,side,label",
        [f"{pelvis},R,femoral_neck_fracture", f"{pelvis},L,normal"],
    )
    data = load_labelled_folder(engine_spec("hip_screen"), csv, 64).hips
    assert data.ap.shape == (2, 1, 64, 64)
    assert data.labels.tolist() == [3, 0]
    assert data.masks is None  # masks are unknown for a site's images (no N x S x S zeros)
    # The right hip region is the canonical phantom, read back through DICOM and resized.
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(screen_hip("femoral_neck_fracture", 7, 128).image)[None, None],
        size=(64, 64),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )[0, 0]
    assert (data.ap[0, 0] - expected).abs().mean() < 0.05


def test_hipnet_rows_pair_ap_and_lateral(tmp_path: Path) -> None:
    study = write_study(
        tmp_path / "s",
        3,
        "normal",
        "total_hip_arthroplasty",
        failure={"L": "dislocation"},
        size=128,
    )
    pelvis, lateral = (f.relative_to(tmp_path) for f in study.files)
    other = write_study(tmp_path / "o", 4, "normal", "total_hip_arthroplasty", size=128).files[0]
    csv = _write_csv(
        tmp_path / "hipnet.csv",
        "ap_file,lateral_file,side,label",
        [f"{pelvis},{lateral},L,dislocation", f"{other.relative_to(tmp_path)},,L,dislocation"],
    )
    data = load_labelled_folder(engine_spec("hipnet"), csv, 64).hips
    assert data.lateral is not None and data.lateral_present is not None
    assert data.lateral_present.tolist() == [1.0, 0.0]
    assert data.lateral[1].abs().max() == 0
    assert data.labels.tolist() == [2, 2]


def test_bad_rows_name_the_line(tmp_path: Path) -> None:
    spec = engine_spec("hip_screen")
    study = write_study(tmp_path / "s", 1, "normal", "normal", size=64)
    pelvis = study.files[0].relative_to(tmp_path)
    cases = [
        (
            "file,side,label",
            [f"{pelvis},R,broken_leg"],
            r"labels.csv:2: label 'broken_leg' is not a class",
        ),
        (
            "file,side,label",
            [f"{pelvis},X,normal"],
            r"labels.csv:2: side: expected R or L, got 'X'",
        ),
        ("file,label", [f"{pelvis},normal"], r"labels.csv:2: pelvis_ap.dcm shows both hips"),
        ("file,side,label", ["missing.dcm,R,normal"], r"labels.csv:2: cannot read DICOM file"),
        ("name,label", ["x,normal"], r"missing column\(s\) \['file'\] for engine hip_screen"),
        ("file,side,label", [], r"labels.csv: no rows"),
    ]
    for header, rows, message in cases:
        csv = _write_csv(tmp_path / "labels.csv", header, rows)
        with pytest.raises(DataError, match=message):
            load_labelled_folder(spec, csv, 64)
    with pytest.raises(DataError, match="cannot read"):
        load_labelled_folder(spec, tmp_path / "absent.csv", 64)


def _right_tha_with_its_lateral(tmp_path: Path) -> tuple[Path, Path]:
    """An AP pelvis (THA on the right, dislocated) and its right lateral, relative paths."""
    study = write_study(
        tmp_path / "s", 3, "total_hip_arthroplasty", "normal", failure={"R": "dislocation"},
        size=64,
    )  # fmt: skip
    pelvis, lateral = (f.relative_to(tmp_path) for f in study.files)
    return pelvis, lateral


def _pair_refused(tmp_path: Path, ap: object, lateral: object, message: str) -> None:
    """The Hip-Net row (ap, lateral, dislocation, R) is refused with ``message``."""
    csv = _write_csv(
        tmp_path / "labels.csv", "ap_file,lateral_file,label,side",
        [f"{ap},{lateral},dislocation,R"],
    )  # fmt: skip
    with pytest.raises(DataError, match=message):
        load_labelled_folder(engine_spec("hipnet"), csv, 64)


def _each_refused(tmp_path: Path, cases: list[tuple[EngineSpec, str, str, str]]) -> None:
    """Each (engine, CSV header, one row, message) is refused with its message."""
    for spec, header, row, message in cases:
        csv = _write_csv(tmp_path / "labels.csv", header, [row])
        with pytest.raises(DataError, match=message):
            load_labelled_folder(spec, csv, 64)


def test_columns_outside_the_engines_are_refused(tmp_path: Path) -> None:
    pelvis, lateral = _right_tha_with_its_lateral(tmp_path)
    hipnet, screen = engine_spec("hipnet"), engine_spec("hip_screen")
    cases = [
        # A misspelt lateral column was ignored: every hip trained without its lateral.
        (hipnet, "ap_file,lateral_path,label,side", f"{pelvis},{lateral},dislocation,R",
         r"missing column\(s\) \['lateral_file'\] for engine hipnet"),
        (hipnet, "ap_file,lateral_file,label,side,lateral_path",
         f"{pelvis},{lateral},dislocation,R,x",
         r"unknown column\(s\) \['lateral_path'\] \(the columns of engine hipnet: "
         r"ap_file, lateral_file, label, side\)"),
        (screen, "file,label,label,side", f"{pelvis},normal,normal,R",
         r"column\(s\) \['label'\] given twice"),
        (screen, "file,label,side,notes", f"{pelvis},normal,R,ok",
         r"unknown column\(s\) \['notes'\]"),
    ]  # fmt: skip
    _each_refused(tmp_path, cases)


def test_an_image_whose_view_contradicts_its_column_is_refused(tmp_path: Path) -> None:
    # Serving routes by View Position: a lateral is never an engine's AP input, nor an AP
    # its lateral; trained so, the engine learns from inputs it will never be given.
    pelvis, lateral = _right_tha_with_its_lateral(tmp_path)
    hipnet, screen = engine_spec("hipnet"), engine_spec("hip_screen")
    cases = [
        (screen, "file,label,side", f"{lateral},normal,R",
         r"labels.csv:2: file: r_hip_lateral.dcm is a lateral view \(View Position RL\); this "
         r"column takes an AP or PA image"),
        (hipnet, "ap_file,lateral_file,label,side", f"{lateral},{pelvis},dislocation,R",
         r"labels.csv:2: ap_file: r_hip_lateral.dcm is a lateral view"),
        (hipnet, "ap_file,lateral_file,label,side", f"{pelvis},{pelvis},dislocation,R",
         r"labels.csv:2: lateral_file: pelvis_ap.dcm is not a lateral the node pairs with hip R: "
         r"View Position AP is not one of LATERAL, LL, LLO, RL, RLO; correct its header, or "
         r"leave lateral_file empty to train the hip without one$"),
    ]  # fmt: skip
    _each_refused(tmp_path, cases)
    # Without a View Position serving never pairs it: was trained as the hip's lateral.
    ds = pydicom.dcmread(tmp_path / lateral)
    del ds.ViewPosition
    ds.save_as(tmp_path / "unnamed.dcm")
    csv = _write_csv(
        tmp_path / "labels.csv", "ap_file,lateral_file,label,side",
        [f"{pelvis},unnamed.dcm,dislocation,R"],
    )  # fmt: skip
    with pytest.raises(DataError, match=r"unnamed.dcm is not a lateral the node pairs with hip "
                       r"R: View Position not given is not one of"):  # fmt: skip
        load_labelled_folder(hipnet, csv, 64)


def test_a_lateral_is_checked_against_the_sites_routing(tmp_path: Path) -> None:
    # A site whose node pairs XTABLE laterals: the default lateral views refused them, in
    # words that said the node does not pair them.
    pelvis, lateral = _right_tha_with_its_lateral(tmp_path)
    ds = pydicom.dcmread(tmp_path / lateral)
    ds.ViewPosition = "XTABLE"
    ds.save_as(tmp_path / "xtable.dcm")
    csv = _write_csv(
        tmp_path / "labels.csv", "ap_file,lateral_file,label,side",
        [f"{pelvis},xtable.dcm,dislocation,R"],
    )  # fmt: skip
    hipnet = engine_spec("hipnet")
    with pytest.raises(DataError, match=r"View Position XTABLE is not one of LATERAL, LL"):
        load_labelled_folder(hipnet, csv, 64)
    site = RoutingConfig(lateral_views=(*RoutingConfig().lateral_views, "XTABLE"))
    hips = load_labelled_folder(hipnet, csv, 64, site).hips
    assert hips.lateral_present is not None and hips.lateral_present.tolist() == [1.0]


@pytest.mark.parametrize(
    "keyword", ["SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"]
)
def test_a_lateral_without_its_identifying_uids_is_refused(tmp_path: Path, keyword: str) -> None:
    # Was a traceback (AttributeError) from reading it as the node would.
    pelvis, lateral = _right_tha_with_its_lateral(tmp_path)
    ds = pydicom.dcmread(tmp_path / lateral)
    delattr(ds, keyword)
    ds.save_as(tmp_path / "bare.dcm")
    _pair_refused(
        tmp_path, pelvis, "bare.dcm", rf"labels.csv:2: lateral_file: bare.dcm has no {keyword} "
    )


def test_an_ap_without_its_study_uid_is_refused(tmp_path: Path) -> None:
    # The node refuses such an image (0xC211); with it, any lateral passed the same-study
    # check.
    pelvis, lateral = _right_tha_with_its_lateral(tmp_path)
    ds = pydicom.dcmread(tmp_path / pelvis)
    del ds.StudyInstanceUID
    ds.save_as(tmp_path / "bare-ap.dcm")
    _pair_refused(
        tmp_path, "bare-ap.dcm", lateral, r"labels.csv:2: ap_file: bare-ap.dcm has no Study"
    )


def test_a_lateral_of_another_study_is_refused(tmp_path: Path) -> None:
    # The node pairs a lateral within its study only: this pair was trained as one.
    pelvis, lateral = _right_tha_with_its_lateral(tmp_path)
    ds = pydicom.dcmread(tmp_path / lateral)
    ds.StudyInstanceUID = "1.2.3.999"
    ds.save_as(tmp_path / "other.dcm")
    _pair_refused(
        tmp_path, pelvis, "other.dcm", r"labels.csv:2: lateral_file: other.dcm is of another "
    )


def test_rows_a_hand_or_a_spreadsheet_writes(tmp_path: Path) -> None:
    spec = engine_spec("hip_screen")
    study = write_study(tmp_path / "s", 1, "normal", "normal", size=64)
    pelvis = study.files[0].relative_to(tmp_path)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(study.files[0].read_bytes()[:153])
    cases = [
        # A row short of a field (a missing label), one with an extra (a comma in a path).
        ("file,side,label", [f"{pelvis},R"], r"labels.csv:2: expected 3 fields \(file, side, "
         r"label\), got 2$"),
        ("file,side,label", [f"{pelvis},R,normal,x"], r"labels.csv:2: expected 3 fields"),
        # The line of a bad row counts the blank lines and spreadsheet rows skipped before it.
        ("file,side,label", ["", ",,", f"{pelvis},R,broken"], r"labels.csv:4: label 'broken'"),
        ("file,side,label", [",R,normal"], r"labels.csv:2: file: expected a DICOM file's path, "
         r"got an empty field$"),
        # A semicolon-separated export: the message shows the header as read.
        ("file;side;label", [f"{pelvis};R;normal"], r"missing column\(s\) \['file', 'label'\] "
         r"for engine hip_screen \(the header has: file;side;label\)$"),
        ("", [], r"labels.csv: no rows$"),
        # A truncated file: pydicom's struct.error, named with the row and the file.
        ("file,side,label", ["truncated.dcm,R,normal"], r"labels.csv:2: cannot read DICOM file "
         r".*truncated\.dcm \(error: unpack requires"),
    ]  # fmt: skip
    for header, rows, message in cases:
        csv = _write_csv(tmp_path / "labels.csv", header, rows)
        with pytest.raises(DataError, match=message):
            load_labelled_folder(spec, csv, 64)
    # Spaces around names and values, blank lines and empty rows are fine.
    csv = _write_csv(
        tmp_path / "labels.csv", "file , side , label", ["", f" {pelvis} , r , normal"]
    )
    assert load_labelled_folder(spec, csv, 64).hips.labels.tolist() == [0]


def _serving_lateral(path: Path, side: str, size: int) -> np.ndarray:
    """The lateral input serving computes for hip ``side`` (it pairs only a lateral of that side)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    source = source_image(ds, path, "SITE")
    assert source.laterality == side
    return hip_input(load_image(source), side, Preprocessing(size=size)).pixels


@pytest.mark.parametrize("tag", ["L", "B", ""])
def test_a_lateral_is_used_whole_as_serving_does(tmp_path: Path, tag: str) -> None:
    study = write_study(
        tmp_path / "s", 5, "normal", "total_hip_arthroplasty", failure={"L": "dislocation"}, size=96
    )
    pelvis, lateral = study.files
    expected = _serving_lateral(lateral, "L", 64)
    ds = pydicom.dcmread(lateral)
    if tag:
        ds.ImageLaterality = tag
    else:
        del ds.ImageLaterality
    ds.save_as(tmp_path / "lateral.dcm")
    csv = _write_csv(
        tmp_path / "hipnet.csv",
        "ap_file,lateral_file,side,label",
        [f"{pelvis.relative_to(tmp_path)},lateral.dcm,L,dislocation"],
    )
    if tag != "L":
        # Serving pairs a lateral of the hip's own side only: trained with one tagged B or
        # untagged, the engine learnt from a pair it never gets (lateral_present 1).
        with pytest.raises(
            DataError, match=rf"its \(Image\) Laterality is {tag or 'not given'}, not L; "
        ):
            load_labelled_folder(engine_spec("hipnet"), csv, 64)
        return
    # Whole, mirrored for the left hip, as serving prepares it.
    data = load_labelled_folder(engine_spec("hipnet"), csv, 64).hips
    assert data.lateral is not None
    np.testing.assert_array_equal(data.lateral[0, 0].numpy(), expected)


def test_a_lateral_takes_the_side_of_its_ap(tmp_path: Path) -> None:
    study = write_study(
        tmp_path / "s", 6, "total_hip_arthroplasty", "normal", failure={"R": "dislocation"}, size=96
    )
    pelvis, lateral = study.files
    expected = _serving_lateral(lateral, "R", 64)
    # An AP of the right hip alone and its lateral: no side column is needed.
    ap = pydicom.dcmread(pelvis)
    ap.ImageLaterality = "R"
    ap.save_as(tmp_path / "ap.dcm")
    ds = pydicom.dcmread(lateral)
    assert ds.ImageLaterality == "R"
    ds.save_as(tmp_path / "lateral.dcm")
    csv = _write_csv(
        tmp_path / "hipnet.csv", "ap_file,lateral_file,label", ["ap.dcm,lateral.dcm,dislocation"]
    )
    data = load_labelled_folder(engine_spec("hipnet"), csv, 64).hips
    assert data.lateral is not None
    np.testing.assert_array_equal(data.lateral[0, 0].numpy(), expected)
    # A lateral tagged for the other hip is not that hip's lateral.
    ds.ImageLaterality = "L"
    ds.save_as(tmp_path / "lateral.dcm")
    with pytest.raises(
        DataError,
        match=r"hipnet.csv:2: lateral_file: lateral.dcm is not a lateral the node pairs with "
        r"hip R: its \(Image\) Laterality is L, not R",
    ):
        load_labelled_folder(engine_spec("hipnet"), csv, 64)


def test_rows_are_grouped_by_patient_from_the_headers(tmp_path: Path) -> None:
    spec = engine_spec("hip_screen")
    first = write_study(tmp_path / "s1", 1, "normal", "osteoarthritis", size=64).files[0]
    second = write_study(tmp_path / "s2", 2, "normal", "normal", size=64).files[0]
    assert pydicom.dcmread(first).PatientID != pydicom.dcmread(second).PatientID
    (tmp_path / "copy").mkdir()
    copy = tmp_path / "copy" / "pelvis.dcm"
    copy.write_bytes(first.read_bytes())  # the same image under a second path
    rows = [f"{first.relative_to(tmp_path)},R,normal", "copy/pelvis.dcm,L,osteoarthritis",
            f"{second.relative_to(tmp_path)},R,normal"]  # fmt: skip
    csv = _write_csv(tmp_path / "labels.csv", "file,side,label", rows)
    patients = load_labelled_folder(spec, csv, 64).patients
    assert patients[0] == patients[1] != patients[2]
    assert all(len(key) == 16 and "PAT" not in key for key in patients)  # digests, not IDs
    # The same hip twice, under another path: counted twice, or with a second label.
    csv = _write_csv(
        tmp_path / "labels.csv", "file,side,label", [*rows, "copy/pelvis.dcm,R,osteoarthritis"]
    )
    with pytest.raises(
        DataError,
        match=r"labels.csv:5: the R hip of pelvis.dcm is already on .*labels.csv:2 \(a hip given "
        r"twice would count twice, or carry two labels\)$",
    ):
        load_labelled_folder(spec, csv, 64)
    # Without a Patient ID, a file's study is its patient.
    for n, (path, uid) in enumerate(((first, "1.2.3.1"), (second, "1.2.3.1"), (copy, "1.2.3.2"))):
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.StudyInstanceUID, ds.SOPInstanceUID = "", uid, f"{uid}.{n}"
        ds.save_as(path)
    csv = _write_csv(tmp_path / "labels.csv", "file,side,label", rows)
    patients = load_labelled_folder(spec, csv, 64).patients
    assert patients[0] == patients[2] != patients[1]


def test_a_lateral_joins_its_aps_patient(tmp_path: Path) -> None:
    study = write_study(
        tmp_path / "s", 3, "normal", "total_hip_arthroplasty", failure={"L": "dislocation"}, size=64
    )
    pelvis, lateral = study.files
    # The lateral has no Patient ID, so its patient is its study (its AP's: the node pairs
    # within a study): also the one of a second AP without a Patient ID in that study.
    ds = pydicom.dcmread(lateral)
    ds.PatientID = ""
    ds.save_as(lateral)
    other = write_study(tmp_path / "o", 4, "normal", "total_hip_arthroplasty", size=64).files[0]
    ds = pydicom.dcmread(other)
    ds.PatientID, ds.StudyInstanceUID = "", pydicom.dcmread(lateral).StudyInstanceUID
    ds.save_as(other)
    third = write_study(tmp_path / "t", 5, "normal", "total_hip_arthroplasty", size=64).files[0]
    names = [p.relative_to(tmp_path) for p in (pelvis, lateral, other, third)]
    rows = [f"{names[0]},{names[1]},L,dislocation", f"{names[2]},,L,dislocation",
            f"{names[3]},,L,dislocation"]  # fmt: skip
    csv = _write_csv(tmp_path / "hipnet.csv", "ap_file,lateral_file,side,label", rows)
    patients = load_labelled_folder(engine_spec("hipnet"), csv, 64).patients
    assert patients[0] == patients[1] != patients[2]


def test_csv_encodings_a_spreadsheet_writes(tmp_path: Path) -> None:
    spec = engine_spec("hip_screen")
    study = write_study(tmp_path / "s", 3, "normal", "normal", size=64)
    pelvis = study.files[0].relative_to(tmp_path)
    text = f"file,side,label\n{pelvis},R,normal\n"
    csv = tmp_path / "labels.csv"
    csv.write_bytes(b"\xef\xbb\xbf" + text.encode())  # Excel's "CSV UTF-8": a byte-order mark
    assert len(load_labelled_folder(spec, csv, 64).hips) == 1
    csv.write_bytes(text.encode() + "x.dcm,R,M\u00fcnster\n".encode("cp1252"))  # Excel's "CSV"
    with pytest.raises(
        DataError,
        match=r"labels\.csv: not UTF-8 text \(byte 0xFC at offset \d+\); save it as CSV UTF-8$",
    ):
        load_labelled_folder(spec, csv, 64)


def test_a_quote_left_open_names_the_line_its_row_begins_on(tmp_path: Path) -> None:
    # A field opened by a quote and never closed runs its row on to the end of the file:
    # past the csv module's field limit its csv.Error was a traceback, below it the error
    # named the file's last line.
    spec = engine_spec("hip_screen")
    rows = [f"s{i}/pelvis_ap.dcm,R,normal" for i in range(6000)]
    rows[1] = '"s1/pelvis_ap.dcm,R,normal'
    csv = _write_csv(tmp_path / "labels.csv", "file,side,label", rows)
    with pytest.raises(
        DataError,
        match=r"labels.csv:3: cannot read the row: field larger than field limit \(131072\); "
        r"the row runs from line 3 to line \d+ \(a quote not closed\?\)$",
    ):
        load_labelled_folder(spec, csv, 64)
    csv = _write_csv(tmp_path / "labels.csv", "file,side,label", rows[:100])
    with pytest.raises(
        DataError,
        match=r"labels.csv:3: expected 3 fields \(file, side, label\), got 1; the row runs "
        r"from line 3 to line 101 \(a quote not closed\?\)$",
    ):
        load_labelled_folder(spec, csv, 64)


def test_a_row_over_several_lines_is_named_by_its_first(tmp_path: Path) -> None:
    # A quoted field may hold a line break; the rows after it keep their own lines.
    spec = engine_spec("hip_screen")
    study = write_study(tmp_path / "s", 1, "normal", "normal", size=64)
    pelvis = study.files[0].relative_to(tmp_path)
    cases = [
        (['"a', 'b.dcm",R'], r"labels.csv:2: expected 3 fields \(file, side, label\), got 2; "
         r"the row runs from line 2 to line 3 \(a quote not closed\?\)$"),
        (['"a', 'b.dcm",R,broken'], r"labels.csv:2: label 'broken' is not a class"),
        ([f"{pelvis},R,normal", '"a', 'b.dcm",R,broken'],
         r"labels.csv:3: label 'broken' is not a class"),
        # A label with its line break (stripped) spans lines 3-4; the next row is line 5.
        ([f"{pelvis},R,normal", f'{pelvis},L,"normal', '"', f"{pelvis},R,broken"],
         r"labels.csv:5: label 'broken' is not a class"),
    ]  # fmt: skip
    for rows, message in cases:
        csv = _write_csv(tmp_path / "labels.csv", "file,side,label", rows)
        with pytest.raises(DataError, match=message):
            load_labelled_folder(spec, csv, 64)


@pytest.mark.parametrize("tag", ["R", " R"])
def test_laterality_is_read_as_serving_reads_it(tmp_path: Path, tag: str) -> None:
    # Serving strips the header's value: an image tagged ' R' is one hip, used whole; training
    # read it as no laterality and cut the right half of it as a pelvis's.
    study = write_study(tmp_path / "s", 2, "normal", "normal", size=64)
    ds = pydicom.dcmread(study.files[0])
    ds.ImageLaterality = tag
    ds.save_as(tmp_path / "hip.dcm")
    source = source_image(pydicom.dcmread(tmp_path / "hip.dcm"), tmp_path / "hip.dcm", "SITE")
    assert source.laterality == "R"
    expected = hip_input(load_image(source), "R", Preprocessing(size=64)).pixels
    spec = engine_spec("hip_screen")
    for header, row in (("file,side,label", "hip.dcm,R,normal"), ("file,label", "hip.dcm,normal")):
        csv = _write_csv(tmp_path / "labels.csv", header, [row])
        data = load_labelled_folder(spec, csv, 64).hips
        np.testing.assert_array_equal(data.ap[0, 0].numpy(), expected)
