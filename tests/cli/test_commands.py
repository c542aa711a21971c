"""The command line as a whole: the entry point, help and version."""

from __future__ import annotations

import subprocess
import sys

import pytest

from chatsecure import __version__
from chatsecure.cli import build_parser
from tests.helpers import Terminal

FP = "SHA256:qd11Mv3IYZlmGAyerL06S5VFZ5AXv+TuqPcd5YM53Gc"


def test_version() -> None:
    result = Terminal.run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"chatsecure {__version__}"


def test_help_lists_the_commands() -> None:
    result = Terminal.run_cli("--help")
    assert result.returncode == 0
    for command in ("server", "connect", "gencert", "forget"):
        assert command in result.stdout


def test_unknown_option_is_a_usage_error() -> None:
    result = Terminal.run_cli("connect", "127.0.0.1", "--nick", "bob", "--no-such-option")
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_connect_needs_a_nick() -> None:
    result = Terminal.run_cli("connect", "127.0.0.1")
    assert result.returncode == 1
    assert result.stderr == "chatsecure: give your nick with --nick NICK\n"


@pytest.mark.parametrize("command", ["connect", "gui"])
@pytest.mark.parametrize(
    "options",
    [
        ["--cafile", "ca.pem", "--fingerprint", FP],
        ["--cafile", "ca.pem", "--accept-new"],
        ["--fingerprint", FP, "--accept-new"],
    ],
)
def test_ways_of_trusting_the_server_exclude_each_other(command: str, options: list[str]) -> None:
    # Refused before connecting or opening a window: one of them would be ignored unsaid.
    safe = ["--no-discovery"] if command == "gui" else []  # should the check ever fail
    result = Terminal.run_cli(command, "127.0.0.1:9", "--nick", "bob", *safe, *options)
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr


def test_discovered_with_no_discovery_is_refused_before_looking(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The parser alone, in this process: were the check to fail, nothing would look on the
    # network here (no command runs).
    argv = ["connect", "--nick", "bob", "--no-discovery", "--discovered", "lab"]
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_asyncio_warnings_do_not_reach_a_client_users_stderr() -> None:
    """("socket.send() raised exception." for each line written into a connection gone.)"""
    code = (
        "import logging; from chatsecure.cli import build_parser, configure_logging; "
        "configure_logging(build_parser().parse_args(['connect', 'x', '--nick', 'n'])); "
        "logging.getLogger('asyncio').warning('socket.send() raised exception.'); "
        "logging.getLogger('asyncio').error('a real asyncio error'); "
        "logging.getLogger('chatsecure.client').warning('ours')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stderr == "chatsecure: a real asyncio error\nchatsecure: ours\n"
