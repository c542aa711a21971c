"""The one fingerprint format: SHA256: and unpadded base64, as SSH prints it."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given
from hypothesis import strategies as st

from chatsecure.errors import ConfigError
from chatsecure.tls import certs

FORMAT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")


def test_fingerprint_is_sha256_of_the_der_certificate(cert_dir: Path) -> None:
    der = certs.load_cert(cert_dir / "server.crt").public_bytes(Encoding.DER)
    printed = certs.cert_fingerprint(cert_dir / "server.crt")
    assert FORMAT.fullmatch(printed)
    digest = base64.b64decode(printed.removeprefix("SHA256:") + "=")
    assert digest == hashlib.sha256(der).digest()


@given(st.binary())
def test_fingerprint_format(der: bytes) -> None:
    printed = certs.fingerprint(der)
    assert FORMAT.fullmatch(printed)
    assert certs.normalize_fingerprint(printed) == printed


def test_normalize_accepts_the_ways_people_paste_it() -> None:
    printed = certs.fingerprint(b"certificate")
    body = printed.removeprefix("SHA256:")
    for pasted in (printed, body, body + "=", f"  {printed}\n", printed + "="):
        assert certs.normalize_fingerprint(pasted) == printed


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SHA256:",
        "SHA256:abc",
        "SHA256:" + "A" * 42,
        "SHA256:" + "A" * 44,
        "SHA256:" + "!" * 43,
        "MD5:" + "A" * 43,
        "ab:cd:ef",
        hashlib.sha256(b"x").hexdigest(),
    ],
)
def test_normalize_refuses_what_is_not_a_sha256_fingerprint(text: str) -> None:
    with pytest.raises(ConfigError, match="SHA-256"):
        certs.normalize_fingerprint(text)


def test_unreadable_certificate_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        certs.cert_fingerprint(tmp_path / "missing.crt")
    (tmp_path / "junk.crt").write_text("not a certificate")
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        certs.cert_fingerprint(tmp_path / "junk.crt")
