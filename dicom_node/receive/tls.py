"""TLS for incoming associations (DICOM PS3.15 B.1 / BCP 195 style: TLS 1.2 or newer)."""

from __future__ import annotations

import ssl

from dicom_node.config import TlsConfig
from dicom_node.errors import ConfigError


class _EncryptedKeyError(Exception):
    """OpenSSL asked for the key's passphrase."""


def _no_passphrase() -> str:
    raise _EncryptedKeyError


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """An SSL context for the Storage SCP; mutual TLS when a client certificate is required."""
    if tls.certificate is None or tls.key is None:
        raise ConfigError("node.tls: certificate and key are needed to enable TLS, got none")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        # A passphrase is never asked for: OpenSSL prompted on the terminal (a start under
        # a TTY stopped there) or, without one, failed with "[Errno 22] Invalid argument".
        ctx.load_cert_chain(certfile=tls.certificate, keyfile=tls.key, password=_no_passphrase)
    except _EncryptedKeyError:
        raise ConfigError(
            f"node.tls.key: the key is encrypted (it needs a passphrase, which a service "
            f"cannot type): give an unencrypted key readable by the node's user only "
            f"(openssl pkey -in KEY -out PLAIN), got {str(tls.key)!r}"
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"node.tls.certificate/key: cannot load {str(tls.certificate)!r} with "
            f"{str(tls.key)!r} ({exc})"
        ) from exc
    if tls.ca is not None:
        try:
            ctx.load_verify_locations(cafile=tls.ca)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"node.tls.ca: cannot load {str(tls.ca)!r} ({exc})") from exc
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
        # The CA given is trusted as it is, an issuing (intermediate) CA too: "clients with a
        # certificate from that CA". OpenSSL otherwise wanted a chain up to a self-signed
        # root, and refused every client of a hospital's issuing CA named here.
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx
