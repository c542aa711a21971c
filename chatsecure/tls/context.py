"""The one place that builds ``SSLContext`` objects: the server's and the client's TLS policy."""

from __future__ import annotations

import ssl
from pathlib import Path

from chatsecure.errors import ConfigError

# Forward secrecy and AEAD only on TLS 1.2; TLS 1.3 suites are all of that already.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _harden(ctx: ssl.SSLContext, *, tls13_only: bool) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls13_only else ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    try:
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ConfigError(f"cannot read {exc.filename}: no such file") from exc
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load certificate {cert} with key {key}: {exc}") from exc


def server_context(
    cert: Path, key: Path, *, tls13_only: bool = False, client_ca: Path | None = None
) -> ssl.SSLContext:
    """TLS 1.2+ (1.3 preferred by OpenSSL), AEAD + ECDHE suites, no compression or renegotiation.

    With ``client_ca`` only clients presenting a certificate signed by that CA get in.
    """
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), tls13_only=tls13_only)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_chain(ctx, cert, key)
    if client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load client CA {client_ca}: {exc}") from exc
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(
    cafile: Path | None = None,
    *,
    tls13_only: bool = False,
    cert: Path | None = None,
    key: Path | None = None,
) -> ssl.SSLContext:
    """The client's context.

    With ``cafile``: the standard chain and host-name checks. Without it the handshake itself
    does not judge the certificate; the caller must check the fingerprint against the trust
    store (``chatsecure.tls.trust``) before it sends a single byte of chat.
    """
    if cafile is not None:
        try:
            ctx = ssl.create_default_context(cafile=str(cafile))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load CA file {cafile}: {exc}") from exc
        ctx = _harden(ctx, tls13_only=tls13_only)
    else:
        ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), tls13_only=tls13_only)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # trust on first use: the pin check follows the handshake
    if cert is not None:
        _load_chain(ctx, cert, key or cert)
    return ctx
