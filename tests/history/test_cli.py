"""``chatsecure history``: what it prints, read-only beside a running log, and its errors."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from chatsecure.history import DEFAULT_DB, Draft, SqliteLog
from chatsecure.history.cli import add_history_arguments, cmd_history
from chatsecure.protocol.messages import Peer
from tests.helpers import CHATSECURE

ANN = Peer("1", "ann", "127.0.0.1:50001")
MALLORY = Peer("2", "mallory", "[::1]:50002")
TRICK = "\x1b[31mred\nfake \u202eevil"


def history(*args: str) -> subprocess.CompletedProcess[str]:
    """The command in its own process, in UTC so the times are known."""
    return subprocess.run(
        [sys.executable, "-m", "chatsecure.history.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TZ": "UTC"},
        check=False,
    )


@pytest_asyncio.fixture
async def running(tmp_path: Path) -> AsyncIterator[Path]:
    """A history file with three lines, held open by a log as a running server would."""
    path = tmp_path / "history.sqlite3"
    log = SqliteLog(path, 100)
    await log.open(0)
    await log.append(
        [
            Draft(ANN, "hello", 1_700_000_000.5, "client-0001", "r1"),
            Draft(MALLORY, TRICK, 1_700_000_061.0, None, None),
            Draft(ANN, "bye", 1_700_003_600.0, None, None),
        ]
    )
    yield path
    await log.close()


@pytest.mark.asyncio
async def test_prints_the_lines_oldest_first_with_unsafe_text_made_visible(running: Path) -> None:
    result = history("--db", str(running))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        "[2023-11-14 22:13:20] #1 ann (127.0.0.1:50001): hello",
        "[2023-11-14 22:14:21] #2 mallory ([::1]:50002): \\x1b[31mred",
        "    fake \\u202eevil",  # the message's second line, indented: not a line of its own
        "[2023-11-14 23:13:20] #3 ann (127.0.0.1:50001): bye",
    ]


@pytest.mark.asyncio
async def test_json_gives_one_object_per_line_with_the_exact_text(running: Path) -> None:
    result = history("--db", str(running), "--json", "--last", "2")
    assert result.returncode == 0
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {
            "seq": 2,
            "ts": 1_700_000_061.0,
            "from": {"id": "2", "nick": "mallory", "addr": "[::1]:50002"},
            "text": TRICK,
        },
        {
            "seq": 3,
            "ts": 1_700_003_600.0,
            "from": {"id": "1", "nick": "ann", "addr": "127.0.0.1:50001"},
            "text": "bye",
        },
    ]


def test_a_missing_file_is_a_clear_error_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.sqlite3"
    result = history("--db", str(path))
    assert result.returncode == 1
    assert result.stderr.startswith(f"chatsecure: {path} not found")
    assert "a cluster keeps it in Redis" in result.stderr  # (no file to find there)
    assert not path.exists()


def test_the_folder_a_server_was_started_in_points_to_its_history(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / DEFAULT_DB.name).write_bytes(b"")
    result = history("--data-dir", str(tmp_path))  # (the server's folder, not its data dir)
    assert result.returncode == 1
    assert result.stderr.rstrip().endswith(f"({tmp_path / 'certs' / DEFAULT_DB.name} is one)")


@pytest.mark.asyncio
async def test_a_history_without_lines_says_so(tmp_path: Path) -> None:
    log = SqliteLog(tmp_path / "h.sqlite3", 100)
    await log.open(0)
    try:
        result = history("--db", str(tmp_path / "h.sqlite3"))
    finally:
        await log.close()
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr == f"chatsecure: {tmp_path / 'h.sqlite3'} holds no lines yet\n"


def test_a_folder_given_as_the_file_is_named_a_folder(tmp_path: Path) -> None:
    result = history("--db", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr == (
        f"chatsecure: {tmp_path} is a folder; give --db the history file in it "
        f"({tmp_path / 'history.sqlite3'}), or --data-dir the folder\n"
    )


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"", "holds no history yet"),
        (b"not sqlite at all, " * 300, "is not a chatsecure history database"),
    ],
)
def test_a_file_that_is_not_a_history_is_refused_untouched(
    tmp_path: Path, content: bytes, error: str
) -> None:
    path = tmp_path / "h.sqlite3"
    path.write_bytes(content)
    result = history("--db", str(path))
    assert result.returncode == 1
    assert str(path) in result.stderr
    assert error in result.stderr
    assert path.read_bytes() == content


@pytest.mark.asyncio
async def test_a_last_beyond_any_number_sqlite_takes_prints_every_line(running: Path) -> None:
    result = history("--db", str(running), "--last", str(2**63), "--json")
    assert (result.returncode, result.stderr) == (0, "")
    assert [json.loads(line)["seq"] for line in result.stdout.splitlines()] == [1, 2, 3]


def test_last_must_be_a_positive_number() -> None:
    result = history("--last", "0")
    assert result.returncode == 2
    assert "--last" in result.stderr


def parser() -> argparse.ArgumentParser:
    built = argparse.ArgumentParser()
    add_history_arguments(built)
    return built


def test_defaults() -> None:
    args = parser().parse_args([])
    assert (args.db, args.data_dir, args.last, args.json) == (None, None, 50, False)
    assert Path("certs") / "history.sqlite3" == DEFAULT_DB


@pytest.mark.asyncio
async def test_data_dir_reads_the_history_in_it(running: Path) -> None:
    result = history("--data-dir", str(running.parent), "--last", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("ann (127.0.0.1:50001): bye")
    both = history("--data-dir", str(running.parent), "--db", str(running))
    assert both.returncode == 2
    assert "not allowed with" in both.stderr


@pytest.mark.asyncio
async def test_cmd_history_in_process(running: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cmd_history(parser().parse_args(["--db", str(running), "--last", "1", "--json"])) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "bye"


@pytest.mark.asyncio
async def test_a_reader_that_stops_early_ends_it_quietly(tmp_path: Path) -> None:
    """``chatsecure history | head -1``: the pipe closes long before the output ends."""
    path = tmp_path / "history.sqlite3"
    log = SqliteLog(path, 5000)
    await log.open(0)
    await log.append(
        [Draft(ANN, f"{n} " + "x" * 200, 1_700_000_000.0, None, None) for n in range(2000)]
    )
    await log.close()
    proc = subprocess.Popen(
        [*CHATSECURE, "history", "--db", str(path), "--last", "2000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    assert b"ann (127.0.0.1:50001): 0 xxx" in proc.stdout.readline()
    proc.stdout.close()  # far more than a pipe holds is still to come
    with proc.stderr:
        assert proc.wait(30) == 141
        assert proc.stderr.read() == b""


@pytest.mark.asyncio
async def test_a_stopped_servers_history_is_read_without_leaving_files_beside_it(
    tmp_path: Path,
) -> None:
    """A -wal and -shm of the reader's own (root's, say) would keep a server that runs as
    another user from opening its history at its next start."""
    path = tmp_path / "history.sqlite3"
    log = SqliteLog(path, 100)
    await log.open(0)
    await log.append([Draft(ANN, "said before the stop", 1_700_000_000.0, None, None)])
    await log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.sqlite3"]
    result = history("--db", str(path))
    assert result.returncode == 0, result.stderr
    assert "said before the stop" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.sqlite3"]
