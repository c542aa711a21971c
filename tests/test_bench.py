"""Smoke test of the benchmark tool: each workload, tiny, against real servers on loopback.

Benchmarks are not tests: this only proves that ``tools/bench.py`` starts the servers, drives
real TLS clients through every workload and reports sane numbers. The real runs and their
figures are in docs/performance.md.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = [sys.executable, str(ROOT / "tools" / "bench.py")]
HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


def run_bench(*args: str) -> str:
    """Run tools/bench.py with ``args``; return what it printed (it must exit 0)."""
    done = subprocess.run(
        [*BENCH, *args, "--no-discovery"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def bench(*args: str) -> list[dict[str, Any]]:
    """Run tools/bench.py with ``args``; return its JSON lines."""
    out = run_bench(*args, "--json-only")
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_fanout_reaches_every_receiver_on_chatsecure_and_the_naive_baseline() -> None:
    results = bench("fanout", "-n", "5", "-s", "2", "-m", "40", "--loop", "asyncio", "--baseline")
    assert [r["server"] for r in results] == ["chatsecure", "naive"]
    for r in results:
        assert r["deliveries"] == 2 * 40 * 4
        assert r["lost"] == 0
        assert r["error"] is None
        assert r["deliveries_per_s"] > 0
        assert 0 <= r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["server_cpu_s"] >= 0
        assert r["gen_cpu_s"] >= 0


def test_paced_messages_all_arrive_with_latencies() -> None:
    (r,) = bench("paced", "-n", "4", "--rate", "10", "--duration", "0.5", "--loop", "asyncio")
    assert (r["workload"], r["clients"], r["messages"]) == ("paced", 4, 5)
    assert r["deliveries"] == 4 * 5 * 3
    assert r["lost"] == 0
    assert 0 <= r["p99_ms"] < 2000


def test_hold_reports_handshakes_and_memory_per_connection() -> None:
    (r,) = bench("hold", "-n", "20", "--loop", "asyncio")
    assert r["clients"] == 20
    assert r["error"] is None
    assert r["handshakes_per_s"] > 0
    assert r["server_rss_mib"] > 0
    assert r["rss_per_conn_kib"] is not None
    assert r["joins_per_s"] > 0
    assert r["cpu_ms_per_join"] >= 0  # /proc counts CPU in 10 ms ticks: 20 joins may be 0


def test_hold_storm_joins_everyone_with_tls_and_hello_together() -> None:
    (r,) = bench("hold", "-n", "30", "--storm", "4", "--loop", "asyncio")
    assert (r["clients"], r["error"]) == (30, None)
    assert r["joins_per_s"] > 0
    assert r["cpu_ms_per_join"] > 0


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed (chatsecure[fast])")
def test_fanout_on_uvloop() -> None:
    (r,) = bench("fanout", "-n", "4", "-s", "1", "-m", "20", "--loop", "uvloop")
    assert r["server"] == "chatsecure+uvloop"
    assert (r["deliveries"], r["lost"]) == (20 * 3, 0)


def test_fanout_senders_get_an_ack_per_line_with_and_without_the_room_log() -> None:
    args = ("fanout", "-n", "4", "-s", "2", "-m", "30", "--loop", "asyncio", "--history", "both")
    results = bench(*args)
    assert [r["server"] for r in results] == ["chatsecure", "chatsecure-nolog"]
    for r in results:
        assert (r["deliveries"], r["lost"], r["error"]) == (2 * 30 * 3, 0, None)
        assert r["acks"] == 2 * 30
        assert r["server_us_per_delivery"] == pytest.approx(
            r["server_cpu_s"] * 1e6 / r["deliveries"], abs=0.01
        )


def test_summary_gives_the_log_its_ratio_to_the_server_without_it_and_to_another_tree() -> None:
    out = run_bench(
        *("fanout", "-n", "3", "-s", "1", "-m", "20", "--loop", "asyncio"),
        *("--history", "both", "--against-tree", str(ROOT)),
    )
    (line,) = [x for x in out.splitlines() if x.startswith("chatsecure ") and "median" in x]
    assert "us/delivery" in line
    assert "x chatsecure-nolog" in line
    assert "x chatsecure@" in line
    runs = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    assert len(runs) == 3
    assert all(r["lost"] == 0 and r["acks"] == 20 for r in runs)


def test_every_other_round_runs_the_servers_in_the_other_order() -> None:
    runs = bench(
        *("fanout", "-n", "3", "-s", "1", "-m", "20", "--loop", "asyncio"),
        *("--history", "both", "--runs", "2"),
    )
    order = [(r["run"], r["server"]) for r in runs]
    assert order == [
        (1, "chatsecure"),
        (1, "chatsecure-nolog"),
        (2, "chatsecure-nolog"),
        (2, "chatsecure"),
    ]


def load_tool(monkeypatch: pytest.MonkeyPatch) -> Any:
    """tools/bench.py as a module, to call its functions."""
    spec = importlib.util.spec_from_file_location("bench_tool", ROOT / "tools" / "bench.py")
    assert spec is not None
    assert spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_tool", tool)  # its dataclasses look themselves up
    spec.loader.exec_module(tool)
    return tool


def test_summary_gives_the_ratios_of_each_round_beside_the_ratio_of_the_medians(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tool = load_tool(monkeypatch)
    # a is twice as fast as b in every round; a's median also counts a round b failed in.
    speeds = {"a": [200, 300, 100], "b": [100, 150, 50]}
    results = [
        tool.Result("fanout", server, run, 3, deliveries_per_s=speed)
        for server, figures in speeds.items()
        for run, speed in enumerate(figures, start=1)
    ]
    results.append(tool.Result("fanout", "a", 4, 3, deliveries_per_s=250))  # b failed here
    results.append(tool.Result("fanout", "b", 4, 3, deliveries_per_s=1, error="gone"))
    line = tool.summary(results, (), {"a": ["b"]})[0]
    assert "2.25x b (per round: median 2.00, 2.00-2.00)" in line


def test_trees_at_one_commit_keep_their_runs_apart(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Two checkouts of one commit, one with a change: each gets a name of its own."""
    tool = load_tool(monkeypatch)

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout.strip()

    first, second, changed = tmp_path / "first", tmp_path / "second", tmp_path / "changed"
    git("init", "-q", str(first))
    (first / "server.py").write_text("speed = 1\n")
    git("-C", str(first), "add", "server.py")
    git("-C", str(first), "commit", "-qm", "one")
    commit = git("-C", str(first), "rev-parse", "--short", "HEAD")
    git("-C", str(first), "worktree", "add", "-q", "--detach", str(second))
    git("-C", str(first), "worktree", "add", "-q", "--detach", str(changed))
    (changed / "server.py").write_text("speed = 2\n")
    (second / "notes.txt").write_text("not tracked: the code is the commit's\n")

    assert tool.tree_name(first) == commit
    assert tool.tree_name(second) == commit
    assert tool.tree_name(changed) == f"{commit}+changes"
    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # wherever tmp_path is
    assert tool.tree_name(plain) == "plain"  # not a git work tree
    assert tool.tree_names([first, changed, second]) == [
        f"{commit}:first",
        f"{commit}+changes",
        f"{commit}:second",
    ]


