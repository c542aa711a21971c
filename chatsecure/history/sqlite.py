"""``SqliteLog``: the room log in an SQLite file, durable across crashes and restarts.

Why these choices:
- WAL journal: a commit is one append to the -wal file, readers (``chatsecure history``) never
  block the writer, and ``synchronous=NORMAL`` keeps every committed line through a crash of the
  process (``FULL`` also through a power cut, for an fsync per commit).
- One worker thread owns the connection and does all SQLite work, so the event loop never blocks
  on disk and the connection is only ever used by the thread that made it.
- ``meta`` keeps the last seq ever assigned, so a seq is never reused, even once every line
  was trimmed away. It is read when the log opens; after that the worker knows it (and the
  oldest seq kept), so a commit is no more statements than it must write: each statement gives
  the GIL away and must take it back from a busy event loop. The file has one writer, its
  server. If another program stores lines meanwhile, the commit finds ``meta`` changed and
  fails (a ``HistoryError`` naming the file) without writing; the next one goes on from what
  the file says. Two servers given the same file are kept apart sooner: the log holds an
  exclusive ``flock`` on it (SQLite's own locks are POSIX ones, which ``flock`` never touches),
  so the second is refused at its start instead of at its first line.
- ``application_id`` marks the file as ours and ``user_version`` is the schema version: a
  foreign, damaged or newer file is refused with a message, never silently started afresh.
- A line names its sender and its client by numbers: rows of ``peers`` (an id, nick and
  address as they were when it spoke) and ``clients`` (a client id). Each speaker is written
  once, not in every line, so a line binds and stores six values instead of eight, and the
  (client, ref) index compares a number before the ref: a quarter to a third less work per
  line in SQLite. The worker keeps the numbers it gave out (the rows' ``last`` say the newest
  line that may name them, so trimming deletes them with their lines) and forgets them at
  each trim and at a failed commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from pathlib import Path
from typing import Literal, TypeVar

from chatsecure.files import make_private_folder
from chatsecure.history.log import (
    DEFAULT_DB,
    Appends,
    Draft,
    HistoryError,
    Opened,
    Record,
    check_limit,
    peer_number,
)
from chatsecure.protocol.messages import Peer

log = logging.getLogger(__name__)

T = TypeVar("T")

APPLICATION_ID = 0x43534854
"""``PRAGMA application_id`` of a chatsecure history ("CSHT"): tells our file from others'."""

SCHEMA_VERSION = 3
"""``PRAGMA user_version`` this code writes; it reads any version up to this one."""
NAMED_SINCE = 3
"""The schema that names senders and clients by number, and reads lines from ``lines_named``."""

