"""SqliteLog beyond the interface: durability, file permissions, and refusing bad files."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatsecure.history import HistoryError, SqliteLog
from chatsecure.history.sqlite import MIGRATIONS, SCHEMA_VERSION
from chatsecure.protocol.messages import Peer, valid_client_id
from tests.history.conftest import draft, lines, read_only

WRITER = Path(__file__).with_name("crash_writer.py")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def stored(path: Path, keep: int = 1_000_000) -> tuple[int, list[tuple[int, str]]]:
    """last_seq and every visible (seq, text) of the file, through a fresh SqliteLog."""
    log = SqliteLog(path, keep)
    try:
        last = (await log.open(0)).last_seq
        return last, [(r.seq, r.text) for r in await log.before(None, keep)]
    finally:
        await log.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("durability", ["normal", "full"])
async def test_lines_survive_close_and_reopen(tmp_path: Path, durability: str) -> None:
    path = tmp_path / "h.sqlite3"
    log = SqliteLog(path, 100, durability)
    await log.open(0)
    await log.append(lines("a", "b"))
    await log.append([draft("c", client="client-0001", ref="r1")])
    await log.close()

    log = SqliteLog(path, 100, durability)
    opened = await log.open(10)
    assert [(r.seq, r.text) for r in opened.tail] == [(1, "a"), (2, "b"), (3, "c")]
    [dup, new] = await log.append([draft("c?", client="client-0001", ref="r1"), draft("d")])
    assert (dup.duplicate, dup.record.seq, new.record.seq) == (True, 3, 4)
    await log.close()


@pytest.mark.asyncio
async def test_seq_is_never_reused_even_with_every_line_gone(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    log = SqliteLog(path, keep=2)
    await log.open(0)
    for n in range(10):
        await log.append(lines(f"line {n}"))
    await log.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM lines").fetchone()[0] <= 3  # trimmed for real
        db.execute("DELETE FROM lines")  # as if keep had trimmed them all
    db.close()

    log = SqliteLog(path, keep=2)
    opened = await log.open(5)
    assert (opened.last_seq, opened.tail) == (10, [])
    [appended] = await log.append(lines("after"))
    assert appended.record.seq == 11
    await log.close()


@pytest.mark.parametrize("trimmed", [False, True], ids=["kept", "trimmed"])
@pytest.mark.asyncio
async def test_lines_another_program_stored_meanwhile_are_kept_and_the_commit_refused(
    tmp_path: Path, trimmed: bool
) -> None:
    """A second server on the same file: its lines take the seqs ours would (or it trimmed
    them away again). Our commit is refused, nothing of theirs is lost, and once it has
    stopped ours go on after its last seq."""
    path = tmp_path / "h.sqlite3"
    log = SqliteLog(path, keep=100)
    await log.open(5)
    await log.append(lines("ours"))
    with sqlite3.connect(path) as other:
        other.execute("INSERT INTO peers VALUES (900, '9', 'x', '', 7)")
        for seq in range(2, 8):
            other.execute(
                "INSERT INTO lines(seq, ts, peer, text) VALUES (?, 1.0, 900, ?)",
                (seq, f"theirs {seq}"),
            )
        if trimmed:
            other.execute("DELETE FROM lines WHERE seq BETWEEN 2 AND 5")
        other.execute("UPDATE meta SET last_seq = 7")
    other.close()
    with pytest.raises(HistoryError, match="written by another program"):
        await log.append(lines("ours again"))
    [appended] = await log.append(lines("ours, after"))
    assert appended.record.seq == 8
    await log.close()
    last_seq, records = await stored(path)
    theirs = [f"theirs {seq}" for seq in range(6 if trimmed else 2, 8)]
    assert (last_seq, [text for _, text in records]) == (8, ["ours", *theirs, "ours, after"])


@pytest.mark.asyncio
async def test_kill_9_loses_no_acknowledged_line_and_leaves_no_gap(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    writer = subprocess.Popen(
        [sys.executable, str(WRITER), str(path)], stdout=subprocess.PIPE, cwd=tmp_path
    )
    assert writer.stdout is not None
    acked: list[int] = []
    buffer = b""
    deadline = time.monotonic() + 30
    try:
        while len(acked) < 500 and time.monotonic() < deadline:
            select.select([writer.stdout], [], [], 1)
            chunk = os.read(writer.stdout.fileno(), 65536)
            if not chunk:
                break
            buffer += chunk
            *done, buffer = buffer.split(b"\n")
            acked += [int(line) for line in done]
    finally:
        writer.send_signal(signal.SIGKILL)
        rest, _ = writer.communicate(timeout=10)
    assert writer.returncode == -signal.SIGKILL, "the writer ended before it was killed"
    buffer += rest
    acked += [int(line) for line in buffer.split(b"\n")[:-1]]  # a cut last line is not acked
    assert len(acked) >= 500

    last_seq, records = await stored(path)
    assert [seq for seq, _ in records] == list(range(1, last_seq + 1))  # no gap, no repeat
    assert all(text == f"line {seq}" for seq, text in records)  # each line stored once
    assert acked == list(range(1, len(acked) + 1))
    assert last_seq >= acked[-1]


@pytest.mark.asyncio
async def test_the_file_and_its_wal_are_private_and_the_folder_is_made(tmp_path: Path) -> None:
    path = tmp_path / "new" / "folder" / "h.sqlite3"
    log = SqliteLog(path, 10)
    try:
        await log.open(0)
        await log.append(lines("secret"))
        assert mode(path) == 0o600
        assert mode(Path(f"{path}-wal")) == 0o600
        assert mode(Path(f"{path}-shm")) == 0o600
        assert mode(path.parent) == mode(path.parent.parent) == 0o700  # each folder made
    finally:
        await log.close()


@pytest.mark.asyncio
async def test_a_file_readable_by_others_is_made_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, wal = tmp_path / "h.sqlite3", tmp_path / "h.sqlite3-wal"
    for file in (path, wal):
        file.touch()
        file.chmod(0o644)
    log = SqliteLog(path, 10)
    await log.open(0)
    await log.close()
    assert mode(path) == 0o600
    for file in (path, wal):  # (SQLite removes the -wal at close)
        assert f"{file} was readable by others (mode 644); now 0600" in caplog.text


async def refused(path: Path) -> str:
    """The HistoryError message of opening ``path``; the file must be left as it was."""
    before = (path.read_bytes(), mode(path)) if path.is_file() else None
    log = SqliteLog(path, 10)
    with pytest.raises(HistoryError) as caught:
        await log.open(0)
    await log.close()
    if before is not None:
        assert (path.read_bytes(), mode(path)) == before, "a refused file was changed"
    message = str(caught.value)
    assert str(path) in message
    return message


@pytest.mark.asyncio
async def test_random_bytes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    path.write_bytes(os.urandom(8192))
    path.chmod(0o644)  # not ours: left as it is
    message = await refused(path)
    assert "is not a chatsecure history database (file is not a database)" in message
    assert "move it away or give --db another path" in message


@pytest.mark.asyncio
async def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE contacts(name TEXT)")
        db.execute("INSERT INTO contacts VALUES ('x')")
    db.close()
    path.chmod(0o664)  # not ours: left as it is
    assert "a database of another program" in await refused(path)


@pytest.mark.asyncio
async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    await stored(path)  # creates it
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    message = await refused(path)
    assert (
        f"written by a newer chatsecure (schema 99, this one reads up to {SCHEMA_VERSION})"
        in message
    )


@pytest.mark.asyncio
async def test_a_read_only_file_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    await stored(path)
    with read_only(path):
        assert "is read-only" in await refused(path)


@pytest.mark.asyncio
async def test_a_read_only_folder_is_refused_at_open(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    with read_only(folder):
        assert "is read-only" in await refused(folder / "h.sqlite3")


@pytest.mark.asyncio
async def test_a_full_disk_fails_the_append_whole_and_keeps_the_log(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    log = SqliteLog(path, 100_000, max_pages=12)
    await log.open(0)
    acked = 0
    error: HistoryError | None = None
    for n in range(10_000):
        try:
            acked += len(await log.append(lines(*(f"{n}.{i} " + "x" * 300 for i in range(5)))))
        except HistoryError as exc:
            error = exc
            break
    assert error is not None
    assert str(path) in str(error)
    assert "is full (database or disk is full)" in str(error)
    assert acked > 0
    assert log.last_seq == acked  # the failed batch took no seq
    assert len(await log.before(None, 100_000)) == acked  # and the log still reads
    await log.close()
    last_seq, records = await stored(path)
    assert (last_seq, len(records)) == (acked, acked)


@pytest.mark.asyncio
async def test_a_log_keeps_its_id_and_a_new_file_is_another_log(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    log = SqliteLog(path, 100)
    first = (await log.open(0)).log_id
    await log.close()
    log = SqliteLog(path, 100)
    assert (await log.open(0)).log_id == first  # a restart: the same log
    await log.close()
    assert valid_client_id(first)
    path.unlink()
    log = SqliteLog(path, 100)
    assert (await log.open(0)).log_id not in {first, ""}  # the file lost: its seqs start again
    await log.close()


@pytest.mark.asyncio
async def test_a_schema_1_file_is_migrated_with_its_lines_and_given_an_id(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    with sqlite3.connect(path) as db:  # what the first release wrote
        for statement in MIGRATIONS[0]:
            db.execute(statement)
        db.execute("PRAGMA user_version = 1")
        db.execute(
            "INSERT INTO lines VALUES (1, 1.7e9, '3', 'ann', '10.0.0.1', 'kept', NULL, NULL)"
        )
        db.execute("UPDATE meta SET last_seq = 1, max_peer_id = 3")
    db.close()
    log = SqliteLog(path, 100)
    opened = await log.open(10)
    await log.close()
    assert [(r.seq, r.text) for r in opened.tail] == [(1, "kept")]
    assert (opened.last_seq, opened.max_peer_id) == (1, 3)
    assert valid_client_id(opened.log_id)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    db.close()


def schema_2_file(path: Path) -> list[tuple[object, ...]]:
    """A history as a server of schema 2 left it; its lines as that schema stored them."""
    rows: list[tuple[object, ...]] = [
        (1, 1.7e9, "3", "ann", "10.0.0.1", "first", "client-ann-01", "r1"),
        (2, 1.7e9 + 1, "4", "bob", "[::1]:5", "no client", None, None),
        (3, 1.7e9 + 2, "3", "ann_away", "10.0.0.1", "renamed", "client-ann-01", "r2"),
        (4, 1.7e9 + 3, "5", "ann", "10.0.0.2", "again", "client-ann-01", "r3"),
    ]
    with sqlite3.connect(path) as db:
        for step in (0, 1):
            for statement in MIGRATIONS[step]:
                db.execute(statement)
        db.execute("PRAGMA user_version = 2")
        db.executemany("INSERT INTO lines VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.execute("UPDATE meta SET last_seq = 4, max_peer_id = 5")
    db.close()
    return rows


@pytest.mark.asyncio
async def test_a_schema_2_file_is_migrated_and_its_refs_still_find_resends(
    tmp_path: Path,
) -> None:
    path = tmp_path / "h.sqlite3"
    rows = schema_2_file(path)
    log = SqliteLog(path, 100)
    opened = await log.open(10)
    try:
        assert [
            (r.seq, r.ts, r.sender.id, r.sender.nick, r.sender.addr, r.text, r.client, r.ref)
            for r in opened.tail
        ] == rows
        resend = draft("again, resent", client="client-ann-01", ref="r2")
        appended, new = await log.append([resend, draft("new", client="client-ann-01", ref="r4")])
        assert (appended.duplicate, appended.record.seq, appended.record.text) == (
            True,
            3,
            "renamed",
        )
        assert (new.duplicate, new.record.seq) == (False, 5)
        assert [r.text for r in await log.before(None, 2)] == ["again", "new"]
    finally:
        await log.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
        assert db.execute("SELECT count(*) FROM peers").fetchone()[0] == 4 + 1  # and ANN, new
        assert db.execute("SELECT client FROM clients").fetchall() == [("client-ann-01",)]
    db.close()


@pytest.mark.parametrize("command", ["history", "server"])
def test_the_history_command_reads_a_schema_2_file_before_and_after_migration(
    tmp_path: Path, command: str
) -> None:
    """A server upgraded but not started yet, and once it has started on the file."""
    path = tmp_path / "h.sqlite3"
    schema_2_file(path)
    if command == "server":
        asyncio.run(stored(path))  # what a start does to it
    result = subprocess.run(
        [sys.executable, "-m", "chatsecure.history.cli", "--db", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    shown = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(line["seq"], line["from"]["nick"], line["text"]) for line in shown] == [
        (1, "ann", "first"),
        (2, "bob", "no client"),
        (3, "ann_away", "renamed"),
        (4, "ann", "again"),
    ]


@pytest.mark.asyncio
async def test_trimming_deletes_the_senders_and_clients_only_old_lines_named(
    tmp_path: Path,
) -> None:
    path = tmp_path / "h.sqlite3"
    log = SqliteLog(path, keep=100)
    await log.open(0)
    regular = Peer("1", "ann", "127.0.0.1:1")
    talkers = [Peer(str(n), f"talker{n}", "127.0.0.2:1") for n in range(2, 5)]
    try:
        for n in range(300):  # a new speaker and client for each line
            once = Peer(str(100 + n), f"once{n}", "127.0.0.3:1")
            await log.append([draft(f"once {n}", client=f"client-once-{n:04d}", sender=once)])
        for n in range(300):  # three who talk, and one who speaks now and then
            sender = regular if n in (50, 100) else talkers[n % 3]
            client = f"client-{sender.nick}"
            await log.append([draft(f"talk {n}", client=client, ref=f"r{n}", sender=sender)])
        # One commit longer than the log: rows made at its start are still named at its end.
        said = [talkers[n % 3] for n in range(300, 450)]
        await log.append(
            [
                draft(f"talk {n}", client=f"client-{sender.nick}", ref=f"r{n}", sender=sender)
                for n, sender in enumerate(said, 300)
            ]
        )
        # After a silence longer than the log: the rows it had are gone, new ones are made.
        await log.append([draft("back", client="client-ann", ref="r-back", sender=regular)])
        kept = await log.before(None, 1000)
    finally:
        await log.close()
    assert [r.text for r in kept] == [*(f"talk {n}" for n in range(351, 450)), "back"]
    assert (kept[-1].sender, kept[-1].client, kept[-1].ref) == (regular, "client-ann", "r-back")
    assert {(r.sender, r.client) for r in kept[:-1]} == {(t, f"client-{t.nick}") for t in talkers}
    with sqlite3.connect(path) as db:
        peers = db.execute("SELECT count(*) FROM peers").fetchone()[0]
        clients = db.execute("SELECT count(*) FROM clients").fetchone()[0]
        named = db.execute("SELECT count(*) FROM lines_named").fetchone()[0]
        stored_lines = db.execute("SELECT count(*) FROM lines").fetchone()[0]
    db.close()
    assert named == stored_lines  # every line stored still names its sender
    assert stored_lines <= 110
    assert peers <= 50  # (a few per trim for the talkers) not one per line ever
    assert clients == 4


@pytest.mark.asyncio
async def test_a_refused_commit_leaves_no_sender_or_client_behind(tmp_path: Path) -> None:
    """A commit refused after its new speaker's rows were made: the next one makes them again."""
    path = tmp_path / "h.sqlite3"
    log = SqliteLog(path, keep=100)
    await log.open(0)
    try:
        await log.append(lines("ours"))
        with sqlite3.connect(path) as other:
            other.execute("UPDATE meta SET last_seq = 5")  # another program stored lines
        other.close()
        newcomer = Peer("7", "newcomer", "127.0.0.7:1")
        said = draft("hi", client="client-newcomer", ref="r1", sender=newcomer)
        with pytest.raises(HistoryError, match="written by another program"):
            await log.append([said])
        [appended] = await log.append([said])
        assert appended.record.seq == 6
        [record] = await log.before(None, 1)
    finally:
        await log.close()
    assert (record.seq, record.sender, record.client, record.ref) == (
        6,
        newcomer,
        "client-newcomer",
        "r1",
    )


