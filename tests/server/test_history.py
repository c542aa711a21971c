"""Protocol v2 on a real server: seq, acknowledged sends, replay, history paging, resume."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from chatsecure import room
from chatsecure.history import Appends, Draft, HistoryError, MemoryLog
from chatsecure.protocol.codes import ErrorCode
from chatsecure.testing import RawClient, ServerThread, joined, server_config

Start = Callable[..., ServerThread]
CLIENT = "testclient01"


def say(client: RawClient, text: str, ref: str | None = None) -> None:
    frame = {"type": "msg", "text": text}
    if ref is not None:
        frame["ref"] = ref
    client.send(frame)


def test_every_line_gets_the_next_seq_and_the_sender_an_ack(server: ServerThread) -> None:
    with joined(server.host, server.port, "alice", "bob") as (alice, bob):
        alice.send({"type": "msg", "text": "one", "ref": "a1"})
        ack = alice.expect("ack")
        assert ack["ref"] == "a1"
        assert ack["seq"] == 1
        got = bob.expect("msg")
        assert (got["seq"], got["text"], got["ts"]) == (1, "one", ack["ts"])
        say(bob, "two")  # a v1 line: no ref, no ack, still sequenced
        assert alice.expect("msg")["seq"] == 2
        assert bob.silent()


def test_a_newcomer_gets_the_newest_lines_as_history(start_server: Start) -> None:
    server = start_server(replay=3)
    with joined(server.host, server.port, "alice") as (alice,):
        for n in range(5):
            say(alice, f"line {n}", f"r{n}")
            alice.expect("ack")
        with RawClient(server.host, server.port) as bob:
            welcome = bob.join("bob")
            assert (welcome["seq"], welcome["replay"], welcome["skipped"]) == (5, 3, 0)
            assert [m["text"] for m in bob.replayed] == ["line 2", "line 3", "line 4"]
            assert all(m["history"] is True for m in bob.replayed)
            assert [m["seq"] for m in bob.replayed] == [3, 4, 5]


def test_resume_with_since_replays_exactly_what_was_missed(start_server: Start) -> None:
    server = start_server(replay=1)
    with joined(server.host, server.port, "alice") as (alice,):
        with RawClient(server.host, server.port) as bob:
            bob.join("bob", client=CLIENT)
            alice.expect("join")
            say(alice, "seen", "s0")
            alice.expect("ack")
            assert bob.expect("msg")["seq"] == 1
        alice.expect("leave")
        for n in range(4):
            say(alice, f"missed {n}", f"m{n}")
            alice.expect("ack")
        with RawClient(server.host, server.port) as bob:
            welcome = bob.join("bob", client=CLIENT, since=1)
            assert (welcome["seq"], welcome["replay"], welcome["skipped"]) == (5, 4, 0)
            assert [m["seq"] for m in bob.replayed] == [2, 3, 4, 5]
            say(alice, "live", "l0")
            assert bob.expect("msg")["seq"] == 6


def test_the_replay_cap_keeps_the_newest_and_says_how_many_were_skipped(
    start_server: Start,
) -> None:
    server = start_server(replay_max=3)
    with joined(server.host, server.port, "alice") as (alice,):
        for n in range(10):
            say(alice, f"l{n}", f"r{n}")
            alice.expect("ack")
        with RawClient(server.host, server.port) as bob:
            welcome = bob.join("bob", since=2)
            assert (welcome["replay"], welcome["skipped"]) == (3, 5)
            assert [m["seq"] for m in bob.replayed] == [8, 9, 10]


def test_no_replay_holds_a_line_older_than_the_history_keeps(start_server: Start) -> None:
    server = start_server(history=3)
    with joined(server.host, server.port, "alice") as (alice,):
        for n in range(8):
            say(alice, f"l{n}", f"r{n}")
            alice.expect("ack")
        with RawClient(server.host, server.port) as bob:
            welcome = bob.join("bob")  # a newcomer, who would see the last 50
            assert (welcome["seq"], welcome["replay"]) == (8, 3)
            assert [m["seq"] for m in bob.replayed] == [6, 7, 8]
        with RawClient(server.host, server.port) as carol:
            welcome = carol.join("carol", since=1)  # missed 7, of which 3 are kept
            # The 4 others are not "skipped": the cap did not leave them out, and /older
            # could not bring them.
            assert (welcome["replay"], welcome["skipped"]) == (3, 0)
            assert [m["seq"] for m in carol.replayed] == [6, 7, 8]


def test_skipped_counts_only_lines_the_history_still_keeps(start_server: Start) -> None:
    server = start_server(history=5, replay_max=3)
    with joined(server.host, server.port, "alice") as (alice,):
        for n in range(8):
            say(alice, f"l{n}", f"r{n}")
            alice.expect("ack")
        with RawClient(server.host, server.port) as bob:
            welcome = bob.join("bob", since=1)  # missed 7: 2 gone, 3 replayed, 2 skipped
            assert (welcome["seq"], welcome["replay"], welcome["skipped"]) == (8, 3, 2)
            assert [m["seq"] for m in bob.replayed] == [6, 7, 8]
            bob.send({"type": "history", "before": 6, "limit": 10})
            assert [bob.expect("msg")["seq"] for _ in range(2)] == [4, 5]  # the 2 skipped
            assert bob.expect("history_end")["count"] == 2


def test_skipped_counts_only_lines_kept_after_a_smaller_history_before_a_restart(
    start_server: Start, tmp_path: Path
) -> None:
    db = tmp_path / "h.sqlite3"
    small = start_server(history=3, db=db)
    with joined(small.host, small.port, "alice") as (alice,):
        for n in range(8):
            say(alice, f"l{n}", f"r{n}")
            alice.expect("ack")
    small.stop()
    large = start_server(history=1000, replay_max=2, db=db)  # what was trimmed is not back
    with RawClient(large.host, large.port) as bob:
        welcome = bob.join("bob", since=1)  # missed 7: 2 replayed, and skipped what is kept
        assert (welcome["seq"], welcome["replay"]) == (8, 2)
        assert [m["seq"] for m in bob.replayed] == [7, 8]
        bob.send({"type": "history", "before": 7, "limit": 10})
        while (end := bob.recv())["type"] != "history_end":
            assert end["seq"] < 7
        assert welcome["skipped"] == end["count"] < 5, "as many as paging can bring"
    with RawClient(large.host, large.port) as carol:
        welcome = carol.join("carol", since=0)
        assert (welcome["replay"], welcome["skipped"]) == (2, end["count"])


def test_a_resent_ref_is_acknowledged_with_its_first_seq_and_never_broadcast_twice(
    server: ServerThread,
) -> None:
    with joined(server.host, server.port, "bob") as (bob,):
        with RawClient(server.host, server.port) as alice:
            alice.join("alice", client=CLIENT)
            bob.expect("join")
            say(alice, "only once", "x1")
            first = alice.expect("ack")
            assert bob.expect("msg")["text"] == "only once"
        bob.expect("leave")
        with RawClient(server.host, server.port) as alice:  # back, re-sending what it had
            alice.join("alice", client=CLIENT, since=0)
            bob.expect("join")
            say(alice, "only once", "x1")
            again = alice.expect("ack")
            assert again == first
            assert bob.silent()
        bob.expect("leave")
        # the same ref from another client id is another line
        with RawClient(server.host, server.port) as carol:
            carol.join("carol", client="anotherclient")
            bob.expect("join")
            say(carol, "mine too", "x1")
            assert carol.expect("ack")["seq"] == first["seq"] + 1


def test_a_client_back_before_its_old_connection_ended_replaces_it_and_keeps_its_nick(
    server: ServerThread,
) -> None:
    # Its Wi-Fi blinked: the old connection lingers, unseen by the server, while the client
    # connects again. Without the replacement it would be alice_2 beside a ghost alice.
    with (
        joined(server.host, server.port, "bob") as (bob,),
        RawClient(server.host, server.port) as old,
    ):
        old.join("alice", client=CLIENT)
        bob.expect("join")
        say(old, "before", "r1")
        assert old.expect("ack")["seq"] == 1
        assert bob.expect("msg")["text"] == "before"
        with RawClient(server.host, server.port) as new:
            welcome = new.join("alice", client=CLIENT, since=1)
            assert welcome["you"]["nick"] == "alice"
            assert [p["nick"] for p in welcome["peers"]] == ["bob"]  # no ghost
            error = old.expect("error")
            assert (error["code"], old.closed()) == ("replaced", True)
            assert error["message"] == "it connected again from 127.0.0.1"
            leave, join = bob.expect("leave"), bob.expect("join")
            assert (leave["peer"]["nick"], leave["reason"]) == ("alice", "replaced")
            assert join["peer"]["nick"] == "alice"
            say(new, "after", "r2")
            assert new.expect("ack")["seq"] == 2
            assert bob.expect("msg")["text"] == "after"
            assert server.online() == ["bob", "alice"]


def test_two_people_on_one_config_folder_under_two_nicks_both_stay(server: ServerThread) -> None:
    with (
        RawClient(server.host, server.port) as bob,
        RawClient(server.host, server.port) as carol,
    ):
        bob.join("bob", client=CLIENT)
        assert carol.join("carol", client=CLIENT)["you"]["nick"] == "carol"
        assert bob.expect("join")["peer"]["nick"] == "carol"
        assert bob.silent()
        assert carol.silent()
        assert sorted(server.online()) == ["bob", "carol"]
        # bob's own ghost is still found under his nick, carol or no carol
        carol.close()
        assert bob.expect("leave")["peer"]["nick"] == "carol"
        with RawClient(server.host, server.port) as back:
            assert back.join("bob", client=CLIENT)["you"]["nick"] == "bob"
            assert bob.expect("error")["code"] == "replaced"
            assert server.online() == ["bob"]


def test_history_pages_backwards_in_ascending_order(start_server: Start) -> None:
    server = start_server(replay=0)
    with joined(server.host, server.port, "alice") as (alice,):
        for n in range(1, 8):
            say(alice, f"l{n}", f"r{n}")
            alice.expect("ack")
        alice.send({"type": "history", "before": 6, "limit": 3})
        page = [alice.expect("msg") for _ in range(3)]
        assert [m["seq"] for m in page] == [3, 4, 5]
        assert all(m["history"] for m in page)
        assert alice.expect("history_end") == {"type": "history_end", "before": 6, "count": 3}
        alice.send({"type": "history", "limit": 2, "ref": "h-2"})  # no before: the newest
        assert [alice.expect("msg")["seq"] for _ in range(2)] == [6, 7]
        end = alice.expect("history_end")
        assert end == {"type": "history_end", "before": None, "count": 2, "ref": "h-2"}
        alice.send({"type": "history", "before": 1})
        assert alice.expect("history_end")["count"] == 0


def test_a_refused_history_request_is_named_by_its_ref(start_server: Start) -> None:
    server = start_server(msg_rate=1, msg_burst=2)
    with joined(server.host, server.port, "alice") as (alice,):
        alice.send({"type": "history", "limit": 0, "ref": "h-1"})
        error = alice.expect("error")
        assert (error["code"], error["ref"]) == (ErrorCode.BAD_MESSAGE, "h-1")
        alice.send({"type": "history", "limit": 5, "ref": 7})
        error = alice.expect("error")
        assert error["code"] == ErrorCode.BAD_MESSAGE
        assert "ref" not in error  # (it is not a ref: nothing to name)
        alice.send({"type": "history", "limit": 5, "ref": "h-3"})  # over the rate: a burst of 2
        error = alice.expect("error")
        assert (error["code"], error["ref"]) == (ErrorCode.RATE_LIMITED, "h-3")


def test_history_zero_keeps_nothing_and_says_so(start_server: Start, tmp_path: Path) -> None:
    db = tmp_path / "none.sqlite3"
    server = start_server(history=0, db=db)
    with joined(server.host, server.port, "alice", "bob") as (alice, bob):
        say(alice, "not kept", "n1")
        assert alice.expect("ack")["seq"] == 0
        got = bob.expect("msg")
        assert "seq" not in got
        with RawClient(server.host, server.port) as carol:
            welcome = carol.join("carol", since=5)
            assert (welcome["seq"], welcome["replay"]) == (0, 0)
        alice.expect("join")
        alice.expect("leave")
        alice.send({"type": "history"})
        assert alice.expect("history_end")["count"] == 0
    server.stop()
    assert not db.exists()


def test_lines_survive_a_restart_and_seq_goes_on(start_server: Start, tmp_path: Path) -> None:
    db = tmp_path / "room.sqlite3"
    first = start_server(db=db)
    with joined(first.host, first.port, "alice") as (alice,):
        for n in range(3):
            say(alice, f"before {n}", f"b{n}")
            alice.expect("ack")
    first.stop()
    assert os.stat(db).st_mode & 0o777 == 0o600
    second = start_server(db=db)
    with joined(second.host, second.port, "bob") as (bob,):
        assert [m["text"] for m in bob.replayed] == ["before 0", "before 1", "before 2"]
        say(bob, "after", "a0")
        assert bob.expect("ack")["seq"] == 4
        # ids go on past those in the log: nobody new is taken for an old speaker
        assert int(bob.replayed[0]["from"]["id"]) < int(second.online_ids()[0])


def test_a_corrupt_database_stops_the_server_with_a_clear_error(
    tmp_path: Path, cert_dir: Path
) -> None:
    db = tmp_path / "broken.sqlite3"
    db.write_bytes(os.urandom(4096))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatsecure.server",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-discovery",
            "--cert",
            str(cert_dir / "server.crt"),
            "--key",
            str(cert_dir / "server.key"),
            "--db",
            str(db),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert str(db) in result.stderr
    assert "Traceback" not in result.stderr
    assert "listening" not in result.stdout


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_the_sqlite_log_serves_acks_and_replay(
    start_server: Start, tmp_path: Path, durability: str
) -> None:
    server = start_server(db=tmp_path / "d.sqlite3", durability=durability)
    with joined(server.host, server.port, "alice", "bob") as (alice, bob):
        for n in range(20):
            say(alice, f"l{n}", f"r{n}")
        assert [alice.expect("ack")["seq"] for _ in range(20)] == list(range(1, 21))
        assert [bob.expect("msg")["seq"] for _ in range(20)] == list(range(1, 21))


class FillingDisk(MemoryLog):
    """A MemoryLog on a disk that is full while ``full`` is set; a commit waits while
    ``gate`` is closed."""

    def __init__(self, keep: int) -> None:
        super().__init__(keep)
        self.full = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    async def append(self, drafts: Sequence[Draft]) -> Appends:
        await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, 10)
        if self.full.is_set():  # as SqliteLog says it (mapped_errors)
            raise HistoryError("/srv/h.sqlite3 is full (database or disk is full); free space")
        return await super().append(drafts)


def test_a_full_disk_is_logged_once_with_its_cause_and_its_end_with_a_count(
    cert_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    history = FillingDisk(100)
    server = ServerThread(server_config(cert_dir), history).start()
    try:
        with joined(server.host, server.port, "alice", "bob") as (alice, bob):
            history.full.set()
            for n in range(3):
                if n == 1:  # a join during a failing commit: its batch stores no line
                    history.gate.clear()
                    say(alice, f"lost {n}", f"r{n}")
                    with RawClient(server.host, server.port) as carol:
                        carol.join("carol")
                        history.gate.set()
                        frames = [alice.recv() for _ in range(2)]
                    assert sorted((f["type"], f.get("ref")) for f in frames) == [
                        ("error", "r1"),
                        ("join", None),
                    ]
                    assert alice.expect("leave")["peer"]["nick"] == "carol"
                    assert [bob.expect(kind)["type"] for kind in ("join", "leave")] == [
                        "join",
                        "leave",
                    ]
                    continue
                say(alice, f"lost {n}", f"r{n}")
                assert alice.expect("error") == {
                    "type": "error",
                    "code": "not_stored",
                    "message": "the server could not store your line",
                    "ref": f"r{n}",
                }
            history.full.clear()
            say(alice, "stored", "r3")
            assert alice.expect("ack")["seq"] == 1
            assert bob.expect("msg")["text"] == "stored"
    finally:
        server.stop()
    assert not [r for r in caplog.records if r.exc_info is not None], "no traceback"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "could not store 1 line: /srv/h.sqlite3 is full (database or disk is full); free space;"
        " lines are refused until a commit works"
    ]
    assert "lines are stored again; 3 lines were refused meanwhile" in caplog.text


class GatedLog(MemoryLog):
    """A MemoryLog whose commits wait until the test opens the gate: a slow disk, on demand."""

    def __init__(self, keep: int) -> None:
        super().__init__(keep)
        self.gate = threading.Event()

    async def append(self, drafts: Sequence[Draft]) -> Appends:
        await asyncio.get_running_loop().run_in_executor(None, self.gate.wait, 30)
        return await super().append(drafts)


def test_a_sender_is_not_read_while_the_log_is_far_behind(
    cert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(room, "STORE_HIGH", 20)
    lines = 20_000
    history = GatedLog(lines)
    server = ServerThread(server_config(cert_dir, msg_rate=0), history).start()
    try:
        with joined(server.host, server.port, "alice", "bob") as (alice, bob):
            data = b"".join(
                b'{"type":"msg","text":"line %d","ref":"r%d"}\n' % (n, n) for n in range(lines)
            )
            sender = threading.Thread(target=alice.send_raw, args=(data,))
            sender.start()  # blocks once the server stops reading and the buffers are full
            time.sleep(1.0)
            # The first commit waits at the gate: the server stopped reading alice at the
            # 20th line she said, so most of her 1 MB still waits in her socket.
            unstored = server.call(lambda: server.server.room.unstored)
            assert 20 <= unstored < lines // 2
            history.gate.set()
            sender.join(10)
            acks = [alice.expect("ack", timeout=10)["seq"] for _ in range(lines)]
            assert acks == list(range(1, lines + 1))
            seen = [bob.expect("msg", timeout=10)["text"] for _ in range(lines)]
            assert seen == [f"line {n}" for n in range(lines)]
    finally:
        history.gate.set()
        server.stop()


class PacedLog(MemoryLog):
    """A MemoryLog whose commits take a moment, as a disk's do; it notes each batch's size and
    the newest seq the room had broadcast when its commit began."""

    def __init__(self, keep: int) -> None:
        super().__init__(keep)
        self.room: room.Room | None = None
        self.batches: list[tuple[int, int]] = []

    async def append(self, drafts: Sequence[Draft]) -> Appends:
        assert self.room is not None
        self.batches.append((len(drafts), self.room.seq))
        await asyncio.sleep(0.002)
        return await super().append(drafts)


def test_a_burst_is_stored_in_growing_batches_each_while_the_last_is_broadcast(
    cert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(room, "BATCH_START", 8)
    monkeypatch.setattr(room, "BATCH_MAX", 32)
    lines = 200
    history = PacedLog(lines)
    server = ServerThread(server_config(cert_dir, msg_rate=0), history).start()
    history.room = server.server.room
    try:
        with joined(server.host, server.port, "alice", "bob") as (alice, bob):
            frame = b'{"type":"msg","text":"l%d","ref":"r%d"}\n'
            alice.send_raw(b"".join(frame % (n, n) for n in range(lines)))
            acks = [alice.expect("ack")["seq"] for _ in range(lines)]
            assert acks == list(range(1, lines + 1))
            seen = [(m["seq"], m["text"]) for m in (bob.expect("msg") for _ in range(lines))]
            assert seen == [(n + 1, f"l{n}") for n in range(lines)]
    finally:
        server.stop()
    sizes = [size for size, _ in history.batches]
    assert (sum(sizes), max(sizes)) == (lines, 32), sizes
    assert sizes[0] <= 8
    assert all(size <= max(8, 2 * before) for before, size in itertools.pairwise(sizes)), sizes
    # A commit that began before the batch before it was broadcast ran beside that broadcast.
    stored, overlapped = 0, 0
    for size, broadcast in history.batches:
        overlapped += broadcast < stored
        stored += size
    assert overlapped >= len(sizes) // 2, history.batches


def test_a_sender_back_before_its_line_was_stored_gets_it_as_its_ack_not_a_neighbour(
    cert_dir: Path,
) -> None:
    # carol is another program on bob's config folder (same client id, another nick). bob's
    # line is committed after his connection broke and he came back: the line with its ref
    # (his ack) goes to bob's new connection, and carol gets it as everyone does.
    history = GatedLog(100)
    history.gate.set()
    server = ServerThread(server_config(cert_dir), history).start()
    try:
        with RawClient(server.host, server.port) as carol:
            carol.join("carol", client=CLIENT)
            bob = RawClient(server.host, server.port)
            bob.join("bob", client=CLIENT)
            assert carol.expect("join")["peer"]["nick"] == "bob"
            history.gate.clear()
            say(bob, "hi", "bobref1")
            bob.close()
            with RawClient(server.host, server.port) as back:
                assert back.join("bob", client=CLIENT, since=0)["you"]["nick"] == "bob"
                history.gate.set()
                mine = back.expect("msg")
                assert (mine["text"], mine.get("ref")) == ("hi", "bobref1")
                # the line first: bob's leave and return wait behind it
                theirs = carol.expect("msg")
                assert (theirs["text"], theirs.get("ref")) == ("hi", None)
                assert carol.expect("leave")["peer"]["nick"] == "bob"
                assert carol.expect("join")["peer"]["nick"] == "bob"
    finally:
        history.gate.set()
        server.stop()
