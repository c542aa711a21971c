"""Self-signed certificates (ECDSA P-256) and SHA-256 fingerprints."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import ipaddress
import logging
import re
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import ifaddr
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from chatsecure.errors import ConfigError
from chatsecure.files import make_private_folder
from chatsecure.protocol.limits import CERT_DAYS
from chatsecure.tls.trust import save_private

log = logging.getLogger(__name__)

CERT_NAME = "server.crt"
KEY_NAME = "server.key"
DEFAULT_CERT_DIR = Path("certs")
"""Where the server looks for its certificate and key, relative to the working directory."""
BACKDATE = dt.timedelta(minutes=5)
"""How far before its making a certificate starts to be valid: a peer whose clock runs a
little slow must not see a fresh certificate as "not yet valid". The end moves back by as
much, so that a certificate made for N days lasts N days, as ``gencert`` says."""
CLOCK_FLOOR = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
"""No machine runs this version before this day: a clock that says so is wrong (a board
without a clock battery, before the network set it), and a certificate made then would carry
its date."""


@dataclass(frozen=True, slots=True)
class CertFiles:
    """A certificate and its private key on disk."""

    cert: Path
    key: Path

    @classmethod
    def in_dir(cls, directory: Path) -> CertFiles:
        return cls(directory / CERT_NAME, directory / KEY_NAME)


def fingerprint(der: bytes) -> str:
    """The one fingerprint format used everywhere: ``SHA256:`` + unpadded base64, as SSH prints."""
    digest = base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def normalize_fingerprint(text: str) -> str:
    """Accept a fingerprint as printed (``SHA256:...``), with or without the prefix or padding."""
    body = text.strip().removeprefix("SHA256:").rstrip("=")
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except ValueError:
        raw = b""
    if len(raw) != hashlib.sha256().digest_size:
        raise ConfigError(
            f"not a SHA-256 fingerprint: {text!r} (expected SHA256:<43 base64 chars>)"
        )
    return "SHA256:" + base64.b64encode(raw).decode().rstrip("=")


def cert_fingerprint(path: Path) -> str:
    """Fingerprint of the PEM certificate at ``path``."""
    return fingerprint(load_cert(path).public_bytes(serialization.Encoding.DER))


_PRIVATE_KEY = re.compile(rb"^-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----", re.MULTILINE)
"""The first line of a PEM private key of any kind (``PRIVATE KEY``, ``EC PRIVATE KEY``...)."""


def key_of(cert: Path) -> Path:
    """The key of a certificate given without ``--key``.

    The certificate's own file if it holds a private key too (one PEM for both): a stale key
    left beside it must not be taken instead. Otherwise the key beside it, named like it with
    ``.key`` (``/x/bob.crt``, ``/x/bob.key``), as ``gencert`` writes them.
    """
    try:
        combined = _PRIVATE_KEY.search(cert.read_bytes()) is not None
    except OSError:
        combined = False  # missing or unreadable: loading it names the problem
    return cert if combined else cert.with_suffix(".key")


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read certificate {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM certificate") from exc


def common_name(cert: x509.Certificate) -> str | None:
    """The certificate's common name, if it has one."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else None
    return value if isinstance(value, str) else None


def local_addresses(*, link_local: bool = False) -> list[str]:
    """Every IP address configured on this machine's interfaces (link-local ones, unscoped,
    only with ``link_local``)."""
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            addr = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
            if not link_local and ipaddress.ip_address(addr).is_link_local:
                continue
            if addr not in found:
                found.append(addr)
    return found


