"""The one place that builds ``SSLContext`` objects: the server's and the client's TLS policy."""

from __future__ import annotations

import _ssl
import ctypes
import functools
import logging
import ssl
import sys
from pathlib import Path
from typing import Final

from chatsecure.errors import ConfigError
from chatsecure.tls.certs import key_of

log = logging.getLogger(__name__)

# Forward secrecy and AEAD only on TLS 1.2; TLS 1.3 suites are all of that already.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"

GROUPS: Final = "X25519:P-256:P-384"
"""Key-exchange groups offered and accepted, in order of preference (Mozilla "intermediate").

OpenSSL's default adds P-521, X448 and the finite-field groups, which that profile rejects."""
FALLBACK_CURVE: Final = "prime256v1"
"""The one group left when ``GROUPS`` cannot be set: P-256, which every TLS 1.3 peer has."""

_SSL_CTRL_SET_GROUPS_LIST: Final = 92
"""``SSL_CTX_set1_groups_list`` is a macro over ``SSL_CTX_ctrl`` with this command (ssl.h)."""
_SSL_VERIFY: Final = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 3}
"""OpenSSL's ``SSL_VERIFY_*`` flags for each of Python's verify modes (``_ssl.c``)."""


def _harden(ctx: ssl.SSLContext, *, tls13_only: bool) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls13_only else ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    _set_groups(ctx)
    return ctx


def _set_groups(ctx: ssl.SSLContext) -> None:
    """Limit key exchange to ``GROUPS``; never wider, at worst P-256 alone.

    Python gains ``SSLContext.set_groups`` in 3.15. Before that the ``ssl`` module has only
    ``set_ecdh_curve``, which keeps one curve, so ``GROUPS`` goes through OpenSSL's own
    ``SSL_CTX_ctrl`` (see ``_set_groups_native``). Should that be impossible, P-256 alone is
    kept: narrower than wanted but inside the policy, where failing open would not be.
    """
    setter = getattr(ctx, "set_groups", None)
    if setter is not None:
        setter(GROUPS)
        return
    if _set_groups_native(ctx, GROUPS):
        return
    _warn_narrowed()
    ctx.set_ecdh_curve(FALLBACK_CURVE)


@functools.cache
def _warn_narrowed() -> None:
    log.warning("cannot set the TLS groups %s here; offering P-256 only", GROUPS)


def _set_groups_native(ctx: ssl.SSLContext, groups: str) -> bool:
    """``SSL_CTX_set1_groups_list(ctx, groups)`` through ctypes; False if it cannot be done.

    The ``SSL_CTX`` pointer is the first field after the object header in CPython's
    ``PySSLContext`` (unchanged since Python 3.2). Before anything is written through it,
    the pointer must give back the context's own options and verify mode as OpenSSL holds
    them, so a changed layout means the fallback, not a write to the wrong place. The
    functions come from the ``_ssl`` module's own handle: the very libssl Python uses.
    """
    lib = _libssl()
    if lib is None:
        return False
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer:
        return False
    if (
        lib.SSL_CTX_get_options(pointer) != ctx.options
        or lib.SSL_CTX_get_verify_mode(pointer) != _SSL_VERIFY[ctx.verify_mode]
    ):
        return False
    if lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode()) == 1:
        return True
    lib.ERR_clear_error()  # or Python's next SSLError would report this failure as its own
    return False


@functools.cache
def _libssl() -> ctypes.CDLL | None:
    """The libssl behind Python's ``ssl`` module, with the functions used typed; or None."""
    if sys.implementation.name != "cpython":
        return None
    try:
        lib = ctypes.CDLL(getattr(_ssl, "__file__", None))  # None: built into python itself
        get_options, get_verify, ctrl, clear = (
            lib.SSL_CTX_get_options,
            lib.SSL_CTX_get_verify_mode,
            lib.SSL_CTX_ctrl,
            lib.ERR_clear_error,
        )
    except (OSError, AttributeError):
        return None
    get_options.argtypes = [ctypes.c_void_p]
    get_options.restype = ctypes.c_uint64
    get_verify.argtypes = [ctypes.c_void_p]
    get_verify.restype = ctypes.c_int
    ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
    ctrl.restype = ctypes.c_long
    clear.argtypes = []
    clear.restype = None
    return lib


class _Encrypted(Exception):
    """The key asks for a passphrase (see ``_load_chain``)."""


def _no_passphrase() -> str:
    raise _Encrypted


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    """Load the pair, or say what is wrong with it. A key encrypted with a passphrase is
    refused: OpenSSL would ask for it on the terminal, where a service has none (and fail with
    'Invalid argument'), and a server would wait at its start for someone to type it."""
    try:
        ctx.load_cert_chain(cert, key, password=_no_passphrase)
    except _Encrypted:
        raise ConfigError(
            f"{key} is encrypted with a passphrase; give its key unencrypted, made with: "
            f"openssl pkey -in {key} -out NEW.key (then chmod 600 NEW.key)"
        ) from None
    except FileNotFoundError as exc:
        # ssl leaves exc.filename None: name the file that is missing.
        missing = cert if not cert.exists() else key
        raise ConfigError(f"cannot read {missing}: no such file") from exc
    except ssl.SSLError as exc:
        if not _names_a_private_key(key):  # OpenSSL says only "PEM lib"
            raise ConfigError(
                f"{key} holds no private key; give --key the key of {cert} "
                "(a file with a 'PRIVATE KEY' block)"
            ) from exc
        raise ConfigError(f"cannot load certificate {cert} with key {key}: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot load certificate {cert} with key {key}: {exc}") from exc


def _names_a_private_key(key: Path) -> bool:
    try:
        return b"PRIVATE KEY-----" in key.read_bytes()
    except OSError:
        return True  # (unreadable: the error as it came says more)


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
        _load_client_ca(ctx, client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def check_client_ca(client_ca: Path) -> None:
    """A ``ConfigError`` if ``server_context`` could not load ``client_ca``."""
    _load_client_ca(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), client_ca)


def _load_client_ca(ctx: ssl.SSLContext, client_ca: Path) -> None:
    try:
        ctx.load_verify_locations(cafile=str(client_ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load client CA {client_ca}: {exc}") from exc


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
        _load_chain(ctx, cert, key or key_of(cert))
    return ctx
