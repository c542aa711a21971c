"""glibc keeps serving big buffers (uvloop's 256 KiB per TLS connection) from fresh mappings.

Each case runs in a Python subprocess of its own: ``mallopt`` changes the whole process.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, json, sys

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "fixed":
    from chatsecure.server import fix_mmap_threshold
    fix_mmap_threshold()
libc.free(libc.malloc(1 << 20))  # a mapped block freed: glibc would raise its threshold
before = libc.mallinfo2().hblkhd
# What uvloop takes for every TLS connection, for 64 of them: more than the heap has spare.
buffers = [libc.malloc(256 << 10) for _ in range(64)]
print(json.dumps({"mapped": libc.mallinfo2().hblkhd - before}))
for buffer in buffers:
    libc.free(buffer)
"""


def mapped_bytes(mode: str) -> int:
    """Bytes newly mapped for 64 ``malloc`` of 256 KiB after a 1 MiB block was freed."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={
            k: v
            for k, v in os.environ.items()
            if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"
        },
    )
    return int(json.loads(done.stdout)["mapped"])


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="glibc 2.33 or later only")
def test_big_buffers_stay_fresh_mappings_once_the_threshold_is_fixed() -> None:
    assert mapped_bytes("default") == 0  # glibc's own way: from the heap, maybe dirty
    # Fixed: fresh mappings, but for what the heap's free top may still serve.
    assert mapped_bytes("fixed") >= 32 * (256 << 10)
