"""``chatsecure history``: print the newest lines of a server's history, read-only.

The database is opened with ``mode=ro``, so this works beside a running server (WAL readers
never block the writer) and can never change or create the file. A stopped server's file
(no -wal, no -shm beside it) is read as ``immutable``: a read-only reader of a WAL database
would otherwise leave a -shm and -wal of its own, owned by whoever ran it (root, say), and
a server running as another user could then not open its history.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from chatsecure.client.core import safe_paragraph, safe_text
from chatsecure.errors import ChatError
from chatsecure.history.log import DEFAULT_DB, HistoryError
from chatsecure.history.sqlite import NAMED_SINCE, check_regular, check_schema, mapped_errors

_NEWEST = "SELECT seq, ts, peer_id, nick, addr, text FROM {} ORDER BY seq DESC LIMIT ?"
"""The newest lines: from ``lines_named`` (schema 3 on), or ``lines`` (a file a server of schema 1
or 2 wrote, not started by this version yet)."""


def add_history_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``chatsecure history``."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--db",
        type=Path,
        metavar="FILE",
        help=f"the server's history database (default: {DEFAULT_DB})",
    )
    where.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help=f"the server's --data-dir: read {DEFAULT_DB.name} in it",
    )
    parser.add_argument(
        "--last", type=_positive, default=50, metavar="N", help="how many lines (default: 50)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


def cmd_history(args: argparse.Namespace) -> int:
    """Print the newest ``args.last`` lines of ``args.db``, oldest first."""
    path: Path = args.db or (args.data_dir / DEFAULT_DB.name if args.data_dir else DEFAULT_DB)
    rows = _newest(path, args.last)
    if not rows:  # (a fresh server's, or one kept with --history 0 since)
        print(f"chatsecure: {path} holds no lines yet", file=sys.stderr)
    for seq, ts, peer_id, nick, addr, text in reversed(rows):
        if args.json:
            line = json.dumps(
                {
                    "seq": seq,
                    "ts": ts,
                    "from": {"id": peer_id, "nick": nick, "addr": addr},
                    "text": text,
                },
                ensure_ascii=False,
            )
        else:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
            line = f"[{when}] #{seq} {safe_text(nick)} ({safe_text(addr)}): {safe_paragraph(text)}"
        print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m chatsecure.history.cli``: the command on its own."""
    parser = argparse.ArgumentParser(
        prog="chatsecure history", description="Print the newest lines of a server's history."
    )
    add_history_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_history(args)
    except ChatError as exc:
        print(f"chatsecure: {exc}", file=sys.stderr)
        return 1


def _newest(path: Path, count: int) -> list[tuple[int, float, str, str, str, str]]:
    if path.exists():
        check_regular(path)  # (a folder, a device: said as the server says it)
    if not path.is_file():
        beside = path.parent / "certs" / path.name  # where a server started there keeps it
        hint = f" ({beside} is one)" if beside.is_file() else " (a cluster keeps it in Redis)"
        raise HistoryError(
            f"{path} not found: no history there; give --db the server's history{hint}"
        )
    companions = [path.with_name(f"{path.name}{end}") for end in ("-wal", "-shm")]
    stopped = not any(file.exists() for file in companions)
    with mapped_errors(path):
        how = "mode=ro&immutable=1" if stopped else "mode=ro"
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?{how}", uri=True)
        try:
            version = check_schema(conn, path)
            if version == 0:
                raise HistoryError(
                    f"{path} holds no history yet; start the server on it once, "
                    "or give --db another path"
                )
            table = "lines_named" if version >= NAMED_SINCE else "lines"
            return conn.execute(_NEWEST.format(table), (count,)).fetchall()
        finally:
            conn.close()


SQLITE_MAX_INTEGER = 2**63 - 1
"""The largest number SQLite takes: a larger ``--last`` asks for every line all the same."""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of lines >= 1, not {text!r}")
    return min(value, SQLITE_MAX_INTEGER)  # more than any log holds: all of it


if __name__ == "__main__":
    sys.exit(main())
