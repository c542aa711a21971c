"""The window's urgency hint, which Tk does not offer: ``wm attributes`` on X11 knows only
``-alpha``, ``-topmost``, ``-zoomed``, ``-fullscreen`` and ``-type`` (Tk 8.6).

The hint is a flag in the window's ``WM_HINTS`` (ICCCM 4.1.2.4): window managers and task bars
show such a window as wanting attention (a flashing entry, a mark) until the flag is cleared.
It is set through Xlib on a connection of our own to the display the window is on. Elsewhere
than X11, or without Xlib, nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import tkinter as tk
from typing import Any

log = logging.getLogger(__name__)

URGENCY_HINT = 1 << 8
"""``XUrgencyHint``: the bit of ``WM_HINTS.flags`` that asks for the user's attention."""


class _WMHints(ctypes.Structure):
    """Xlib's ``XWMHints``."""

    _fields_ = (
        ("flags", ctypes.c_long),
        ("input", ctypes.c_int),
        ("initial_state", ctypes.c_int),
        ("icon_pixmap", ctypes.c_ulong),
        ("icon_window", ctypes.c_ulong),
        ("icon_x", ctypes.c_int),
        ("icon_y", ctypes.c_int),
        ("icon_mask", ctypes.c_ulong),
        ("window_group", ctypes.c_ulong),
    )


@functools.cache
def _load() -> Any:  # noqa: ANN401 - a ctypes library
    """Xlib with the prototypes used here, or None without it (loaded once)."""
    name = ctypes.util.find_library("X11") or "libX11.so.6"
    try:
        xlib = ctypes.CDLL(name)
    except OSError as exc:
        log.debug("no Xlib, so no urgency hint: %s", exc)
        return None
    xlib.XOpenDisplay.argtypes = [ctypes.c_char_p]
    xlib.XOpenDisplay.restype = ctypes.c_void_p
    xlib.XCloseDisplay.argtypes = [ctypes.c_void_p]
    xlib.XQueryTree.argtypes = [
        ctypes.c_void_p,
        ctypes.c_ulong,
        ctypes.POINTER(ctypes.c_ulong),
        ctypes.POINTER(ctypes.c_ulong),
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(ctypes.c_uint),
    ]
    xlib.XGetWMHints.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
    xlib.XGetWMHints.restype = ctypes.POINTER(_WMHints)
    xlib.XSetWMHints.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.POINTER(_WMHints)]
    xlib.XFree.argtypes = [ctypes.c_void_p]
    xlib.XSync.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return xlib


def set_urgent(root: tk.Tk, urgent: bool) -> bool:
    """Set (or clear) the urgency hint of the window ``root``; whether it could be done."""
    if root.tk.call("tk", "windowingsystem") != "x11" or not root.winfo_exists():
        return False
    xlib = _load()
    if xlib is None:
        return False
    display = xlib.XOpenDisplay(root.winfo_screen().encode())
    if not display:
        return False
    try:
        # The window managers see Tk's wrapper, the parent of the toplevel's own window.
        wrapper = _parent(xlib, display, root.winfo_id())
        if wrapper is None:
            return False
        hints = xlib.XGetWMHints(display, wrapper)
        value = _WMHints() if not hints else hints.contents
        value.flags = value.flags | URGENCY_HINT if urgent else value.flags & ~URGENCY_HINT
        xlib.XSetWMHints(display, wrapper, ctypes.byref(value))
        if hints:
            xlib.XFree(hints)
        xlib.XSync(display, 0)
        return True
    finally:
        xlib.XCloseDisplay(display)


def _parent(xlib: Any, display: int, window: int) -> int | None:  # noqa: ANN401
    root, parent = ctypes.c_ulong(), ctypes.c_ulong()
    children, count = ctypes.c_void_p(), ctypes.c_uint()
    ok = xlib.XQueryTree(
        display,
        window,
        ctypes.byref(root),
        ctypes.byref(parent),
        ctypes.byref(children),
        ctypes.byref(count),
    )
    if children:
        xlib.XFree(children)
    return parent.value if ok and parent.value else None
