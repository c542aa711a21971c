"""The TLS policy as an attacker probes it: old versions, weak suites, renegotiation.

Each refusal is checked against a control: the same client against a deliberately permissive
server (same certificate) gets in, so a refusal is the chatsecure server's doing and not the
client's own OpenSSL refusing to offer what it was asked to.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatsecure.testing import RawClient, ServerThread

LEGACY = "DEFAULT:@SECLEVEL=0"
"""What a client needs to offer TLS 1.0/1.1 at all with OpenSSL 3."""

CBC_SUITES = "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384"
"""Forward secrecy but no AEAD (CBC with HMAC), for the server's ECDSA key."""


def client(
    *,
    ciphers: str | None = None,
    minimum: ssl.TLSVersion | None = None,
    maximum: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():  # TLSVersion.TLSv1 and TLSv1_1 are deprecated names
        warnings.simplefilter("ignore", DeprecationWarning)
        if ciphers is not None:
            ctx.set_ciphers(ciphers)
        if minimum is not None:
            ctx.minimum_version = minimum
        if maximum is not None:
            ctx.maximum_version = maximum
    return ctx


def handshake(ctx: ssl.SSLContext, port: int) -> tuple[str, str] | None:
    """The (version, suite) agreed with 127.0.0.1:port, or None if the handshake failed."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:
                version, cipher = tls.version(), tls.cipher()
                assert version is not None
                assert cipher is not None
                return version, cipher[0]
        except (ssl.SSLError, ConnectionResetError):
            return None


@contextlib.contextmanager
def permissive_server(cert_dir: Path) -> Iterator[int]:
    """A bare TLS server that accepts TLS 1.0 and any suite: the control."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.load_cert_chain(cert_dir / "server.crt", cert_dir / "server.key")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            with contextlib.suppress(OSError), ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)

    thread = threading.Thread(target=serve, name="permissive-tls")
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.fixture
def control(cert_dir: Path) -> Iterator[int]:
    with permissive_server(cert_dir) as port:
        yield port


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["TLSv1.0", "TLSv1.1"]
)
def test_tls_1_0_and_1_1_are_refused(
    server: ServerThread, control: int, version: ssl.TLSVersion
) -> None:
    old = client(ciphers=LEGACY, minimum=version, maximum=version)
    agreed = handshake(old, control)
    assert agreed is not None, "control: this client can speak the old version"
    assert agreed[0] in {"TLSv1", "TLSv1.1"}
    assert handshake(old, server.port) is None


def test_tls_1_2_with_only_non_aead_suites_is_refused(server: ServerThread, control: int) -> None:
    cbc = client(ciphers=CBC_SUITES, maximum=ssl.TLSVersion.TLSv1_2)
    agreed = handshake(cbc, control)
    assert agreed is not None, "control: a CBC suite is possible with this certificate"
    assert "GCM" not in agreed[1]
    assert handshake(cbc, server.port) is None


def test_tls_1_2_without_forward_secrecy_is_refused(server: ServerThread) -> None:
    # AES-GCM, but a static key exchange: nothing the server's ECDSA key can offer.
    static = client(ciphers="AES128-GCM-SHA256:AES256-GCM-SHA384", maximum=ssl.TLSVersion.TLSv1_2)
    assert handshake(static, server.port) is None


@pytest.mark.parametrize(
    "suite", ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"]
)
def test_tls_1_2_with_ecdhe_and_aead_works_and_chats(server: ServerThread, suite: str) -> None:
    ctx = client(ciphers=suite, maximum=ssl.TLSVersion.TLSv1_2)
    assert handshake(ctx, server.port) == ("TLSv1.2", suite)
    with socket.create_connection((server.host, server.port), timeout=5) as raw:
        tls = ctx.wrap_socket(raw)
        tls.sendall(b'{"type":"hello","nick":"old-client"}\n')
        assert b'"welcome"' in tls.recv(4096)
        tls.close()


def test_tls_1_3_is_preferred_and_nothing_is_compressed(server: ServerThread) -> None:
    with RawClient(server.host, server.port) as modern:
        assert modern.sock.version() == "TLSv1.3"
        assert modern.sock.compression() is None
    ctx = client(maximum=ssl.TLSVersion.TLSv1_2)
    with (
        socket.create_connection((server.host, server.port), timeout=5) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        assert tls.compression() is None


OPENSSL = shutil.which("openssl")


def s_client(port: int, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    assert OPENSSL is not None
    return subprocess.run(
        [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", *args],
        input=stdin,
        capture_output=True,
        timeout=10,
        check=False,
    )


@pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command")
@pytest.mark.parametrize("flag", ["-tls1", "-tls1_1"])
def test_openssl_s_client_cannot_speak_old_tls(
    server: ServerThread, control: int, flag: str
) -> None:
    legacy = ("-cipher", "DEFAULT@SECLEVEL=0")
    assert s_client(control, flag, *legacy).returncode == 0, "control: openssl can speak it"
    result = s_client(server.port, flag, *legacy)
    assert result.returncode != 0
    assert b"Cipher is (NONE)" in result.stdout or b"no peer certificate" in result.stdout


@pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command")
def test_client_initiated_renegotiation_is_refused(server: ServerThread) -> None:
    # "R" on a line of its own makes s_client renegotiate (TLS 1.2 has renegotiation).
    result = s_client(server.port, "-tls1_2", stdin=b"R\n")
    output = result.stdout + result.stderr
    assert b"RENEGOTIATING" in output
    assert b"no renegotiation" in output