def test_store_counts_acked_lines_at_both_durabilities() -> None:
    results = bench("store", "-m", "50", "--loop", "asyncio", "--durability", "both")
    assert [r["server"] for r in results] == ["chatsecure", "chatsecure-full"]
    for r in results:
        assert (r["clients"], r["acks"], r["lost"], r["error"]) == (2, 100, 0, None)
        assert r["acked_per_s"] > 0


def test_replay_resumes_a_client_with_every_stored_line() -> None:
    (r,) = bench("replay", "-m", "300", "--resumes", "2", "--loop", "asyncio")
    assert (r["acks"], r["replayed"], r["error"]) == (300, 300, None)
    assert 0 < r["resume_ms"] <= r["resume_max_ms"] < 10_000


def test_replay_against_another_tree_gives_it_the_same_log_options() -> None:
    # 1,500 lines: more than a server replays by default (--replay-max 1000).
    args = ("replay", "-m", "1500", "--resumes", "1", "--loop", "asyncio")
    results = bench(*args, "--against-tree", str(ROOT))
    assert [r["server"].partition("@")[0] for r in results] == ["chatsecure", "chatsecure"]
    for r in results:
        assert (r["replayed"], r["error"]) == (1500, None)


def test_fanout_with_a_window_waits_for_acks_and_still_delivers_everything() -> None:
    args = ("fanout", "-n", "4", "-s", "2", "-m", "100", "--loop", "asyncio", "--window", "20")
    (r,) = bench(*args)
    assert (r["deliveries"], r["lost"], r["acks"], r["error"]) == (2 * 100 * 3, 0, 200, None)


def test_hold_storm_with_talk_times_lines_said_during_the_storm() -> None:
    (r,) = bench("hold", "-n", "60", "--storm", "8", "--talk", "20", "--loop", "asyncio")
    assert (r["clients"], r["error"], r["lost"]) == (60, None, 0)
    assert r["messages"] > 0
    assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]


def test_restart_brings_every_client_back_with_every_line_and_the_whole_roster() -> None:
    (r,) = bench("restart", "-n", "40", "--loop", "asyncio")
    assert (r["clients"], r["error"], r["lost"], r["replayed"]) == (40, None, 0, 10)
    assert 0 < r["join_s"] <= r["seconds"]


def test_hold_from_two_processes_gives_every_client_the_whole_room() -> None:
    (r,) = bench("hold", "-n", "40", "--procs", "2", "--loop", "asyncio")
    assert (r["clients"], r["procs"], r["error"], r["lost"]) == (40, 2, None, 0)
    assert (r["roster_min"], r["roster_max"], r["welcome_frames"]) == (40, 40, 1)
    assert r["handshakes_per_s"] > 0
    assert r["joins_per_s"] > 0
    assert r["server_rss_mib"] > 0


def test_hold_storm_from_two_processes_joins_everyone() -> None:
    (r,) = bench("hold", "-n", "40", "--procs", "2", "--storm", "4", "--loop", "asyncio")
    assert (r["clients"], r["procs"], r["error"]) == (40, 2, None)
    assert (r["roster_min"], r["roster_max"]) == (40, 40)
    assert r["cpu_ms_per_join"] > 0
