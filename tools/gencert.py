#!/usr/bin/env python3
"""Make the server's self-signed certificate; the same code as ``chatsecure gencert``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chatsecure.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["gencert", *sys.argv[1:]]))