def default_sans() -> list[str]:
    """Names a client may use for this machine: localhost, the host name, ``.local``, its IPs."""
    host = socket.gethostname().split(".")[0] or "localhost"
    names = ["localhost", host, f"{host}.local", "127.0.0.1", "::1", *local_addresses()]
    return list(dict.fromkeys(names))


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _sign(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    days: int,
    extensions: list[tuple[x509.ExtensionType, bool]],
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None = None,
) -> x509.Certificate:
    """A certificate for ``key``, valid for exactly ``days`` from ``BACKDATE`` ago.

    Self-signed unless ``issuer`` (its name and key) is given.
    """
    issuer_name, signer = issuer or (subject, key)
    now = dt.datetime.now(dt.UTC)
    check_clock(now)
    # Whole seconds, as X.509 stores them, so the lifetime is exact to the second.
    start = now.replace(microsecond=0) - BACKDATE
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA256())


def generate(
    out_dir: Path,
    *,
    days: int = CERT_DAYS,
    extra_sans: Iterable[str] = (),
    force: bool = False,
    common_name: str | None = None,
) -> CertFiles:
    """Write a new self-signed ECDSA P-256 certificate (0644) and key (0600) into ``out_dir``."""
    if days < 1:
        raise ConfigError("--days must be at least 1")
    files = CertFiles.in_dir(out_dir)
    existing = [p for p in (files.cert, files.key) if p.exists()]
    if existing and not force:
        raise ConfigError(f"{existing[0]} exists; pass --force to replace it")
    sans = list(dict.fromkeys([*default_sans(), *extra_sans]))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _sign(
        _name(common_name or socket.gethostname() or "chatsecure"),
        key,
        days,
        [
            (x509.SubjectAlternativeName([_san(s) for s in sans]), False),
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ],
    )
    _write_pair(files, cert, key)
    return files


