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


def bench(*args: str) -> list[dict[str, Any]]:
    """Run tools/bench.py with ``args``; return its JSON lines (it must exit 0)."""
    done = subprocess.run(
        [*BENCH, *args, "--json-only", "--no-discovery"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


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


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed (chatsecure[fast])")
def test_fanout_on_uvloop() -> None:
    (r,) = bench("fanout", "-n", "4", "-s", "1", "-m", "20", "--loop", "uvloop")
    assert r["server"] == "chatsecure+uvloop"
    assert (r["deliveries"], r["lost"]) == (20 * 3, 0)
