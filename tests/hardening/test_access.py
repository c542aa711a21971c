"""Access control: room password, client certificates, and a server that refuses to start unsafe."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from chatsecure.cli import build_parser
from chatsecure.client.core import ChatClient, Connected, Disconnected, Target
from chatsecure.errors import ConfigError
from chatsecure.protocol import limits
from chatsecure.server import ChatServer
from chatsecure.settings import server_config as settings_config
from chatsecure.testing import RawClient, ServerThread, joined, server_config
from chatsecure.tls import certs
from chatsecure.tls.context import client_context
from chatsecure.tls.trust import KnownServers, TrustPolicy
from tests.hardening.helpers import TLSClient
from tests.helpers import Terminal, wait_for

ROOM = "correct horse battery staple"
"""The room password of the servers in these tests."""


def hello(nick: str, password: str | None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "hello", "nick": nick}
    if password is not None:
        frame["password"] = password
    return frame


def verdict(client: RawClient, timeout: float = 10) -> tuple[str, float]:
    """``welcome`` or the error code, and how long the server took to say it."""
    started = time.monotonic()
    frame = client.recv(timeout)
    took = time.monotonic() - started
    return (frame["type"] if frame["type"] != "error" else frame["code"]), took


# --- room password ------------------------------------------------------------------------


def test_wrong_or_missing_password_gets_auth_failed_and_closed(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server(password=ROOM)
    passwords = [None, "", "wrong", ROOM + " ", ROOM.upper(), ROOM[:-1]]
    # Each from its own address, so that none waits for the failures of the others.
    guests = [
        TLSClient(server.host, server.port, source=f"127.0.0.{10 + i}")
        for i in range(len(passwords))
    ]
    try:
        for guest, password in zip(guests, passwords, strict=True):
            guest.send(hello("guest", password))
        for guest in guests:
            assert verdict(guest)[0] == "auth_failed"
            assert guest.closed(3)
    finally:
        for guest in guests:
            guest.close()
    assert server.online() == []


def test_right_password_gets_in(start_server: Callable[..., ServerThread]) -> None:
    server = start_server(password=ROOM)
    with RawClient(server.host, server.port) as member:
        member.send(hello("member", ROOM))
        kind, took = verdict(member)
        assert (kind, took < 0.3) == ("welcome", True)


def test_each_failure_waits_longer_while_members_chat_undisturbed(
    start_server: Callable[..., ServerThread],
) -> None:
    server = start_server(password=ROOM, msg_rate=0)
    with joined(server.host, server.port) as members:
        for nick in ("alice", "bob"):
            member = RawClient(server.host, server.port)
            members.append(member)
            member.send(hello(nick, ROOM))
            member.expect("welcome")
        alice, bob = members
        alice.expect("join")
        waits: list[float] = []
        latencies: list[float] = []
        for attempt in range(2):
            with RawClient(server.host, server.port) as guesser:
                guesser.send(hello("guesser", f"guess {attempt}"))
                started = time.monotonic()
                # While the guesser waits for its answer, the members chat at full speed.
                while guesser.silent(0.01):
                    sent = time.monotonic()
                    alice.send({"type": "msg", "text": "meanwhile"})
                    bob.expect("msg")
                    latencies.append(time.monotonic() - sent)
                    time.sleep(0.04)
                assert guesser.expect("error")["code"] == "auth_failed"
                waits.append(time.monotonic() - started)
        assert 0.4 < waits[0] < 1.0
        assert waits[1] > 1.6 * waits[0], f"the second failure waited {waits}"
        assert max(latencies) < 0.2, f"members were held up: {max(latencies):.3f} s"
        assert sorted(server.online()) == ["alice", "bob"]


def test_guessing_without_waiting_for_the_answer_gains_nothing(
    start_server: Callable[..., ServerThread],
) -> None:
    """A guesser that hangs up before the answer must not learn a right guess any faster.

    Otherwise the delay protects nothing: a right password answered at once tells itself apart
    from a wrong one (answered late) after a round trip. Parallel guesses wait just as long.
    """
    server = start_server(password=ROOM)
    with RawClient(server.host, server.port) as impatient:
        impatient.send(hello("impatient", "guess 1"))
        assert impatient.silent(0.1)
    results: list[tuple[str, float]] = []

    def guess(password: str) -> None:
        with RawClient(server.host, server.port) as guesser:
            guesser.send(hello("guesser", password))
            results.append(verdict(guesser))

    threads = [threading.Thread(target=guess, args=(p,)) for p in ("guess 2", ROOM)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(kind for kind, _ in results) == ["auth_failed", "welcome"]
    took = dict(results)
    # One failure so far: a wrong guess now waits 1 s (then 2 s), and so must a right one.
    assert took["welcome"] > 0.9, f"the right guess was answered after {took['welcome']:.2f} s"
    # ...and once someone got in, the address starts afresh.
    with RawClient(server.host, server.port) as member:
        member.send(hello("member", ROOM))
        assert verdict(member)[1] < 0.3


# --- client certificates (mutual TLS) -------------------------------------------------------


@pytest.fixture
def client_cas(tmp_path: Path) -> tuple[Path, Path]:
    """Two client CAs: the server's, with alice in it, and another with mallory."""
    ours, theirs = tmp_path / "ca-ours", tmp_path / "ca-theirs"
    certs.generate_client("alice", ours)
    certs.generate_client("ali\u202ece", ours)  # a bidi override in the common name
    certs.generate_client("mallory", theirs)
    return ours, theirs


