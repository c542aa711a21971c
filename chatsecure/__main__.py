"""`python -m chatsecure` runs the command line."""

from __future__ import annotations

from chatsecure.cli import main

raise SystemExit(main())
