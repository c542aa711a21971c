"""The TLS policy of server and client, checked with real handshakes on loopback."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

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


@pytest.mark.parametrize("key_format", ["pkcs8", "traditional"])
def test_a_certificate_alone_takes_the_key_in_its_own_file_before_the_one_beside_it(
    tmp_path: Path, key_format: str
) -> None:
    pair, old = certs.generate(tmp_path / "pair"), certs.generate(tmp_path / "old")
    key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8
        if key_format == "pkcs8"
        else serialization.PrivateFormat.TraditionalOpenSSL,  # "BEGIN EC PRIVATE KEY"
        serialization.NoEncryption(),
    )
    pem, stale = tmp_path / "bob.pem", tmp_path / "bob.key"
    pem.write_bytes(pair.cert.read_bytes() + key_pem)
    shutil.copy(old.key, stale)
    assert certs.key_of(pem) == pem
    client_context(cert=pem)  # loads: the stale key beside it is not taken
    # A certificate without its key: the key beside it, there or not (then named as missing).
    assert certs.key_of(pair.cert) == pair.key
    lone = tmp_path / "lone.crt"
    shutil.copy(pair.cert, lone)
    assert certs.key_of(lone) == tmp_path / "lone.key"
    with pytest.raises(ConfigError, match=f"cannot read {tmp_path / 'lone.key'}: no such file"):
        client_context(cert=lone)


def test_a_key_with_a_passphrase_is_refused_with_how_to_unlock_it(tmp_path: Path) -> None:
    """Not asked for on the terminal: a service has none, and a start must not wait on one."""
    pair = certs.generate(tmp_path / "pair")
    key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    said = f"{locked} is encrypted with a passphrase; .* openssl pkey -in {locked} -out NEW.key"
    with pytest.raises(ConfigError, match=said):
        server_context(pair.cert, locked)
    with pytest.raises(ConfigError, match=said):
        client_context(cert=pair.cert, key=locked)


# --- key-exchange groups: X25519, P-256 and P-384 only (Mozilla "intermediate") -------------

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command")


def s_client_groups(port: int, group: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """``openssl s_client`` offering only ``group`` to 127.0.0.1:port; it exits at EOF."""
    assert OPENSSL is not None
    return subprocess.run(
        [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-groups", group, *flags],
        input="",
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


@needs_openssl
@pytest.mark.parametrize(
    ("group", "shown"), [("X25519", "X25519"), ("P-256", "prime256v1"), ("P-384", "secp384r1")]
)
def test_server_agrees_on_x25519_p256_and_p384(
    server: ServerThread, group: str, shown: str
) -> None:
    result = s_client_groups(server.port, group, "-tls1_3")
    assert result.returncode == 0, result.stdout + result.stderr
    # s_client names the group it used, e.g. "Server Temp Key: X25519, 253 bits".
    assert re.search(rf"Server Temp Key: (ECDH, )?{shown}\b", result.stdout), result.stdout


@needs_openssl
@pytest.mark.parametrize("group", ["P-521", "X448", "ffdhe2048"])
def test_server_refuses_other_groups(server: ServerThread, group: str) -> None:
    control = s_client_groups(server.port, "X25519", "-tls1_3")
    assert control.returncode == 0, "control: the same command with X25519 connects"
    result = s_client_groups(server.port, group, "-tls1_3")
    assert result.returncode != 0, result.stdout
    assert "Cipher is (NONE)" in result.stdout


@needs_openssl
def test_tls_1_2_client_offering_refused_groups_first_gets_p256(server: ServerThread) -> None:
    # In TLS 1.2 the client's group list also limits the curve of the server's ECDSA
    # certificate (P-256), so a TLS 1.2 client must list P-256; the others are passed over.
    result = s_client_groups(server.port, "P-521:X448:ffdhe2048:P-256", "-tls1_2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Server Temp Key: ECDH, prime256v1\b", result.stdout), result.stdout


def one_group_server(cert_dir: Path, curve: str) -> tuple[socket.socket, ssl.SSLContext]:
    """A listening socket on 127.0.0.1 and a plain server context offering only ``curve``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_dir / "server.crt", cert_dir / "server.key")
    ctx.set_ecdh_curve(curve)
    listener = socket.create_server(("127.0.0.1", 0))
    return listener, ctx


@pytest.mark.parametrize(
    ("curve", "agrees"), [("prime256v1", True), ("secp384r1", True), ("secp521r1", False)]
)
def test_client_offers_only_the_allowed_groups(cert_dir: Path, curve: str, agrees: bool) -> None:
    listener, server_ctx = one_group_server(cert_dir, curve)
    outcome: list[str] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    outcome.append(tls.version() or "")
            except (ssl.SSLError, OSError) as exc:
                outcome.append(type(exc).__name__)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        port = listener.getsockname()[1]
        if agrees:
            assert handshake(client_context(), port) == "TLSv1.3"
        else:
            with pytest.raises(ssl.SSLError):
                handshake(client_context(), port)
    finally:
        thread.join(10)
        listener.close()
    assert (outcome[0] == "TLSv1.3") is agrees, outcome