@pytest.mark.asyncio
async def test_an_empty_file_becomes_a_new_log_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "h.sqlite3"
    path.touch(mode=0o600)  # truncated by hand, say
    with caplog.at_level(logging.WARNING, logger="chatsecure.history.sqlite"):
        log = SqliteLog(path, keep=10)
        opened = await log.open(5)
        await log.close()
    assert opened.last_seq == 0
    assert [r.getMessage() for r in caplog.records] == [
        f"history: {path} is an empty file; a new log starts in it"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="chatsecure.history.sqlite"):
        again = SqliteLog(path, keep=10)  # a log now, however few lines: nothing to say
        await again.open(5)
        await again.close()
    assert caplog.records == []


@pytest.mark.asyncio
async def test_a_path_that_is_no_file_is_refused_untouched(tmp_path: Path) -> None:
    fifo, folder, dangling = tmp_path / "fifo", tmp_path / "folder", tmp_path / "link"
    os.mkfifo(fifo, 0o666)  # (like a device: /dev/null as --db must keep its mode)
    folder.mkdir(mode=0o755)
    dangling.symlink_to(tmp_path / "gone" / "h.sqlite3")
    said = {
        fifo: f"{fifo} is not a regular file; give --db the path of a file",
        folder: f"{folder} is a folder; give --db the history file in it",
        dangling: f"{dangling} is a symbolic link to {tmp_path / 'gone' / 'h.sqlite3'}, which",
    }
    for path, error in said.items():
        with pytest.raises(HistoryError) as raised:
            await SqliteLog(path, 10).open(0)
        assert str(raised.value).startswith(error)
    assert (mode(fifo), mode(folder)) == (0o666 & ~current_umask(), 0o755 & ~current_umask())
    assert sorted(p.name for p in folder.iterdir()) == []
    assert not (tmp_path / "gone").exists()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FULL_DISK_OPEN = """
import asyncio, sys
from pathlib import Path
from chatsecure.history import HistoryError, SqliteLog

async def main(folder: Path) -> None:
    log = SqliteLog(folder / "h.sqlite3", 10)
    await log.open(0)
    await log.close()  # a stopped server's file: its -wal and -shm are gone
    (folder / "filler").write_bytes(b"x" * (1 << 20))  # (the disk is smaller: it fills)

try:
    asyncio.run(main(Path(sys.argv[1])))
except OSError:
    pass
try:
    asyncio.run(SqliteLog(Path(sys.argv[1]) / "h.sqlite3", 10).open(0))
except HistoryError as exc:
    print(exc)
"""


def test_a_start_on_a_full_disk_says_the_disk_is_full(tmp_path: Path) -> None:
    """SQLite says "disk I/O error" when it cannot make its -shm on a full disk."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    disk, program = tmp_path / "disk", tmp_path / "full_disk_open.py"
    disk.mkdir()
    program.write_text(FULL_DISK_OPEN)
    script = f"mount -t tmpfs -o size=192k tmpfs {disk} && {sys.executable} {program} {disk}"
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60
    )
    if "mount" in done.stderr and done.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {done.stderr.strip()}")
    said = done.stdout.strip()
    assert said.startswith(f"{disk / 'h.sqlite3'} is full ("), done.stderr
    assert said.endswith("free some disk space or give --db another path")
