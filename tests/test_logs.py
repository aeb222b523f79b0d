from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest
from pydicom.valuerep import DA

from dicom_node.config import LoggingConfig
from dicom_node.logs import Repeats, configure_logging


@pytest.fixture
def restore_logging() -> object:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield None
    root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    logging.captureWarnings(False)  # configure_logging routed warnings into logging


def test_json_lines(capsys: pytest.CaptureFixture[str], restore_logging: object) -> None:
    configure_logging(LoggingConfig(level="INFO", format="json"))
    logging.getLogger("dicom_node.test").info("study %s complete", "1.2.3")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("dicom_node.test").exception("failed")
    first, second = capsys.readouterr().err.strip().splitlines()[:2]
    entry = json.loads(first)
    assert entry["level"] == "INFO"
    assert entry["logger"] == "dicom_node.test"
    assert entry["message"] == "study 1.2.3 complete"
    assert entry["time"].endswith("Z")
    assert "ValueError: boom" in json.loads(second)["exception"]


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_decoding_plugins_tracebacks_are_left_to_the_nodes_own_line(
    capsys: pytest.CaptureFixture[str], restore_logging: object, level: str
) -> None:
    # pydicom logged each plugin's failure with a traceback, twice per image: 95 lines for
    # one truncated RLE image, whose reasons the node's own line already quotes.
    import numpy as np
    from pydicom.uid import RLELossless

    from dicom_node.synthetic import StudyIdentity, make_dx

    configure_logging(LoggingConfig(level=level, format="plain"))
    ds = make_dx(
        np.zeros((16, 16)), identity=StudyIdentity.synthetic(1), transfer_syntax=RLELossless
    )
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # a codestream cut short
    with pytest.raises(RuntimeError, match="Unable to decode as exceptions were raised"):
        ds.pixel_array  # noqa: B018
    decoder = logging.getLogger("pydicom.pixels.decoders.base")
    decoder.warning("a warning of its own")
    err = capsys.readouterr().err
    assert "a warning of its own" in err
    assert ("Traceback" in err) == (level == "DEBUG")
    logging.getLogger("pydicom.pixels.decoders.base").filters.clear()


def test_plain_lines_and_levels(
    capsys: pytest.CaptureFixture[str], restore_logging: object
) -> None:
    configure_logging(LoggingConfig(level="WARNING", format="plain"))
    logging.getLogger("dicom_node.test").info("hidden")
    logging.getLogger("dicom_node.test").warning("shown %d", 1)
    err = capsys.readouterr().err
    assert "hidden" not in err
    assert "WARNING dicom_node.test: shown 1" in err
    assert logging.getLogger("pynetdicom").level == logging.WARNING
    # highdicom logs each module it copies (seven lines per result object) at INFO.
    assert logging.getLogger("highdicom").level == logging.WARNING


def test_values_the_dicom_libraries_quote_are_withheld(
    capsys: pytest.CaptureFixture[str], restore_logging: object
) -> None:
    import warnings

    configure_logging(LoggingConfig(level="INFO", format="json"))
    assert warnings.showwarning.__module__ == "logging"  # warnings become log records
    logging.getLogger("pydicom").warning("Invalid value for VR DA: '19500615'.")
    logging.getLogger("highdicom.base").warning('copy attributes from "DOE^JANE"')
    logging.getLogger("py.warnings").warning('UserWarning: "DOE JANE" is not a name')
    logging.getLogger("dicom_node.test").info("study '1.2.3' complete")  # ours: as is
    lines = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]
    text = " ".join(entry["message"] for entry in lines)
    assert "1950" not in text and "DOE" not in text
    assert lines[0]["message"] == "Invalid value for VR DA: '…'."
    assert lines[2]["message"] == "UserWarning: '…' is not a name"
    assert lines[3]["message"] == "study '1.2.3' complete"


