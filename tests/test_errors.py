"""How an error's text reaches logs, the jobs table and HTTP answers."""

from __future__ import annotations

import pytest

from dicom_node.errors import ConfigError, SpoolError, describe, not_utf8, withhold_quoted


def test_quoted_values_are_withheld() -> None:
    assert (
        withhold_quoted("Invalid value for VR DA: '19500615'.") == "Invalid value for VR DA: '…'."
    )
    assert withhold_quoted("name \"DOE^JANE\" and 'x'") == "name '…' and '…'"
    assert withhold_quoted("nothing quoted") == "nothing quoted"
    # repr() of a text holding both quotes escapes one; a value may span lines or end in \.
    assert withhold_quoted(repr('O\'DOE "JR"') + " x") == "'…' x"
    assert (
        withhold_quoted("Unable to convert '1950\nDOE' to 'DA'") == "Unable to convert '…' to '…'"
    )
    assert withhold_quoted("value 'A\\' for 'DOE^JANE'") == "value '…'"  # the stretch between too


@pytest.mark.parametrize(
    ("error", "text"),
    [
        # Another library's error: its type, and what it quotes withheld.
        (ValueError("could not convert string to float: 'DOE^JANE'"),
         "ValueError: could not convert string to float: '…'"),
        (KeyError("PatientName"), "KeyError: '…'"),
        # The node's own errors name keys and values of its config, never header data.
        (ConfigError("node.port: expected an integer, got 'abc'"),
         "node.port: expected an integer, got 'abc'"),
        (SpoolError("spool: cannot write 'a/b.dcm'"), "spool: cannot write 'a/b.dcm'"),
        # An OSError's text is errno, reason and a path (the spool's paths are UIDs).
        (FileNotFoundError(2, "No such file or directory", "/spool/1.2.3.dcm"),
         "FileNotFoundError: [Errno 2] No such file or directory: '/spool/1.2.3.dcm'"),
        # An object's address differs in every process: a rerun's report got a new UID.
        (RuntimeError("cannot identify image file <_io.BytesIO object at 0x7fb0884b4a90>"),
         "RuntimeError: cannot identify image file <_io.BytesIO object>"),
        # A line per decoder made a CT note in the SR, and its log line, span lines.
        (RuntimeError("raised by all available plugins:\n  pylibjpeg: error A\n  pillow: B"),
         "RuntimeError: raised by all available plugins: pylibjpeg: error A; pillow: B"),
    ],
)  # fmt: skip
def test_describe(error: BaseException, text: str) -> None:
    assert describe(error) == text


def test_not_utf8_names_the_byte_and_its_offset() -> None:
    with pytest.raises(UnicodeDecodeError) as info:
        b"abc\xfcd".decode("utf-8")
    assert not_utf8(info.value) == "not UTF-8 text (byte 0xFC at offset 3)"
