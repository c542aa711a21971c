"""tools/gencert.py and chatsecure gencert: the certificate the server uses."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from chatsecure.errors import ConfigError
from chatsecure.protocol.limits import CERT_DAYS
from chatsecure.testing import RawClient, ServerThread, joined
from chatsecure.tls import certs
from tests.helpers import CHATSECURE

ROOT = Path(__file__).resolve().parents[2]
GENCERT = [sys.executable, str(ROOT / "tools" / "gencert.py")]


def run(command: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=60, check=False
    )


def sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    """The DNS names and IP addresses a certificate names."""
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(ext.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}
    return dns, ips


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One run of tools/gencert.py with extra names, shared by the checks below."""
    out = tmp_path_factory.mktemp("gencert") / "certs"
    result = run(GENCERT, "--out", str(out), "--san", "chat.example.test", "--san", "192.0.2.7")
    assert result.returncode == 0, result.stderr
    return out, result


def test_tool_writes_a_certificate_the_server_loads(
    made: tuple[Path, subprocess.CompletedProcess[str]], start_server: Callable[..., ServerThread]
) -> None:
    out, result = made
    server = start_server(cert=out / "server.crt", key=out / "server.key")
    fingerprint = certs.cert_fingerprint(out / "server.crt")
    assert server.fingerprint == fingerprint
    assert f"certificate fingerprint: {fingerprint}" in result.stdout
    with RawClient(server.host, server.port) as client:
        der = client.sock.getpeercert(binary_form=True)
        assert der is not None
        assert certs.fingerprint(der) == fingerprint
    with joined(server.host, server.port, "alice", "bob") as (alice, bob):
        alice.send({"type": "msg", "text": "over the new cert"})
        assert bob.expect("msg")["text"] == "over the new cert"


def test_sans_name_every_way_to_reach_this_machine(
    made: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, _ = made
    dns, ips = sans(certs.load_cert(out / "server.crt"))
    host = socket.gethostname().split(".")[0]
    assert {"localhost", host, f"{host}.local", "chat.example.test"} <= dns
    assert {"127.0.0.1", "::1", "192.0.2.7"} <= ips
    assert set(certs.local_addresses()) <= ips
    assert all(not ipaddress.ip_address(ip).is_link_local for ip in ips)


def test_key_is_p256_and_readable_by_its_owner_only(
    made: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, result = made
    assert stat.S_IMODE((out / "server.key").stat().st_mode) == 0o600
    assert "(the key mode 0600)" in result.stdout  # what it says is what it did (the cert: 0644)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700  # made by it: as the server makes its own
    cert = certs.load_cert(out / "server.crt")
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is False


def test_default_validity_is_825_days(made: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    cert = certs.load_cert(made[0] / "server.crt")
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=CERT_DAYS)
    assert f"valid {CERT_DAYS} days" in made[1].stdout
    assert cert.not_valid_before_utc <= dt.datetime.now(dt.UTC)


def test_refuses_to_overwrite_without_force(
    made: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    out, _ = made
    before = (out / "server.crt").read_bytes(), (out / "server.key").read_bytes()
    result = run(GENCERT, "--out", str(out))
    assert result.returncode == 1
    assert "--force" in result.stderr
    assert ((out / "server.crt").read_bytes(), (out / "server.key").read_bytes()) == before


def test_force_replaces_the_pair(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    assert run(CHATSECURE, "gencert", "--out", str(out)).returncode == 0
    first = certs.cert_fingerprint(out / "server.crt")
    result = run(CHATSECURE, "gencert", "--out", str(out), "--force")
    assert result.returncode == 0, result.stderr
    assert certs.cert_fingerprint(out / "server.crt") != first
    assert stat.S_IMODE((out / "server.key").stat().st_mode) == 0o600


def test_days_is_honoured_exactly(tmp_path: Path) -> None:
    started = dt.datetime.now(dt.UTC)
    result = run(CHATSECURE, "gencert", "--out", str(tmp_path), "--days", "3")
    assert result.returncode == 0, result.stderr
    assert "valid 3 days" in result.stdout
    cert = certs.load_cert(tmp_path / "server.crt")
    # Exactly the days promised, from a start a few minutes back (for clocks running slow).
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=3)
    assert started - dt.timedelta(minutes=10) < cert.not_valid_before_utc <= started
    assert cert.not_valid_after_utc <= started + dt.timedelta(days=3)


def test_client_certificate_and_its_ca_last_exactly_the_days_given(tmp_path: Path) -> None:
    result = run(CHATSECURE, "gencert", "--client", "alice", "--ca", str(tmp_path), "--days", "5")
    assert result.returncode == 0, result.stderr
    for name in ("alice.crt", "ca.crt"):
        cert = certs.load_cert(tmp_path / name)
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert lifetime == dt.timedelta(days=5), name


@pytest.mark.parametrize(
    "name",
    ["b" * 33, " ", "\u200b", "tab\tx", "nl\nx", " padded"],
    ids=["too-long", "blank", "invisible", "tab", "newline", "padded"],
)
def test_a_client_name_that_cannot_be_a_nick_is_refused(tmp_path: Path, name: str) -> None:
    result = run(CHATSECURE, "gencert", "--client", name, "--ca", str(tmp_path))
    assert result.returncode == 1
    assert "the name is the nick in the room, 1 to 32 visible characters" in result.stderr
    assert list(tmp_path.iterdir()) == [], "no CA, no pair"


def test_an_empty_client_name_is_named_as_the_problem(tmp_path: Path) -> None:
    result = run(CHATSECURE, "gencert", "--client", "", "--ca", str(tmp_path))
    assert result.returncode == 1
    assert "--client '': the name is the nick in the room" in result.stderr


@pytest.mark.parametrize("days", ["0", "-5"])
def test_days_below_one_is_refused(tmp_path: Path, days: str) -> None:
    result = run(CHATSECURE, "gencert", "--out", str(tmp_path), "--days", days)
    assert result.returncode != 0
    assert not (tmp_path / "server.key").exists()


def test_key_file_is_private_even_with_a_lax_umask(tmp_path: Path) -> None:
    result = subprocess.run(
        ["sh", "-c", 'umask 000 && exec "$@"', "sh", *GENCERT, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((tmp_path / "server.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "server.crt").stat().st_mode) == 0o644  # nobody else writes


def test_half_a_pair_is_not_silently_replaced(tmp_path: Path) -> None:
    certs.generate(tmp_path)
    (tmp_path / "server.key").unlink()
    with pytest.raises(ConfigError, match=r"server\.key does not: give the right one with --key"):
        certs.must_make(certs.CertFiles.in_dir(tmp_path), allowed=True)


def test_the_cas_own_name_is_no_client_name(tmp_path: Path) -> None:
    run(CHATSECURE, "gencert", "--client", "alice", "--ca", str(tmp_path))
    ca = (tmp_path / "ca.crt").read_bytes()
    result = run(CHATSECURE, "gencert", "--client", "ca", "--ca", str(tmp_path), "--force")
    assert result.returncode == 1
    assert "that name is the CA's own" in result.stderr
    assert (tmp_path / "ca.crt").read_bytes() == ca
