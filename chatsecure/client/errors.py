"""The one place where low-level exceptions become a sentence for the user.

The terminal and the desktop client both show these sentences. A sentence says what went
wrong, not where: the front end knows which server it was connecting to and names it around
the sentence (the GUI's "Could not connect to [::1]:7467: ...", the terminal's "cannot connect
to [::1]:7467: ..."), so the address is shown once, in one format.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import ssl

from chatsecure.errors import ChatError
from chatsecure.tls.certs import clock_says

NOT_TLS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "UNKNOWN_PROTOCOL",
        "HTTP_REQUEST",
        "HTTPS_PROXY_REQUEST",
        "PACKET_LENGTH_TOO_LONG",
    }
)
"""OpenSSL reasons meaning that the other end answered, but not with TLS."""

UNREACHABLE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN})
"""Errors of a connect that found no way to the address."""

OUT_OF_DATE = frozenset({9, 10})
"""OpenSSL's X509_V_ERR_CERT_NOT_YET_VALID and X509_V_ERR_CERT_HAS_EXPIRED: said with this
machine's date, as its clock may be what is wrong."""

_ERRNO = re.compile(r"\[Errno (\d+)\]")
"""How each failure is named in asyncio's "Multiple exceptions: ..." message."""


def describe_error(exc: BaseException) -> str:
    """One sentence for ``exc``; an exception nobody expected says so and how to learn more."""
    match exc:
        case ChatError():
            return str(exc)
        case socket.gaierror(errno=socket.EAI_AGAIN):
            return f"the host name cannot be looked up now ({exc.strerror}): is the network up?"
        case socket.gaierror():
            return f"unknown host ({exc.strerror}): is the name spelled right?"
        case ConnectionRefusedError():
            return "connection refused: no chatsecure server is listening on that port"
        case TimeoutError():
            return "timed out: the server did not answer (is it up, and is the address right?)"
        case ssl.SSLCertVerificationError(verify_code=code) if code in OUT_OF_DATE:
            return (
                f"certificate verification failed: {exc.verify_message} ({clock_says()}: if "
                "that is wrong, set it right)"
            )
        case ssl.SSLCertVerificationError():
            return f"certificate verification failed: {exc.verify_message}"
        case ssl.SSLError() if getattr(exc, "reason", None) in NOT_TLS:
            return "that address answers, but not with TLS — is it a chatsecure server?"
        case ssl.SSLError():
            # Errors from OpenSSL carry ``reason``; an SSLError made in Python code does not.
            return f"TLS failure: {getattr(exc, 'reason', None) or exc}"
        case ConnectionResetError() | BrokenPipeError():
            return "the connection was reset"
        case OSError(errno=int(code)) if code in UNREACHABLE:
            return f"the address is unreachable ({os.strerror(code).lower()}): check it"
        case OSError(errno=int(code)):
            # Not exc.strerror: asyncio's names the address ("Connect call failed (...)").
            return os.strerror(code)
        case OSError() if str(exc).startswith("Multiple exceptions"):
            return _several(exc)
        case OSError():
            return str(exc)
    return f"internal error ({type(exc).__name__}: {exc}); run again with -v for the details"


def _several(exc: OSError) -> str:
    """asyncio's error for a host whose addresses all failed: one sentence if they agree."""
    codes = {int(code) for code in _ERRNO.findall(str(exc))}
    if len(codes) == 1:
        code = codes.pop()
        return describe_error(OSError(code, os.strerror(code)))
    return f"none of the host's addresses answered ({exc})"
