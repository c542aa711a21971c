"""What a client keeps in its config folder to resume a room: ``last_seen.json``."""

from __future__ import annotations

import threading
from pathlib import Path

from chatsecure.client.resume import LastSeen
from chatsecure.tls.trust import KnownServers


def test_a_lower_seq_of_the_same_log_never_replaces_a_higher_one(tmp_path: Path) -> None:
    """(A window's retired client saving late, after the new one went further.)"""
    seen = LastSeen(tmp_path)
    seen.put("SHA256:a", 40, "log-one-1", force=True)
    seen.put("SHA256:a", 35, "log-one-1", force=True)
    assert seen.get("SHA256:a") == (40, "log-one-1")
    seen.put("SHA256:a", 3, "log-two-2", force=True)  # a new log: its seqs start again
    assert seen.get("SHA256:a") == (3, "log-two-2")


def test_clients_sharing_a_folder_lose_none_of_each_others_writes(tmp_path: Path) -> None:
    """Each reads, changes and writes the whole file: without the folder's lock, one of
    two at once undid the other's change."""
    start = threading.Barrier(4)

    def seq_writer(name: str) -> None:
        seen = LastSeen(tmp_path)  # (its own object: as another program's)
        start.wait()
        for seq in range(1, 41):
            seen.put(f"SHA256:{name}", seq, f"log-of-{name}", force=True)

    def pinner(name: str) -> None:
        pins = KnownServers(tmp_path / "known_servers")
        start.wait()
        for n in range(40):
            pins.pin(f"{name}.example", 7000 + n, f"SHA256:{name}{n}")

    threads = [threading.Thread(target=seq_writer, args=(name,)) for name in ("x", "y")]
    threads += [threading.Thread(target=pinner, args=(name,)) for name in ("p", "q")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    seen = LastSeen(tmp_path)
    assert seen.get("SHA256:x") == (40, "log-of-x")
    assert seen.get("SHA256:y") == (40, "log-of-y")
    pins = KnownServers(tmp_path / "known_servers")
    for name in ("p", "q"):
        assert [pins.get(f"{name}.example", 7000 + n) for n in range(40)] == [
            f"SHA256:{name}{n}" for n in range(40)
        ]
