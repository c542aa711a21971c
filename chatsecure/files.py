"""Files and folders of the server and the clients that only their owner may read."""

from __future__ import annotations

import errno
import os
from pathlib import Path

PRIVATE_FOLDER = 0o700


def make_private_folder(path: Path) -> None:
    """Make ``path`` and each missing folder above it, every one of them 0700 (``mkdir``'s
    ``parents=True`` would make all but the last with the umask's mode). A folder there
    already is left as it is. Raises ``OSError`` (``NotADirectoryError`` where a file is in
    the way, as ``mkdir`` says it)."""
    for folder in reversed([path, *path.parents]):
        if folder.is_dir():
            continue
        if folder.exists() or folder.is_symlink():  # a file, a dangling link: in the way
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
        folder.mkdir(mode=PRIVATE_FOLDER, exist_ok=True)
