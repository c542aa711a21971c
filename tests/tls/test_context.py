"""The TLS policy of server and client, checked with real handshakes on loopback."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from chatsecure.errors import ConfigError
from chatsecure.testing import ServerThread
from chatsecure.tls import certs
from chatsecure.tls.context import client_context, server_context


def handshake(ctx: ssl.SSLContext, port: int, server_hostname: str | None = None) -> str:
    """Connect to 127.0.0.1:port; return the TLS version agreed."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        version = tls.version()
        assert version is not None
        return version


def test_server_speaks_tls_1_3_and_1_2(server: ServerThread) -> None:
    assert handshake(client_context(), server.port) == "TLSv1.3"
    only_12 = client_context()
    only_12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert handshake(only_12, server.port) == "TLSv1.2"


def test_tls13_only_server_refuses_tls_1_2(start_server: Callable[..., ServerThread]) -> None:
    server = start_server(tls13_only=True)
    only_12 = client_context()
    only_12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        handshake(only_12, server.port)
    assert handshake(client_context(), server.port) == "TLSv1.3"


def test_cafile_verifies_chain_and_host_name(server: ServerThread, cert_dir: Path) -> None:
    ctx = client_context(cert_dir / "server.crt")
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    assert handshake(ctx, server.port, server_hostname="localhost") == "TLSv1.3"
    assert handshake(ctx, server.port, server_hostname="127.0.0.1") == "TLSv1.3"
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ctx, server.port, server_hostname="not-this-server.example")


def test_cafile_refuses_a_server_it_does_not_vouch_for(
    server: ServerThread, tmp_path: Path
) -> None:
    other = certs.generate(tmp_path)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(client_context(other.cert), server.port, server_hostname="localhost")


def test_unreadable_files_are_config_errors(tmp_path: Path, cert_dir: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        server_context(tmp_path / "none.crt", tmp_path / "none.key")
    (tmp_path / "bad.crt").write_text("junk")
    with pytest.raises(ConfigError, match="cannot load certificate"):
        server_context(tmp_path / "bad.crt", cert_dir / "server.key")
    with pytest.raises(ConfigError, match="cannot load CA file"):
        client_context(tmp_path / "none.pem")