def _write_pair(files: CertFiles, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with _writing(files.key.parent, "cannot make the folder"):
        make_private_folder(files.key.parent)  # (it holds the key)
    with _writing(files.key, "cannot write the key"):
        save_private(files.key, key_pem)
    with _writing(files.cert, "cannot write the certificate"):
        save_private(files.cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


@contextlib.contextmanager
def _writing(path: Path, what: str) -> Iterator[None]:
    """Turn an ``OSError`` into a ``ConfigError`` that names ``path``."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from exc


CA_NAME = "ca"


def _load_or_make_ca(
    ca_dir: Path, days: int
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    files = CertFiles(ca_dir / f"{CA_NAME}.crt", ca_dir / f"{CA_NAME}.key")
    if files.cert.exists() and files.key.exists():
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{files.key} is not an ECDSA key")
        return load_cert(files.cert), key
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    cert = _sign(
        _name("chatsecure client CA"),
        key,
        days,
        [(x509.BasicConstraints(ca=True, path_length=0), True), (usage, True)],
    )
    _write_pair(files, cert, key)
    log.info("made a client CA in %s", files.cert)
    return cert, key


def generate_client(
    name: str, ca_dir: Path, *, days: int = CERT_DAYS, force: bool = False
) -> CertFiles:
    """A client certificate with common name ``name``, signed by the CA in ``ca_dir``.

    The CA (``ca.crt``, ``ca.key``) is made on first use; give ``ca.crt`` to the server as
    ``--client-ca``, and ``<name>.crt``/``<name>.key`` to that person's client.
    """
    if not name.strip() or "/" in name:
        raise ConfigError("--client needs a name without '/'")
    files = CertFiles(ca_dir / f"{name}.crt", ca_dir / f"{name}.key")
    if (files.cert.exists() or files.key.exists()) and not force:
        raise ConfigError(f"{files.cert} exists; pass --force to replace it")
    ca_cert, ca_key = _load_or_make_ca(ca_dir, days)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _sign(
        _name(name),
        key,
        days,
        [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        ],
        issuer=(ca_cert.subject, ca_key),
    )
    _write_pair(files, cert, key)
    return files


def check_key_permissions(key: Path) -> None:
    """Refuse a private key that other users can read."""
    try:
        mode = key.stat().st_mode & 0o777
    except OSError as exc:
        raise ConfigError(f"cannot read key {key}: {exc.strerror}") from exc
    if mode & 0o077:
        raise ConfigError(
            f"the key {key} can be read by other users (mode {mode:o}); "
            f"fix it with: chmod 600 {key}"
        )


def check_clock(now: dt.datetime) -> None:
    """Refuse to date a certificate by a clock that is plainly wrong (see ``CLOCK_FLOOR``)."""
    if now < CLOCK_FLOOR:
        raise ConfigError(
            f"{clock_says(now)}, which cannot be right: set the clock first (a certificate "
            "made now would be dated by it)"
        )


def clock_says(now: dt.datetime | None = None) -> str:
    """This machine's date, for messages about dates: its clock may be what is wrong."""
    return f"this machine's clock says {day(now or dt.datetime.now(dt.UTC))}"


def day(when: dt.datetime) -> str:
    return f"{when:%Y-%m-%d}"


def out_of_date(cert: x509.Certificate, now: dt.datetime | None = None) -> str | None:
    """What is wrong with ``cert``'s dates now ("expired on ...", "is valid only from ..."),
    None if nothing is."""
    now = now or dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc <= now:
        return f"expired on {day(cert.not_valid_after_utc)}"
    if cert.not_valid_before_utc > now:
        return f"is valid only from {day(cert.not_valid_before_utc)}"
    return None


def check_expiry(cert: Path, warn_days: int, now: dt.datetime | None = None) -> None:
    """Refuse an expired certificate; warn when it expires within ``warn_days``, or is not
    valid yet. Each names the day, and this machine's: the clock may be what is wrong."""
    now = now or dt.datetime.now(dt.UTC)
    loaded = load_cert(cert)
    wrong, end = out_of_date(loaded, now), loaded.not_valid_after_utc
    if wrong is not None and end <= now:
        raise ConfigError(
            f"the certificate {cert} {wrong}, and {clock_says(now)}: if the clock is wrong, "
            f"set it right; if not, {renewal(cert)}"
        )
    left = (end - now).total_seconds() / 86400
    if left < warn_days:
        log.warning("the certificate %s expires in %.0f days; %s", cert, left, renewal(cert))
    if wrong is not None:  # not valid yet
        log.warning(
            "the certificate %s %s, and %s: clients that check it (--cafile) refuse it until "
            "then; if the clock was wrong when it was made, %s",
            cert,
            wrong,
            clock_says(now),
            renewal(cert),
        )


def renewal(path: Path) -> str:
    """How to replace the certificate at ``path``: ours (self-signed) or a CA's."""
    cert = load_cert(path)
    if cert.issuer != cert.subject:
        return f"have {cert.issuer.rfc4514_string()} issue a new one for the same names"
    return (
        f"make a new one with `chatsecure gencert --out {path.parent} --force` "
        "(clients will see a new fingerprint)"
    )


def must_make(files: CertFiles, *, allowed: bool) -> bool:
    """Whether the pair is to be made: neither file exists, they have the default names side
    by side, and making it is ``allowed``; a ``ConfigError`` for a pair missing otherwise.
    Makes nothing."""
    if files.cert.exists() and files.key.exists():
        return False
    if files.cert.exists() != files.key.exists():
        cert_there = files.cert.exists()
        present, missing = (files.cert, files.key) if cert_there else (files.key, files.cert)
        flag = "--key" if cert_there else "--cert"
        raise ConfigError(
            f"{present} exists but {missing} does not: give the right one with {flag}, or "
            "make a new pair with `chatsecure gencert --force` (clients that trusted the old "
            "certificate will be warned that it changed)"
        )
    if not allowed or files.cert.parent != files.key.parent or files.cert.name != CERT_NAME:
        raise ConfigError(
            f"{files.cert} does not exist (is the path right?); to make a new certificate, "
            f"`chatsecure gencert --out DIR` makes DIR/{CERT_NAME} and its key"
        )
    return True