def test_tracebacks_withhold_what_the_error_quotes(
    capsys: pytest.CaptureFixture[str], restore_logging: object
) -> None:
    # log.exception after another library's error: its message may quote a header value.
    name = bytes([68, 79, 69]).decode() + "^JANE"  # a patient name read from a header
    for fmt in ("plain", "json"):
        configure_logging(LoggingConfig(level="INFO", format=fmt))
        try:
            try:
                float(name)
            except ValueError as exc:
                raise RuntimeError(f'while reading "{name}"') from exc
        except RuntimeError:
            logging.getLogger("dicom_node.test").exception("study %s: internal error", "1.2.3")
        err = capsys.readouterr().err
        text = err if fmt == "plain" else json.loads(err)["exception"]
        assert "DOE" not in text
        assert "ValueError: could not convert string to float: '…'" in text
        assert "RuntimeError: while reading '…'" in text
        assert "float(name)" in text  # the frames' code lines are kept as they are
        assert "study 1.2.3: internal error" in err


@pytest.mark.parametrize(
    ("convert", "value", "shown"),
    [
        # pydicom quotes the value as it is: over two lines, neither held a whole quote.
        (DA, "1950\nDOE^JANE", "ValueError: Unable to convert '…' to '…' object"),
        (DA, "1950\r\n  DOE^JANE", "ValueError: Unable to convert '…' to '…' object"),
        # repr() escapes the ' inside: the value ran on past it.
        (float, 'O\'DOE^JANE "JR"', "ValueError: could not convert string to float: '…'"),
    ],
)
def test_tracebacks_withhold_a_quoted_value_over_lines_or_with_quotes(
    capsys: pytest.CaptureFixture[str],
    restore_logging: object,
    convert: Callable[[str], object],
    value: str,
    shown: str,
) -> None:
    for fmt in ("plain", "json"):
        configure_logging(LoggingConfig(level="INFO", format=fmt))
        try:
            convert(value)
        except ValueError:
            logging.getLogger("dicom_node.test").exception("study %s: internal error", "1.2.3")
        err = capsys.readouterr().err
        text = err if fmt == "plain" else json.loads(err)["exception"]
        assert "JANE" not in text and "1950" not in text
        assert shown in text


def test_a_line_break_in_a_message_cannot_forge_a_line(
    capsys: pytest.CaptureFixture[str], restore_logging: object
) -> None:
    # A peer's request UID, as pynetdicom quotes it in its own warning.
    forged = "1.2.3\n2026-01-01 00:00:00,000 INFO    dicom_node.x: study 9 done"
    configure_logging(LoggingConfig(level="INFO", format="plain"))
    logging.getLogger("pynetdicom.utils").warning("Non-conformant UID value %s", forged)
    logging.getLogger("dicom_node.test").info("tab\tand é kept")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(r"Non-conformant UID value 1.2.3\n2026-01-01 00:00:00,000 INFO    "
                             "dicom_node.x: study 9 done")  # fmt: skip
    assert lines[1].endswith("tab\tand é kept")


def test_pynetdicoms_connection_errors_are_let_through_once_a_quarter_hour(
    capsys: pytest.CaptureFixture[str], restore_logging: object
) -> None:
    # Two ERROR lines per failed connection, each round of the reachability check.
    configure_logging(LoggingConfig(level="INFO", format="plain"))
    configure_logging(LoggingConfig(level="INFO", format="plain"))  # a second set-up: one filter
    transport = logging.getLogger("pynetdicom.transport")
    try:
        (repeats,) = [f for f in transport.filters if isinstance(f, Repeats)]
        clock = [0.0]
        repeats.clock = lambda: clock[0]
        for _ in range(3):
            transport.error("TCP Initialisation Error: [Errno 111] Connection refused")
            clock[0] += 30
        transport.error("TCP Initialisation Error: [Errno 113] No route to host")
        clock[0] += repeats.seconds
        transport.error("TCP Initialisation Error: [Errno 111] Connection refused")
        lines = capsys.readouterr().err.splitlines()
        assert [line.split(": ", 1)[1] for line in lines] == [
            "TCP Initialisation Error: [Errno 111] Connection refused",
            "TCP Initialisation Error: [Errno 113] No route to host",
            "TCP Initialisation Error: [Errno 111] Connection refused",
        ]
    finally:
        transport.filters.clear()
