"""How the node writes a host and port."""

from __future__ import annotations

import pytest

from dicom_node.address import host_port


@pytest.mark.parametrize(
    ("host", "written"),
    [("127.0.0.1", "127.0.0.1:11112"), ("pacs.example.org", "pacs.example.org:11112"),
     # Was "::1:11112" (the start line's metrics URL, the bind failure): no URL parses it.
     ("::1", "[::1]:11112"), ("fe80::2", "[fe80::2]:11112")],
)  # fmt: skip
def test_an_ipv6_literal_is_written_in_brackets(host: str, written: str) -> None:
    assert host_port(host, 11112) == written