MIGRATIONS: dict[int, tuple[str, ...]] = {
    0: (
        "CREATE TABLE lines(seq INTEGER PRIMARY KEY, ts REAL NOT NULL, peer_id TEXT NOT NULL,"
        " nick TEXT NOT NULL, addr TEXT NOT NULL, text TEXT NOT NULL, client TEXT, ref TEXT)",
        # NULLs are distinct in a UNIQUE index: lines without (client, ref) never collide.
        "CREATE UNIQUE INDEX lines_client_ref ON lines(client, ref)",
        "CREATE TABLE meta(one INTEGER PRIMARY KEY CHECK (one = 1),"
        " last_seq INTEGER NOT NULL, max_peer_id INTEGER NOT NULL)",
        "INSERT INTO meta VALUES (1, 0, 0)",
        f"PRAGMA application_id = {APPLICATION_ID}",
    ),
    # The log's own id (``Opened.log_id``): a new file is a new log, though its seqs start
    # again where an old one's did.
    1: (
        "ALTER TABLE meta ADD COLUMN log_id TEXT NOT NULL DEFAULT ''",
        "UPDATE meta SET log_id = lower(hex(randomblob(8)))",
    ),
    # Senders and client ids in tables of their own, lines naming them by number (see above).
    2: (
        "CREATE TABLE peers(id INTEGER PRIMARY KEY, peer_id TEXT NOT NULL, nick TEXT NOT NULL,"
        " addr TEXT NOT NULL, last INTEGER NOT NULL)",
        "CREATE TABLE clients(id INTEGER PRIMARY KEY, client TEXT NOT NULL UNIQUE,"
        " last INTEGER NOT NULL)",
        "INSERT INTO peers(peer_id, nick, addr, last)"
        " SELECT peer_id, nick, addr, max(seq) FROM lines GROUP BY peer_id, nick, addr",
        "INSERT INTO clients(client, last)"
        " SELECT client, max(seq) FROM lines WHERE client IS NOT NULL GROUP BY client",
        "CREATE TABLE lines_3(seq INTEGER PRIMARY KEY, ts REAL NOT NULL, peer INTEGER NOT NULL,"
        " text TEXT NOT NULL, client INTEGER, ref TEXT)",
        "INSERT INTO lines_3 SELECT lines.seq, lines.ts, peers.id, lines.text, clients.id,"
        " lines.ref FROM lines JOIN peers USING (peer_id, nick, addr)"
        " LEFT JOIN clients USING (client)",
        "DROP TABLE lines",
        "ALTER TABLE lines_3 RENAME TO lines",
        "CREATE UNIQUE INDEX lines_client_ref ON lines(client, ref)",
        # The lines as schema 2 had them: what the server reads, and what one would query.
        "CREATE VIEW lines_named AS SELECT seq, ts, peers.peer_id, peers.nick, peers.addr, text,"
        " clients.client, ref FROM lines JOIN peers ON peers.id = lines.peer"
        " LEFT JOIN clients ON clients.id = lines.client",
    ),
}
"""Statements that take the schema from version N to N + 1, run in one transaction."""

_INSERT = "INSERT INTO lines(seq, ts, peer, text, client, ref) VALUES (?,?,?,?,?,?)"
_INSERT_NEW = _INSERT.replace("INSERT", "INSERT OR IGNORE", 1)
_COLUMNS = 6
"""Values per row of ``lines``."""
ROWS_PER_INSERT = 256
"""The most rows one ``INSERT`` stores.

SQLite binds a statement's values with the GIL held, then runs it with the GIL released. One
statement per row (``executemany``) gives the GIL away and takes it back for every line, and
each time the event loop's thread waits for it; this is once per 256 lines.
"""


