"""Association policy and TLS against real peers (dcmtk echoscu/storescu, pynetdicom)."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import run_tool, tiny_image
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association

from dicom_node.config import TlsConfig
from dicom_node.errors import ConfigError
from dicom_node.node import Node
from dicom_node.receive.tls import server_context

StartNode = Callable[..., Node]
CR = "1.2.840.10008.5.1.4.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"


def associate(
    port: int,
    calling: str = "PACS",
    called: str = "TRIAGE",
    tls: tuple[ssl.SSLContext, str] | None = None,
) -> Association:
    ae = AE(calling)
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(CR, ExplicitVRLittleEndian)
    return ae.associate("127.0.0.1", port, ae_title=called, tls_args=tls)


def rejection(assoc: Association) -> tuple[int, int, int]:
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    return (rj.result, rj.result_source, rj.diagnostic)


def echo(port: int, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_tool(["echoscu", *args, "127.0.0.1", str(port)], env, timeout=20)


def test_unknown_calling_ae_is_rejected(
    start_node: StartNode, dcmtk_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node(node__allowed_calling_aes=["GOOD"])
    with caplog.at_level(logging.WARNING, logger="dicom_node.receive.store"):
        assert rejection(associate(node.port, calling="BAD")) == (1, 1, 3)
        assert rejection(associate(node.port, calling="GOOD", called="WRONG")) == (1, 1, 7)
    # The reason the node found, not "not allowed, wrong called AE, or max_associations".
    assert "calling AE 'BAD' at " in caplog.text
    assert "rejected: calling AE title not in node.allowed_calling_aes" in caplog.text
    assert "rejected: called AE title is not the node's" in caplog.text
    refused = echo(node.port, dcmtk_env, "-aet", "BAD", "-aec", "TRIAGE")
    assert refused.returncode != 0
    assert "Rejected" in refused.stderr or "rejected" in refused.stderr.lower()
    assert echo(node.port, dcmtk_env, "-aet", "GOOD", "-aec", "TRIAGE").returncode == 0


def test_wrong_called_ae_is_rejected_unless_allowed(
    start_node: StartNode, dcmtk_env: dict[str, str]
) -> None:
    node = start_node()
    assert rejection(associate(node.port, called="WRONG")) == (1, 1, 7)
    assert echo(node.port, dcmtk_env, "-aec", "WRONG").returncode != 0


def test_called_ae_check_can_be_disabled(
    start_node: StartNode, tmp_path: Path, dcmtk_env: dict[str, str]
) -> None:
    node = start_node(tmp_path / "other", node__require_called_ae=False)
    assert echo(node.port, dcmtk_env, "-aec", "ANYTHING").returncode == 0


def test_max_associations(start_node: StartNode) -> None:
    node = start_node(node__max_associations=1)
    held = associate(node.port)
    assert held.is_established
    try:
        assert rejection(associate(node.port)) == (2, 3, 2)
    finally:
        held.release()
    deadline = time.monotonic() + 5
    while True:  # the released association's thread takes a moment to end
        again = associate(node.port)
        if again.is_established or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert again.is_established
    again.release()


def test_instance_size_limit(start_node: StartNode) -> None:
    node = start_node(node__max_instance_bytes=1024)
    assoc = associate(node.port)
    try:
        big = assoc.send_c_store(tiny_image(size=64))
        small = assoc.send_c_store(tiny_image(size=16))
    finally:
        assoc.release()
    assert big.Status == 0xA700
    assert "node.max_instance_bytes" in big.ErrorComment
    assert small.Status == 0
    assert node.state is not None
    assert node.state.instance_count() == 1


# --- TLS -----------------------------------------------------------------------------


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Test CA",
            "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))  # fmt: skip
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))  # fmt: skip
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"),
                "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
                "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.crt"))  # fmt: skip
    return d


def client_context(pki: Path, with_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.crt"))
    if with_cert:
        ctx.load_cert_chain(pki / "client.crt", pki / "client.key")
    return ctx


def tls_node(start_node: StartNode, pki: Path, mutual: bool) -> Node:
    extra = {"node__tls__ca": str(pki / "ca.crt"), "node__tls__require_client_certificate": True}
    return start_node(
        node__tls__certificate=str(pki / "server.crt"),
        node__tls__key=str(pki / "server.key"),
        **(extra if mutual else {}),
    )


def one_slot_tls_node(start_node: StartNode, pki: Path, acse_timeout_seconds: float) -> Node:
    """A TLS node with a single association slot: whoever holds it locks the others out."""
    return start_node(
        node__tls__certificate=str(pki / "server.crt"),
        node__tls__key=str(pki / "server.key"),
        node__acse_timeout_seconds=acse_timeout_seconds,
        node__max_associations=1,
    )


def dcmtk_tls(pki: Path, with_cert: bool) -> list[str]:
    ident = ["+tls", str(pki / "client.key"), str(pki / "client.crt")] if with_cert else ["+tla"]
    return [*ident, "+cf", str(pki / "ca.crt"), "-aec", "TRIAGE"]


def test_tls_accepts_tls_and_refuses_plain(
    start_node: StartNode, pki: Path, dcmtk_env: dict[str, str], tmp_path: Path
) -> None:
    node = tls_node(start_node, pki, mutual=False)
    assert echo(node.port, dcmtk_env, *dcmtk_tls(pki, with_cert=True)).returncode == 0
    assert echo(node.port, dcmtk_env, "-aec", "TRIAGE").returncode != 0
    assoc = associate(node.port, tls=(client_context(pki, with_cert=False), "localhost"))
    assert assoc.is_established
    status = assoc.send_c_store(tiny_image())
    assoc.release()
    assert status.Status == 0
    ds = tiny_image()
    ds.save_as(tmp_path / "one.dcm", enforce_file_format=True)
    sent = run_tool(
        ["storescu", *dcmtk_tls(pki, True), "127.0.0.1", str(node.port), str(tmp_path / "one.dcm")],
        dcmtk_env,
    )
    assert sent.returncode == 0, sent.stderr
    assert node.state is not None
    assert node.state.instance_count() == 2


def test_mutual_tls_requires_a_client_certificate(
    start_node: StartNode, pki: Path, dcmtk_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    node = tls_node(start_node, pki, mutual=True)
    assert echo(node.port, dcmtk_env, *dcmtk_tls(pki, with_cert=True)).returncode == 0
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert echo(node.port, dcmtk_env, *dcmtk_tls(pki, with_cert=False)).returncode != 0
        assert echo(node.port, dcmtk_env, "-aec", "TRIAGE").returncode != 0
        time.sleep(0.2)  # the node's side of each refusal is logged after the peer's exit
    # One line each naming the peer (was an ERROR "Connection closed before the entire PDU
    # was received" and a traceback, naming no peer).
    refused = [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()]
    assert len(refused) == 2 and all(
        m.startswith("TLS handshake from 127.0.0.1 failed: [SSL") for m in refused
    ), refused
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    with_cert = associate(node.port, tls=(client_context(pki, True), "localhost"))
    assert with_cert.is_established
    with_cert.release()
    without = associate(node.port, tls=(client_context(pki, False), "localhost"))
    assert not without.is_established
    # pynetdicom leaves the client's TLS socket open when the server refuses the
    # handshake after TLS 1.3 completed on the client side; close it here.
    sock = without.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.close()


def test_an_issuing_ca_is_trusted_as_named_and_refusals_are_counted(
    start_node: StartNode, pki: Path, dcmtk_env: dict[str, str], tmp_path: Path
) -> None:
    # A hospital's PKI issues from an intermediate CA, which the admin names in node.tls.ca:
    # every client it issued was refused ("unable to get issuer certificate"), whatever
    # chain it sent. And a refused handshake was in the log only: no metric showed it.
    d = tmp_path
    (d / "issuing.ext").write_text("basicConstraints=critical,CA:TRUE\nkeyUsage=keyCertSign\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=Issuing CA",
            "-keyout", str(d / "issuing.key"), "-out", str(d / "issuing.csr"))  # fmt: skip
    openssl("x509", "-req", "-in", str(d / "issuing.csr"), "-CA", str(pki / "ca.crt"),
            "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-days", "2",
            "-extfile", str(d / "issuing.ext"), "-out", str(d / "issuing.crt"))  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=modality",
            "-keyout", str(d / "modality.key"), "-out", str(d / "modality.csr"))  # fmt: skip
    (d / "modality.ext").write_text("extendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", str(d / "modality.csr"), "-CA", str(d / "issuing.crt"),
            "-CAkey", str(d / "issuing.key"), "-CAcreateserial", "-days", "2",
            "-extfile", str(d / "modality.ext"), "-out", str(d / "modality.crt"))  # fmt: skip
    node = start_node(
        node__tls__certificate=str(pki / "server.crt"),
        node__tls__key=str(pki / "server.key"),
        node__tls__ca=str(d / "issuing.crt"),
        node__tls__require_client_certificate=True,
    )
    issued = ["+tls", str(d / "modality.key"), str(d / "modality.crt"),
              "+cf", str(pki / "ca.crt"), "-aec", "TRIAGE"]  # fmt: skip
    assert echo(node.port, dcmtk_env, *issued).returncode == 0
    # The root's own client is not the issuing CA's: refused, and counted.
    assert echo(node.port, dcmtk_env, *dcmtk_tls(pki, with_cert=True)).returncode != 0
    registry = node.metrics.registry
    rejected = {"outcome": "rejected", "reason": "tls"}
    deadline = time.monotonic() + 5
    while registry.get_sample_value("dicom_node_associations_total", rejected) != 1:
        assert time.monotonic() < deadline, "the refused handshake was not counted"
        time.sleep(0.05)


def test_an_encrypted_key_is_a_config_error_not_a_prompt(pki: Path, tmp_path: Path) -> None:
    encrypted = tmp_path / "encrypted.key"
    openssl("pkey", "-in", str(pki / "server.key"), "-aes256", "-passout", "pass:secret",
            "-out", str(encrypted))  # fmt: skip
    # Was OpenSSL's "Enter PEM pass phrase:" on the terminal (a start under a TTY stopped
    # there), else "[Errno 22] Invalid argument".
    with pytest.raises(
        ConfigError,
        match=r"^node\.tls\.key: the key is encrypted \(it needs a passphrase, which a service "
        r"cannot type\): give an unencrypted key readable by the node's user only \(openssl "
        r"pkey -in KEY -out PLAIN\), got '.*encrypted\.key'$",
    ):
        server_context(TlsConfig(certificate=pki / "server.crt", key=encrypted))


def test_unusable_key_is_a_config_error(pki: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not a PEM key\n")
    with pytest.raises(ConfigError, match=r"node\.tls\.certificate/key: cannot load"):
        server_context(TlsConfig(certificate=pki / "server.crt", key=bad))
    junk_ca = tmp_path / "ca.pem"
    junk_ca.write_text("junk\n")
    with pytest.raises(ConfigError, match=r"node\.tls\.ca: cannot load"):
        server_context(
            TlsConfig(certificate=pki / "server.crt", key=pki / "server.key", ca=junk_ca)
        )
    with pytest.raises(ConfigError, match=r"node\.tls: certificate and key are needed"):
        server_context(TlsConfig())


def test_silent_connection_does_not_block_tls_peers(
    start_node: StartNode, pki: Path, dcmtk_env: dict[str, str]
) -> None:
    # pynetdicom's own server does the TLS handshake in its accept loop, so one
    # connection that never speaks (a TCP probe) blocked every TLS peer and shutdown.
    node = tls_node(start_node, pki, mutual=False)
    with socket.create_connection(("127.0.0.1", node.port)):
        time.sleep(0.2)
        started = time.monotonic()
        assert echo(node.port, dcmtk_env, *dcmtk_tls(pki, with_cert=True)).returncode == 0
        assert time.monotonic() - started < 3


def test_a_tls_handshake_left_half_done_loses_its_slot_after_the_acse_timeout(
    start_node: StartNode, pki: Path, dcmtk_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    # The handshake runs in the connection's first read, which waits at most
    # node.acse_timeout_seconds like any read before the association.
    node = one_slot_tls_node(start_node, pki, acse_timeout_seconds=1)
    with socket.create_connection(("127.0.0.1", node.port)) as stalled:
        stalled.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, no more
        stalled.settimeout(10)
        started = time.monotonic()
        with caplog.at_level(logging.INFO), contextlib.suppress(ConnectionResetError):
            assert stalled.recv(65536) == b""  # closed by the node, either way
            time.sleep(0.2)
        assert time.monotonic() - started < 5
    assert echo(node.port, dcmtk_env, *dcmtk_tls(pki, with_cert=True)).returncode == 0
    # Named as the handshake it was (was "a PDU not received whole", then pynetdicom's
    # two ERROR lines and a traceback).
    assert "connection from 127.0.0.1 closed: TLS handshake not completed within 1" in (caplog.text)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_a_plain_peer_of_a_tls_node_frees_its_slot_when_it_leaves(
    start_node: StartNode, pki: Path, dcmtk_env: dict[str, str]
) -> None:
    # A modality left without TLS, retrying: each failed handshake held an association
    # slot for node.acse_timeout_seconds after its connection had closed, locking
    # correctly configured senders out (rejected, local limit exceeded).
    node = one_slot_tls_node(start_node, pki, acse_timeout_seconds=30)
    started = time.monotonic()
    for _ in range(2):
        assert echo(node.port, dcmtk_env, "-aec", "TRIAGE").returncode != 0  # plain TCP
    assert echo(node.port, dcmtk_env, *dcmtk_tls(pki, with_cert=True)).returncode == 0
    assert time.monotonic() - started < 15


def test_instance_size_limit_holds_for_what_a_deflated_instance_inflates_to(
    start_node: StartNode,
) -> None:
    # 64x64x16 bit zeros deflate to a few hundred bytes but inflate past the 4 KiB limit.
    node = start_node(node__max_instance_bytes=4096)
    ae = AE("PACS")
    ae.add_requested_context(CR, DeflatedExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="TRIAGE")
    try:
        ds = tiny_image(size=64)
        ds.PixelData = bytes(len(ds.PixelData))
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert status.Status == 0xA700
    assert "inflated data set exceeds the size limit (4096 bytes)" in status.ErrorComment
    assert node.state is not None
    assert node.state.instance_count() == 0