def mtls_context(ca_dir: Path | None, name: str | None) -> ssl.SSLContext:
    if ca_dir is None or name is None:
        return client_context()
    return client_context(cert=ca_dir / f"{name}.crt", key=ca_dir / f"{name}.key")


def refused_at_handshake(server: ServerThread, context: ssl.SSLContext) -> bool:
    """True if TLS fails; with TLS 1.3 the client may only learn it on its first read."""
    try:
        client = TLSClient(server.host, server.port, context=context)
    except (ssl.SSLError, ConnectionResetError):
        return True
    with client:
        try:
            client.send({"type": "hello", "nick": "intruder"})
            client.recv(3)
        except (EOFError, ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return True
    return False


@pytest.mark.parametrize(("who", "name"), [("no-cert", None), ("other-ca", "mallory")])
def test_client_without_a_certificate_from_the_ca_is_refused_at_the_handshake(
    start_server: Callable[..., ServerThread],
    client_cas: tuple[Path, Path],
    who: str,
    name: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ours, theirs = client_cas
    server = start_server(client_ca=ours / "ca.crt")
    assert refused_at_handshake(server, mtls_context(theirs if name else None, name))
    assert server.call(lambda: len(server.server.connections)) == 0, "it never got a session"
    wait_for(lambda: any("client certificate" in r.getMessage() for r in caplog.records))
    said = [r for r in caplog.records if "client certificate" in r.getMessage()]
    assert said[0].levelname == "WARNING"
    assert "127.0.0.1" in said[0].getMessage(), "the admin is told who was refused"
    with TLSClient(server.host, server.port, context=mtls_context(ours, "alice")) as alice:
        assert alice.join("whatever")["you"]["nick"] == "alice"


def test_certificate_common_name_is_the_nick_whatever_hello_says(
    start_server: Callable[..., ServerThread], client_cas: tuple[Path, Path]
) -> None:
    ours, _ = client_cas
    server = start_server(client_ca=ours / "ca.crt")
    with (
        TLSClient(server.host, server.port, context=mtls_context(ours, "alice")) as alice,
        TLSClient(server.host, server.port, context=mtls_context(ours, "ali\u202ece")) as spoof,
    ):
        assert alice.join("bob")["you"]["nick"] == "alice"
        welcome = spoof.join("carol")
        # The bidi override is stripped, so two people cannot look alike; the suffix tells apart.
        assert welcome["you"]["nick"] == "alice_2"
        assert alice.expect("join")["peer"]["nick"] == "alice_2"


@pytest.mark.parametrize("key", [True, False], ids=["key", "key-beside"])
def test_client_core_presents_its_certificate(
    start_server: Callable[..., ServerThread], client_cas: tuple[Path, Path], key: bool
) -> None:
    ours, _ = client_cas
    server = start_server(client_ca=ours / "ca.crt")
    # Without a key, the one beside the certificate: alice.key, as gencert made them.
    target = Target(
        server.host, server.port, cert=ours / "alice.crt", key=ours / "alice.key" if key else None
    )
    assert admitted_as(target) == "alice"


def test_terminal_client_with_a_certificate_needs_no_nick(
    start_server: Callable[..., ServerThread], client_cas: tuple[Path, Path]
) -> None:
    ours, _ = client_cas
    server = start_server(client_ca=ours / "ca.crt")
    alice = Terminal(f"127.0.0.1:{server.port}", "--cert", str(ours / "alice.crt"), "--accept-new")
    try:
        alice.expect(r"^connected to 'test' as alice \(")
        alice.say("quit")
        assert alice.wait() == 0, alice.stderr
    finally:
        alice.kill()
    nameless = Terminal(f"127.0.0.1:{server.port}", "--accept-new")
    try:
        assert nameless.wait() == 1
        assert "give your nick with --nick NICK" in "\n".join(nameless.stderr)
    finally:
        nameless.kill()


def admitted_as(target: Target) -> str:
    """The nick the server gives a client core that asks for "nobody" with ``target``."""
    client = ChatClient(target, "nobody", TrustPolicy(KnownServers(), accept_new=True))
    client.start()
    try:
        event = client.events.get(timeout=5)
        assert isinstance(event, Connected), event
        return event.welcome.you.nick
    finally:
        client.close()


def test_client_core_presents_a_combined_certificate_not_the_stale_key_beside_it(
    start_server: Callable[..., ServerThread], client_cas: tuple[Path, Path], tmp_path: Path
) -> None:
    ours, theirs = client_cas
    server = start_server(client_ca=ours / "ca.crt")
    # alice's certificate and key in one file, and beside it a key left from another pair.
    pem, stale = tmp_path / "alice.pem", tmp_path / "alice.key"
    pem.write_bytes((ours / "alice.crt").read_bytes() + (ours / "alice.key").read_bytes())
    shutil.copy(theirs / "mallory.key", stale)
    assert admitted_as(Target(server.host, server.port, cert=pem)) == "alice"
    with pytest.raises(ConfigError, match=f"cannot load certificate {pem} with key {stale}"):
        client_context(cert=pem, key=stale)  # a --key given still wins


ASKS_FOR_ITS_CA = "does it admit only clients with a certificate from its CA?"
YESTERDAY = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)


def expired_client(ca_dir: Path, name: str) -> Path:
    """A client certificate (and its key, beside it) from the CA in ``ca_dir`` that expired
    yesterday, made here, not by certs."""
    ca_cert = certs.load_cert(ca_dir / "ca.crt")
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(YESTERDAY - dt.timedelta(days=825))
        .not_valid_after(YESTERDAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    path = ca_dir / f"{name}.crt"
    write_pair(cert, key, path, ca_dir / f"{name}.key")
    return path


@pytest.mark.parametrize(
    ("cert", "hint"),
    [
        (None, f"{ASKS_FOR_ITS_CA} then give yours with --cert"),
        ("mallory", f"{ASKS_FOR_ITS_CA} yours may be from another"),
        (
            "expired",
            f"expired on {YESTERDAY:%Y-%m-%d}, and this machine's clock says "
            f"{dt.datetime.now(dt.UTC):%Y-%m-%d}: if the clock is wrong, set it right; if not, "
            "ask for a new certificate",
        ),
    ],
    ids=["no-cert", "other-ca", "expired"],
)
def test_client_core_not_admitted_at_the_handshake_is_told_what_may_be_wrong(
    start_server: Callable[..., ServerThread],
    client_cas: tuple[Path, Path],
    cert: str | None,
    hint: str,
) -> None:
    ours, theirs = client_cas
    server = start_server(client_ca=ours / "ca.crt")
    policy = TrustPolicy(KnownServers(), accept_new=True)
    given = None if cert is None else theirs / f"{cert}.crt"
    if cert == "expired":  # from the server's own CA, but out of date
        given = expired_client(ours, "carol")
    client = ChatClient(
        Target(server.host, server.port, cert=given), "bob", policy, reconnect=False
    )
    client.start()
    try:
        event = client.events.get(timeout=5)
        assert isinstance(event, Disconnected), event
        # (closed, or with TLS 1.3 reset, by the server, right after the handshake)
        assert event.reason.endswith(f"{hint})"), event.reason
        assert "before welcoming us (" in event.reason
    finally:
        client.close()


# --- the server refuses to start unsafe -----------------------------------------------------


def run_server_cli(*args: str | Path, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    """``chatsecure server`` in a subprocess, on loopback, never advertised."""
    argv = [sys.executable, "-m", "chatsecure", "server", "--host", "127.0.0.1", "--port", "0"]
    argv.append("--no-discovery")
    return subprocess.run(
        [*argv, *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False
    )


def copy_certs(cert_dir: Path, to: Path) -> tuple[Path, Path]:
    to.mkdir()
    cert, key = to / "server.crt", to / "server.key"
    shutil.copy(cert_dir / "server.crt", cert)
    shutil.copy(cert_dir / "server.key", key)
    key.chmod(0o600)
    return cert, key


def test_key_readable_by_others_is_refused_with_the_chmod_to_run(
    cert_dir: Path, tmp_path: Path
) -> None:
    cert, key = copy_certs(cert_dir, tmp_path / "certs")
    key.chmod(0o644)
    result = run_server_cli("--cert", cert, "--key", key)
    assert result.returncode == 1
    assert f"chmod 600 {key}" in result.stderr
    assert "listening" not in result.stdout


def make_cert(out: Path, not_before: dt.datetime, not_after: dt.datetime) -> tuple[Path, Path]:
    """A self-signed server certificate with the validity given, made here, not by certs."""
    out.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = out / "server.crt", out / "server.key"
    write_pair(cert, key, cert_path, key_path)
    return cert_path, key_path


def write_pair(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, cert_path: Path, key_path: Path
) -> None:
    """Write ``cert`` and ``key`` (0600 from its first byte), here, not by certs."""
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def test_expired_certificate_is_refused_with_the_gencert_command(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    cert, key = make_cert(
        tmp_path / "old", now - dt.timedelta(days=400), now - dt.timedelta(days=1)
    )
    result = run_server_cli("--cert", cert, "--key", key)
    assert result.returncode == 1
    # The day, and this machine's: a wrong clock is to be set right, not the identity changed.
    ended, today = f"{now - dt.timedelta(days=1):%Y-%m-%d}", f"{now:%Y-%m-%d}"
    assert f"expired on {ended}, and this machine's clock says {today}" in result.stderr
    assert "if the clock is wrong, set it right; if not," in result.stderr
    assert f"chatsecure gencert --out {cert.parent} --force" in result.stderr


def test_a_client_refusing_a_certificate_for_its_dates_names_its_own_clock(
    start_server: Callable[..., ServerThread], tmp_path: Path
) -> None:
    now = dt.datetime.now(dt.UTC)
    ahead = now + dt.timedelta(days=400)  # made by a machine whose clock was ahead
    cert, key = make_cert(tmp_path / "ahead", ahead, ahead + dt.timedelta(days=825))
    server = start_server(cert=cert, key=key)
    target = Target("localhost", server.port, cafile=cert)
    client = ChatClient(target, "bob", TrustPolicy(KnownServers()), reconnect=False)
    client.start()
    try:
        event = client.events.get(timeout=5)
        assert isinstance(event, Disconnected), event
        assert (
            f"certificate verification failed: certificate is not yet valid (this machine's "
            f"clock says {now:%Y-%m-%d}: if that is wrong, set it right)"
        ) in event.reason
    finally:
        client.close()


def test_a_certificate_not_valid_yet_is_warned_about_with_both_days(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = dt.datetime.now(dt.UTC)
    start = now + dt.timedelta(days=1300)  # made while the clock was years ahead
    cert, _ = make_cert(tmp_path / "ahead", start, start + dt.timedelta(days=825))
    with caplog.at_level(logging.WARNING, logger="chatsecure.tls.certs"):
        certs.check_expiry(cert, 30)
    [warning] = [r.getMessage() for r in caplog.records]
    assert f"is valid only from {start:%Y-%m-%d}, and this machine's clock says " in warning
    assert "clients that check it (--cafile) refuse it until then" in warning


def test_no_certificate_is_dated_by_a_clock_that_cannot_be_right() -> None:
    with pytest.raises(ConfigError, match=r"clock says 1970-01-02, which cannot be right"):
        certs.check_clock(dt.datetime(1970, 1, 2, tzinfo=dt.UTC))
    certs.check_clock(dt.datetime.now(dt.UTC))  # today's is fine


def test_a_certificate_given_as_the_key_is_named_not_a_key(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    cert, _ = make_cert(tmp_path / "pair", now - dt.timedelta(days=1), now + dt.timedelta(days=9))
    copy = tmp_path / "copy.crt"
    copy.write_bytes(cert.read_bytes())
    copy.chmod(0o600)
    result = run_server_cli("--cert", cert, "--key", copy)
    assert result.returncode == 1
    assert f"{copy} holds no private key; give --key the key of {cert}" in result.stderr
    assert "PEM lib" not in result.stderr


def test_a_data_folder_that_is_a_file_is_named_a_file(tmp_path: Path) -> None:
    taken = tmp_path / "data"
    taken.write_text("not a folder\n")
    result = run_server_cli("--data-dir", taken)
    assert result.returncode == 1
    assert f"the data folder {taken} is a file; give a folder" in result.stderr


def test_certificate_expiring_within_30_days_is_warned_about(
    start_server: Callable[..., ServerThread], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = dt.datetime.now(dt.UTC)
    cert, key = make_cert(
        tmp_path / "soon", now - dt.timedelta(days=1), now + dt.timedelta(days=10)
    )
    with caplog.at_level(logging.WARNING, logger="chatsecure.tls.certs"):
        server = start_server(cert=cert, key=key)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("expires in 10 days" in w and "gencert" in w for w in warnings), warnings
    with RawClient(server.host, server.port) as client:  # and it still serves
        client.join("early")


def test_a_running_server_says_when_its_certificate_expires(
    start_server: Callable[..., ServerThread], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Checked at start only, a server up for months never warned: the first sign was a
    start refused after the next reboot."""
    now = dt.datetime.now(dt.UTC)
    cert, key = make_cert(tmp_path / "ending", now - dt.timedelta(days=1), now + SOON)
    with caplog.at_level(logging.WARNING, logger="chatsecure.server"):
        server = start_server(cert=cert, key=key)
        with RawClient(server.host, server.port) as client:
            client.join("early")  # pinned clients go on; the operator is told
            deadline = time.monotonic() + SOON.total_seconds() + 5
            while "has expired" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.1)
    [expired] = [r for r in caplog.records if "has expired" in r.getMessage()]
    assert expired.levelno == logging.ERROR
    assert f"the certificate {cert} has expired" in expired.getMessage()
    assert f"gencert --out {cert.parent} --force" in expired.getMessage()


SOON = dt.timedelta(seconds=2)


def test_a_certificate_renewed_on_disk_is_told_to_take_a_restart(
    start_server: Callable[..., ServerThread], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = dt.datetime.now(dt.UTC)
    cert, key = make_cert(tmp_path / "ending", now - dt.timedelta(days=1), now + SOON)
    renewed, _ = make_cert(tmp_path / "renewed", now, now + dt.timedelta(days=90))
    with caplog.at_level(logging.WARNING, logger="chatsecure.server"):
        start_server(cert=cert, key=key)
        cert.write_bytes(renewed.read_bytes())  # (certbot, say; the server still uses the old)
        deadline = time.monotonic() + SOON.total_seconds() + 5
        while "has expired" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.1)
    assert f"{cert} holds a renewed one: restart the server to use it" in caplog.text


def test_a_ca_issued_certificate_expiring_is_not_told_to_be_made_self_signed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = certs.generate_client("host", tmp_path, days=5)  # issued by a CA, not self-signed
    issuer = certs.load_cert(files.cert).issuer.rfc4514_string()
    with caplog.at_level(logging.WARNING, logger="chatsecure.tls.certs"):
        certs.check_expiry(files.cert, 30)
    [warning] = [r.getMessage() for r in caplog.records]
    assert f"expires in 5 days; have {issuer} issue a new one" in warning
    assert "gencert" not in warning


def test_certificate_good_for_long_is_not_warned_about(
    start_server: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="chatsecure.tls.certs"):
        start_server()
    assert not [r for r in caplog.records if r.name == "chatsecure.tls.certs"]


# --- settings from a TOML file --------------------------------------------------------------


def parse_server_args(*args: str | Path) -> Any:
    return build_parser().parse_args(["server", *map(str, args)])


def test_config_file_values_apply_and_a_flag_wins(tmp_path: Path) -> None:
    (tmp_path / "room").write_text(ROOM + "\nsecond line ignored\n")
    config_file = tmp_path / "chatsecure.toml"
    config_file.write_text(
        'name = "lab 3"\nmax-sessions = 7\nmax_per_ip = 3\nmsg-rate = 2\n'
        'idle-timeout = 30\npassword-file = "room"\ntls13-only = true\n'
    )
    config = settings_config(parse_server_args("--config", config_file, "--max-sessions", "9"))
    assert (config.name, config.max_per_ip, config.msg_rate) == ("lab 3", 3, 2.0)
    assert (config.idle_timeout, config.tls13_only, config.password) == (30.0, True, ROOM)
    assert config.max_sessions == 9, "the command line wins over the file"


def test_config_file_limits_bite_on_a_real_server(tmp_path: Path, cert_dir: Path) -> None:
    config_file = tmp_path / "limits.toml"
    config_file.write_text("[server]\nmax-per-ip = 1\nhost = '127.0.0.1'\nport = 0\n")
    config = settings_config(
        parse_server_args(
            "--config",
            config_file,
            "--cert",
            cert_dir / "server.crt",
            "--key",
            cert_dir / "server.key",
        )
    )
    with ServerThread(config) as server, RawClient(server.host, server.port) as first:
        first.join("first")
        with RawClient(server.host, server.port) as second:
            second.send(hello("second", None))
            assert second.expect("error")["code"] == "too_many_connections"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("max-sesions = 5\n", "unknown setting 'max-sesions'"),
        ('max-sessions = "many"\n', "max_sessions must be an integer, not 'many'"),
        ("tls13-only = 1\n", "tls13_only must be true or false, not 1"),
        ("max-sessions = -1\n", "bad.toml: max-sessions cannot be negative"),
        ("msg-rate = nan\n", "bad.toml: msg-rate must be a number, not nan"),
        ("idle-timeout = inf\n", "bad.toml: idle-timeout must be a number, not inf"),
        ("history = 99999999999999999999\n", "bad.toml: history cannot be more than"),
        ("port = 70000\n", "bad.toml: port must be from 0 to 65535"),
        ("name = 'x'\n[server]\nport = 1\n", "'name' outside \\[server\\]; put every setting"),
        ("server = 'x'\n", "server must be a table"),
        ("name = \n", "not valid TOML"),
    ],
)
def test_bad_config_file_is_refused_with_what_is_wrong(
    tmp_path: Path, text: str, complaint: str
) -> None:
    config_file = tmp_path / "bad.toml"
    config_file.write_text(text)
    with pytest.raises(ConfigError, match=complaint):
        settings_config(parse_server_args("--config", config_file))


def test_a_config_file_not_in_utf_8_is_refused_with_what_to_do(tmp_path: Path) -> None:
    config_file = tmp_path / "latin1.toml"
    config_file.write_bytes('name = "Café"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.toml is not UTF-8 text .*; save it as UTF-8"):
        settings_config(parse_server_args("--config", config_file))


@pytest.mark.parametrize(
    ("flag", "complaint"),
    [
        ("--msg-rate=nan", "msg-rate must be a number, not nan"),
        ("--send-buffer-limit=99999999999999999999", "send-buffer-limit cannot be more than"),
        ("--history=99999999999999999999", "history cannot be more than"),
    ],
)
def test_numbers_no_server_can_use_are_refused_at_start(flag: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=f"^{complaint}"):
        settings_config(parse_server_args(flag))


def test_unknown_config_key_stops_the_cli_with_exit_1(tmp_path: Path, cert_dir: Path) -> None:
    config_file = tmp_path / "typo.toml"
    config_file.write_text("max-sesions = 5\n")
    result = run_server_cli("--config", config_file)
    assert result.returncode == 1
    assert "unknown setting 'max-sesions'" in result.stderr


def test_frames_after_a_hello_that_waits_are_handled_once_the_client_is_in(
    start_server: Callable[..., ServerThread],
) -> None:
    """A right password from an address with a recent failure waits; what follows it waits too.

    Handled before the welcome, a ping was answered before it and a message went nowhere.
    """
    server = start_server(password=ROOM)
    with RawClient(server.host, server.port) as member:
        member.send(hello("member", ROOM))
        member.expect("welcome")
        server.call(server.server.auth_failed, "127.0.0.1")  # a wrong guess from here just now
        with RawClient(server.host, server.port) as late:
            ping, msg = {"type": "ping"}, {"type": "msg", "text": "sent with my hello"}
            late.send_raw(
                b"\n".join(json.dumps(f).encode() for f in (hello("late", ROOM), ping, msg))
            )
            late.send_raw(b"\n")
            time.sleep(0.3)
            states = server.call(
                lambda: sorted(s.protocol.state.value for s in server.server.connections)
            )
            assert states == ["joined", "joining"], "not joined until the server says so"
            assert verdict(late)[0] == "welcome"
            assert late.expect("pong")
            assert member.expect("join")["peer"]["nick"] == "late"
            assert member.expect("msg")["text"] == "sent with my hello"
            assert all(
                server.call(
                    lambda: [
                        s.protocol.state.value == "joined" for s in server.server.sessions.values()
                    ]
                )
            )


# --- the memory of wrong passwords ----------------------------------------------------------


def test_a_spray_of_other_addresses_does_not_wipe_a_guessers_penalty(cert_dir: Path) -> None:
    server = ChatServer(server_config(cert_dir))
    for _ in range(3):
        server.auth_failed("192.0.2.66")
    half = limits.AUTH_TRACKED // 2
    for i in range(half):  # each a wrong password from an address of its own
        server.auth_failed(str(ipaddress.IPv4Address("10.0.0.0") + i))
    server.auth_failed("192.0.2.66")  # the guesser keeps guessing meanwhile
    for i in range(half, limits.AUTH_TRACKED + 2):
        server.auth_failed(str(ipaddress.IPv4Address("10.0.0.0") + i))
    assert server.auth_delay("192.0.2.66") == 0.5 * 2**4, "four failures, remembered"
    assert server.auth_delay("10.0.0.0") == 0, "the table stays bounded: the oldest went"
    assert len(server._auth_failures) == limits.AUTH_TRACKED


def test_an_ipv6_guesser_waits_whichever_address_of_its_64_it_takes(cert_dir: Path) -> None:
    server = ChatServer(server_config(cert_dir))
    server.auth_failed("2001:db8:1:2::1")
    server.auth_failed("2001:db8:1:2:aaaa:bbbb:cccc:dddd")
    assert server.auth_delay("2001:db8:1:2:ffff::7") == 0.5 * 2**2
    assert server.auth_delay("2001:db8:1:3::1") == 0, "the next /64 is someone else"
    server.auth_failed("fe80::1%eth0")
    assert server.auth_delay("fe80::2%eth0") == 1.0, "link-local addresses too"
    server.auth_failed("192.0.2.1")
    assert server.auth_delay("192.0.2.2") == 0, "IPv4 addresses count one by one"
    server.auth_succeeded("2001:db8:1:2::9")
    assert server.auth_delay("2001:db8:1:2::1") == 0, "someone of that /64 knew the password"