def _inserts(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    """``INSERT OR IGNORE`` statements of 256, 128, ... 1 rows (fewer if this SQLite takes
    fewer values per statement): a few of them store any batch, and SQLite keeps few."""
    most = min(ROWS_PER_INSERT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // _COLUMNS)
    row = "(?,?,?,?,?,?)"
    sizes = [1 << bit for bit in reversed(range(most.bit_length()))]
    return [(rows, _INSERT_NEW.replace(row, ",".join([row] * rows))) for rows in sizes]


_SELECT_REF = (
    "SELECT seq, ts, peer_id, nick, addr, text, client, ref FROM lines_named"
    " WHERE client = ? AND ref = ?"
)
_SELECT_BEFORE = (
    "SELECT seq, ts, peer_id, nick, addr, text, client, ref FROM lines_named"
    " WHERE seq < ? AND seq > (SELECT last_seq FROM meta) - ? ORDER BY seq DESC LIMIT ?"
)
_SELECT_AFTER = (
    "SELECT seq, ts, peer_id, nick, addr, text, client, ref FROM lines_named"
    " WHERE seq > ? ORDER BY seq DESC LIMIT ?"
)
_NEW_PEER = "INSERT INTO peers(peer_id, nick, addr, last) VALUES (?, ?, ?, ?)"
_NEW_CLIENT = (
    "INSERT INTO clients(client, last) VALUES (?1, ?2)"
    " ON CONFLICT(client) DO UPDATE SET last = max(last, ?2)"
)
_CLIENT_ROW = "SELECT id FROM clients WHERE client = ?"
_USED = "UPDATE {} SET last = ?1 WHERE last < ?1 AND id IN (SELECT value FROM json_each(?2))"
_PEERS_USED, _CLIENTS_USED = _USED.format("peers"), _USED.format("clients")
"""Mark rows of ``peers``, ``clients`` as named by a line up to seq ?1 (their ids in ?2)."""
_NEWEST = 2**63 - 1
"""The largest SQLite integer: ``before(None, ...)`` is ``before(_NEWEST, ...)``."""
_Row = tuple[int, float, str, str, str, str, str | None, str | None]


class SqliteLog:
    """The room log in the SQLite file ``path``, keeping the newest ``keep`` lines.

    Lines older than the newest ``keep`` are invisible at once and deleted a little later (when
    about 10% too many are stored), so trimming costs a small batch delete now and then rather
    than one per append. Deduplication only looks at the newest ``keep`` lines: a line resent
    after its original was trimmed is stored again, as a new line (the original's ``ref`` is
    cleared so the UNIQUE index allows it).

    ``max_pages`` caps the file's size in pages (``PRAGMA max_page_count``); tests use it to
    fill the "disk" without a tiny filesystem.

    An ``append`` whose caller is cancelled still commits on the worker thread; ``last_seq``
    shows it.
    """

    def __init__(
        self,
        path: Path,
        keep: int,
        durability: Literal["normal", "full"] = "normal",
        *,
        max_pages: int | None = None,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, not {keep} (keep 0 means no log at all)")
        self._path = path
        self._keep = keep
        self._durability = durability
        self._max_pages = max_pages
        self._conn: sqlite3.Connection | None = None
        self._inserts: list[tuple[int, str]] = []
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="chatsecure-history")
        self._last_seq = 0  # written by the worker after each commit
        self._max_peer_id = 0  # the worker's, like everything below
        self._oldest: int | None = None
        """The oldest seq stored (None: nothing is), as of the last commit."""
        self._peer_rows: dict[tuple[str, str, str], int] = {}
        """Rows of ``peers`` by (peer id, nick, address), as committed since the last trim."""
        self._client_rows: dict[str, int] = {}
        """Rows of ``clients`` by client id, as committed since the last trim."""
        self._closed = False
        self._lock: int | None = None
        """A descriptor of the file holding the ``flock`` (see ``_hold``)."""

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def keep(self) -> int:
        return self._keep

    async def open(self, tail: int) -> Opened:
        """Create or open the file, migrate it, check that it is writable; the newest ``tail``."""
        check_limit("tail", tail)
        if self._conn is not None or self._closed:
            raise RuntimeError("SqliteLog.open() may be called once")
        try:
            return await self._run(self._open, tail)
        except BaseException:
            await self.close()  # an unusable log keeps no thread behind it
            raise

    async def append(self, drafts: Sequence[Draft]) -> Appends:
        return await self._run(self._append, list(drafts))

    async def before(self, seq: int | None, limit: int) -> list[Record]:
        check_limit("limit", limit)
        return await self._run(self._before, seq, limit)

    async def since(self, seq: int, limit: int) -> tuple[list[Record], int]:
        check_limit("limit", limit)
        return await self._run(self._since, seq, limit)

    async def close(self) -> None:
        """Close the connection, then end the worker (already idle, so the join is immediate)."""
        if self._closed:
            return
        self._closed = True
        # Queued behind any work still running (even an open() whose caller was cancelled).
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close_conn)
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._closed:
            raise RuntimeError("the history log is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # Everything below runs on the worker thread.

    def _open(self, tail: int) -> Opened:
        _create_private(self._path)
        self._lock = _hold(self._path)
        with mapped_errors(self._path):
            conn = sqlite3.connect(self._path, isolation_level=None, timeout=5.0)
        try:
            with mapped_errors(self._path):
                self._prepare(conn)
                self._inserts = _inserts(conn)
                last_seq, max_peer_id = _meta(conn)
                log_id = conn.execute("SELECT log_id FROM meta").fetchone()[0]
                oldest = self._trim(conn, last_seq, _oldest(conn))
                self._conn = conn
                self._last_seq, self._max_peer_id, self._oldest = last_seq, max_peer_id, oldest
                # (The oldest visible: lines up to 10% past keep may wait to be deleted.)
                first = last_seq + 1 if oldest is None else max(oldest, last_seq - self._keep + 1)
                return Opened(last_seq, self._before(None, tail), max_peer_id, first, log_id)
        except BaseException:
            self._conn = None
            conn.close()
            raise

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Refuse a foreign or newer file, then WAL, durability, migrations and a write probe."""
        check_schema(conn, self._path)  # before anything writes to a file that may not be ours
        _make_private(self._path)
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise HistoryError(
                f"{self._path}: SQLite cannot use a write-ahead log here (journal mode {mode}); "
                "give --db a path on a local disk"
            )
        sync = "FULL" if self._durability == "full" else "NORMAL"
        conn.execute(f"PRAGMA synchronous = {sync}")
        if self._max_pages is not None:
            conn.execute(f"PRAGMA max_page_count = {int(self._max_pages)}")
        migrate(conn, self._path)
        # A read-only file opens fine and fails at the first write: find out now, not at the
        # first chat line.
        with _transaction(conn):
            conn.execute("UPDATE meta SET last_seq = last_seq")
            conn.execute("ROLLBACK")

    def _append(self, drafts: list[Draft]) -> Appends:
        conn = self._require_conn()
        try:
            return self._append_known(conn, drafts)
        except BaseException as exc:
            self._forget_rows()  # the rows made for this commit were rolled back with it
            if isinstance(exc, HistoryError):
                # Nothing was written. Take what the file says: if another program wrote to
                # it, the next commit goes on from there once it has stopped.
                with contextlib.suppress(sqlite3.Error):
                    (self._last_seq, self._max_peer_id) = _meta(conn)
                    self._oldest = _oldest(conn)
            raise

    def _forget_rows(self) -> None:
        self._peer_rows.clear()
        self._client_rows.clear()

    def _append_known(self, conn: sqlite3.Connection, drafts: list[Draft]) -> Appends:
        """``_append`` from the state the worker knows, refused if the file has another."""
        known = last_seq = self._last_seq
        max_peer_id, oldest = self._max_peer_id, self._oldest
        with mapped_errors(self._path), _transaction(conn):
            appends = self._append_new(conn, drafts, last_seq)
            if appends is None:  # a (client, ref) was already stored: line by line instead
                appends = self._append_each(conn, drafts, last_seq)
            if appends.last is not None:
                last_seq = appends.last
                originals = appends.originals
                senders = {  # few: a batch's speakers
                    draft.sender.id
                    for index, draft in enumerate(drafts)
                    if not originals or index not in originals
                }
                max_peer_id = max(max_peer_id, *map(peer_number, senders))
                updated = conn.execute(
                    "UPDATE meta SET last_seq = ?, max_peer_id = ? WHERE last_seq = ?",
                    (last_seq, max_peer_id, known),
                )
                if updated.rowcount != 1:  # someone else stored lines meanwhile
                    raise self._written_by_another()
                oldest = self._trim(conn, last_seq, appends.first if oldest is None else oldest)
            conn.execute("COMMIT")
        self._last_seq, self._max_peer_id, self._oldest = last_seq, max_peer_id, oldest
        return appends

    def _append_new(
        self, conn: sqlite3.Connection, drafts: list[Draft], last_seq: int
    ) -> Appends | None:
        """Store every draft, or store none and say None if one was a re-send.

        The common case (no re-sends) costs an ``INSERT`` per ``ROWS_PER_INSERT`` lines instead
        of a look-up and an insert per line; ``OR IGNORE`` lets the unique (client, ref) index
        find re-sends.
        """
        peers: set[int] = set()  # the rows these lines name
        clients: set[int] = set()
        rows: list[tuple[int, float, int, str, int | None, str | None]] = []
        # Lines come in runs from one speaker (a read of a socket holds many): its rows are
        # looked up once a run.
        sender: Peer | None = None
        client: str | None = None
        peer, row = 0, None
        for seq, draft in enumerate(drafts, last_seq + 1):
            if draft.sender is not sender or draft.client != client:
                sender, client = draft.sender, draft.client
                peer, row = self._rows_of(conn, sender, client, seq)
                peers.add(peer)
                if row is not None:
                    clients.add(row)
            rows.append((seq, draft.ts, peer, draft.text, row, draft.ref))
        self._named(conn, peers, clients, last_seq + len(drafts))
        before = conn.total_changes
        left, start = len(drafts), 0
        for size, statement in self._inserts:  # the most rows first
            while left >= size:
                conn.execute(statement, list(chain.from_iterable(rows[start : start + size])))
                left, start = left - size, start + size
        if conn.total_changes - before == len(drafts):
            return Appends(drafts, last_seq + 1)
        if _meta(conn)[0] != last_seq:  # not a re-send: someone else took these seqs
            raise self._written_by_another()
        conn.execute("DELETE FROM lines WHERE seq > ?", (last_seq,))  # nothing above was kept
        return None

    def _written_by_another(self) -> HistoryError:
        return HistoryError(
            f"{self._path} was written by another program while this server used it; "
            "stop the other one, or give each its own --db"
        )

    def _append_each(self, conn: sqlite3.Connection, drafts: list[Draft], last_seq: int) -> Appends:
        appends = Appends(drafts, last_seq + 1)
        for index, draft in enumerate(drafts):
            original = self._original(conn, draft, last_seq)
            if original is not None:
                appends.originals[index] = original
                continue
            last_seq += 1
            # (_append_new made and marked every row these lines name.)
            peer, row = self._rows_of(conn, draft.sender, draft.client, last_seq)
            conn.execute(_INSERT, (last_seq, draft.ts, peer, draft.text, row, draft.ref))
        return appends

    def _rows_of(
        self, conn: sqlite3.Connection, sender: Peer, client: str | None, seq: int
    ) -> tuple[int, int | None]:
        """The rows of ``peers`` and ``clients`` that name a line of ``sender`` as ``client``
        (made if the worker knows none: the line has seq ``seq``)."""
        peer = self._peer_rows.get((sender.id, sender.nick, sender.addr))
        if peer is None:
            peer = self._new_peer(conn, sender, seq)
        if client is None:
            return peer, None
        row = self._client_rows.get(client)
        return peer, self._client_row(conn, client, seq) if row is None else row

    def _new_peer(self, conn: sqlite3.Connection, sender: Peer, seq: int) -> int:
        """A new row of ``peers`` for ``sender`` (once per speaker between trims)."""
        row = conn.execute(_NEW_PEER, (sender.id, sender.nick, sender.addr, seq)).lastrowid
        assert row is not None  # noqa: S101 - an INSERT's
        self._peer_rows[(sender.id, sender.nick, sender.addr)] = row
        return row

    def _client_row(self, conn: sqlite3.Connection, client: str, seq: int) -> int:
        """The row of ``clients`` for ``client``, made if it has none: one row per client id,
        for ever (the (client, ref) index finds a re-send by it across restarts)."""
        conn.execute(_NEW_CLIENT, (client, seq))
        row: int = conn.execute(_CLIENT_ROW, (client,)).fetchone()[0]
        self._client_rows[client] = row
        return row

    def _named(
        self, conn: sqlite3.Connection, peers: set[int], clients: set[int], seq: int
    ) -> None:
        """Keep the rows of ``peers`` and ``clients`` as long as lines up to ``seq``."""
        conn.execute(_PEERS_USED, (seq, json.dumps(list(peers))))
        if clients:
            conn.execute(_CLIENTS_USED, (seq, json.dumps(list(clients))))

    def _original(self, conn: sqlite3.Connection, draft: Draft, last_seq: int) -> Record | None:
        """The kept line with ``draft``'s (client, ref), if any; forget an older one's ref."""
        if draft.client is None or draft.ref is None:
            return None
        row = conn.execute(_SELECT_REF, (draft.client, draft.ref)).fetchone()
        if row is None:
            return None
        if row[0] > last_seq - self._keep:
            return _record(row)
        conn.execute("UPDATE lines SET ref = NULL WHERE seq = ?", (row[0],))
        return None

    def _trim(self, conn: sqlite3.Connection, last_seq: int, oldest: int | None) -> int | None:
        """Delete lines older than the newest ``keep`` once about 10% too many are stored;
        the oldest seq left (``oldest``: the oldest stored)."""
        if oldest is not None and last_seq - oldest + 1 > self._keep + max(1, self._keep // 10):
            cut = last_seq - self._keep
            conn.execute("DELETE FROM lines WHERE seq <= ?", (cut,))
            conn.execute("DELETE FROM peers WHERE last <= ?", (cut,))
            conn.execute("DELETE FROM clients WHERE last <= ?", (cut,))
            self._forget_rows()  # (it holds rows just deleted; the others are found again)
            return cut + 1
        return oldest

    def _before(self, seq: int | None, limit: int) -> list[Record]:
        conn = self._require_conn()
        with mapped_errors(self._path):
            rows = conn.execute(
                _SELECT_BEFORE,
                (_NEWEST if seq is None else seq, self._keep, limit),
            ).fetchall()
        return [_record(row) for row in reversed(rows)]

    def _since(self, seq: int, limit: int) -> tuple[list[Record], int]:
        conn = self._require_conn()
        with mapped_errors(self._path), _transaction(conn, "BEGIN"):
            last_seq, _ = _meta(conn)
            floor = max(seq, last_seq - self._keep)
            available = conn.execute("SELECT count(*) FROM lines WHERE seq > ?", (floor,))
            count: int = available.fetchone()[0]
            rows = conn.execute(
                _SELECT_AFTER,
                (floor, limit),
            ).fetchall()
            conn.execute("COMMIT")
        return [_record(row) for row in reversed(rows)], count - len(rows)

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock is not None:  # after SQLite's: closing it would drop SQLite's locks
            os.close(self._lock)
            self._lock = None

    def _require_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("SqliteLog.open() must come first")
        return self._conn


def check_schema(conn: sqlite3.Connection, path: Path) -> int:
    """The file's schema version; ``HistoryError`` if it is another program's or newer."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if app_id != APPLICATION_ID and (app_id or version or tables):
        raise HistoryError(
            f"{path} is a database of another program, not a chatsecure history; "
            "move it away or give --db another path"
        )
    if version > SCHEMA_VERSION:
        raise HistoryError(
            f"{path} was written by a newer chatsecure (schema {version}, this one reads up to "
            f"{SCHEMA_VERSION}); upgrade chatsecure or give --db another path"
        )
    return version


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema up to ``SCHEMA_VERSION``, one version per step, in one transaction."""
    with _transaction(conn):
        version = check_schema(conn, path)  # again, now that we hold the write lock
        for step in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[step]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {step + 1}")
        conn.execute("COMMIT")
    if version == 0:
        log.info("history: made %s (schema %d)", path.absolute(), SCHEMA_VERSION)
    elif version < SCHEMA_VERSION:
        log.info(
            "history: %s migrated from schema %d to %d", path.absolute(), version, SCHEMA_VERSION
        )


@contextlib.contextmanager
def mapped_errors(path: Path) -> Iterator[None]:
    """Turn ``sqlite3`` and ``OSError`` exceptions into a ``HistoryError`` naming ``path``."""
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        raise history_error(path, exc) from exc


def history_error(path: Path, exc: sqlite3.Error | OSError) -> HistoryError:
    """One sentence saying what is wrong with ``path`` and what to do about it."""
    name = getattr(exc, "sqlite_errorname", "")
    other = "or give --db another path"
    if name == "SQLITE_NOTADB":
        return HistoryError(
            f"{path} is not a chatsecure history database ({exc}); move it away {other}"
        )
    if name.startswith("SQLITE_CORRUPT"):
        return HistoryError(f"{path} is damaged ({exc}); move it away {other}")
    if name.startswith("SQLITE_READONLY") or isinstance(exc, PermissionError):
        return HistoryError(
            f"{path} is read-only ({exc}); make the file and its folder writable, {other}"
        )
    if name == "SQLITE_FULL" or (name.startswith("SQLITE_IOERR") and _disk_full(path)):
        return HistoryError(f"{path} is full ({exc}); free some disk space {other}")
    if name.startswith("SQLITE_BUSY"):
        return HistoryError(f"{path} is locked by another program ({exc}); stop it {other}")
    if name.startswith("SQLITE_CANTOPEN"):
        return HistoryError(
            f"cannot open {path} ({exc}); check that it and its folder exist and are "
            f"readable and writable, {other}"
        )
    return HistoryError(f"{path}: {exc}")


def _disk_full(path: Path) -> bool:
    """Whether the disk of ``path`` has (nearly) no room left: SQLite says "disk I/O error"
    when it cannot make its -wal or -shm there."""
    try:
        disk = os.statvfs(path.parent)
    except OSError:
        return False
    return disk.f_bavail * disk.f_frsize < 64 * 1024


def _hold(path: Path) -> int | None:
    """An open descriptor of ``path`` with an exclusive ``flock``; ``HistoryError`` if another
    server holds it. Kept open until SQLite has closed the file: on POSIX, closing any
    descriptor of a file drops every ``fcntl`` lock the process has on it, SQLite's too."""
    if sys.platform == "win32":  # pragma: no cover - no flock there
        return None
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise history_error(path, exc) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise HistoryError(
            f"{path} is in use by another chatsecure server; stop that one, "
            "or give each server its own --db"
        ) from None
    except OSError as exc:  # a file system without flock: SQLite's own checks remain
        os.close(fd)
        log.warning("history: cannot lock %s (%s); run one server on it at a time", path, exc)
        return None
    return fd


def _create_private(path: Path) -> None:
    """Make the file (and its folder), readable by its owner only, if it is not there yet.

    SQLite gives the -wal and -shm files the main file's permissions, so they follow. A file
    there already but empty becomes a new log, as a missing one does: said, not silent.
    """
    try:
        make_private_folder(path.parent)
    except OSError as exc:
        raise HistoryError(f"cannot make the folder {path.parent}: {exc.strerror or exc}") from exc
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        check_regular(path)
        with contextlib.suppress(OSError):
            if path.stat().st_size == 0 and not path.with_name(path.name + "-wal").exists():
                log.warning("history: %s is an empty file; a new log starts in it", path)
    except OSError as exc:
        raise history_error(path, exc) from exc


def check_regular(path: Path) -> None:
    """Refuse a history path that is there but no file of its own (a folder, a device such
    as /dev/null, a dangling link) before anything opens, locks or chmods it."""
    try:
        info = path.stat()
    except OSError as exc:
        if path.is_symlink():
            raise HistoryError(
                f"{path} is a symbolic link to {os.readlink(path)}, which cannot be opened "
                f"({exc.strerror or exc}); fix the link or give --db another path"
            ) from exc
        raise history_error(path, exc) from exc
    if stat.S_ISDIR(info.st_mode):
        raise HistoryError(
            f"{path} is a folder; give --db the history file in it "
            f"({path / DEFAULT_DB.name}), or --data-dir the folder"
        )
    if not stat.S_ISREG(info.st_mode):
        raise HistoryError(
            f"{path} is not a regular file; give --db the path of a file "
            "(--history 0 stores nothing)"
        )


def _make_private(path: Path) -> None:
    """Take an existing history file (and its -wal and -shm) away from other users.

    Called once the file is known to be ours: a file refused is left as it was."""
    for file in (path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")):
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
        except FileNotFoundError:
            continue
        if not mode & 0o077:
            continue
        try:
            file.chmod(0o600)
        except OSError as exc:
            log.warning(
                "history: %s is readable by others (mode %o) and could not be made private: %s",
                file,
                mode,
                exc.strerror or exc,
            )
        else:
            log.warning("history: %s was readable by others (mode %o); now 0600", file, mode)


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
    """Run the block in a transaction; it must COMMIT (or ROLLBACK) itself, else rollback."""
    conn.execute(begin)
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _meta(conn: sqlite3.Connection) -> tuple[int, int]:
    last_seq, max_peer_id = conn.execute("SELECT last_seq, max_peer_id FROM meta").fetchone()
    return int(last_seq), int(max_peer_id)


def _oldest(conn: sqlite3.Connection) -> int | None:
    oldest: int | None = conn.execute("SELECT min(seq) FROM lines").fetchone()[0]
    return oldest


def _record(row: _Row) -> Record:
    seq, ts, peer_id, nick, addr, text, client, ref = row
    return Record(seq, Peer(peer_id, nick, addr), text, ts, client, ref)
