"""A private virtual X display (Xvfb), for the GUI tests and the screenshot tool."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
from collections.abc import Iterator

from chatsecure.errors import ConfigError

START_TIMEOUT = 10.0
"""Seconds Xvfb has to report the display number it took."""


@contextlib.contextmanager
def virtual_display(width: int = 1280, height: int = 800, depth: int = 24) -> Iterator[str]:
    """Start Xvfb on a free display number; yield its name (``:N``); stop it afterwards."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise ConfigError("Xvfb is not installed (Debian: apt-get install xvfb)")
    read_fd, write_fd = os.pipe()
    try:
        # -displayfd: Xvfb picks the first free display number and writes it to the pipe
        # once it accepts connections, so there is no race over numbers and no polling.
        proc = subprocess.Popen(  # noqa: S603 - a fixed argument list, no shell
            [
                xvfb,
                "-displayfd",
                str(write_fd),
                "-screen",
                "0",
                f"{width}x{height}x{depth}",
                "-nolisten",
                "tcp",
                "-noreset",
            ],
            pass_fds=(write_fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    finally:
        os.close(write_fd)
    try:
        number = _read_number(read_fd, proc)
        yield f":{number}"
    finally:
        os.close(read_fd)
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _read_number(fd: int, proc: subprocess.Popen[bytes]) -> int:
    data = b""
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], START_TIMEOUT)
        chunk = os.read(fd, 64) if ready else b""
        if not chunk:
            code = proc.poll()
            raise ConfigError(f"Xvfb did not start (exit status {code})")
        data += chunk
    return int(data.strip())
