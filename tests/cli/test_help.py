"""Every ``--help`` says what each option takes and what the command is for."""

from __future__ import annotations

import functools
import re

import pytest

from chatsecure.cli import COMMANDS
from tests.helpers import Terminal

OPTION_AND_METAVAR = re.compile(r"(--[a-z0-9][a-z0-9-]*) ([A-Z][A-Z0-9_]*)\b")


def default_metavars(text: str) -> set[str]:
    """Options shown with argparse's own metavar, the dest upper-cased: ``--password-file
    PASSWORD_FILE``; a one-word dest (``--nick NICK``) reads well enough and is not counted."""
    return {
        f"{option} {metavar}"
        for option, metavar in OPTION_AND_METAVAR.findall(text)
        if "_" in metavar and metavar == option[2:].replace("-", "_").upper()
    }


@functools.cache
def help_of(command: str) -> str:
    result = Terminal.run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_option_takes_an_upper_cased_dest_name(command: str) -> None:
    text = help_of(command)
    assert default_metavars(text) == set(), text


def test_default_metavars_are_found() -> None:
    text = "usage: x [--password-file PASSWORD_FILE] [--san NAME_OR_IP]\n  --db-file FILE\n"
    assert default_metavars(text) == {"--password-file PASSWORD_FILE"}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_opens_with_a_one_line_description(command: str) -> None:
    blocks = help_of(command).split("\n\n")
    assert blocks[0].startswith(f"usage: chatsecure {command} ")
    description = blocks[1]
    assert "\n" not in description, description
    assert description[:1].isupper(), description
    assert description.endswith("."), description
    assert not description.endswith(":"), "the option list came right after the usage"


def undocumented_positionals(text: str) -> list[str]:
    """Entries of the positional section that have no help text."""
    _, found, rest = text.partition("\npositional arguments:\n")
    lines = rest.split("\n\n")[0].splitlines() if found else []
    missing = []
    for i, line in enumerate(lines):
        if line.startswith("   ") or not line.strip():
            continue  # a continuation of the help above
        follows = lines[i + 1] if i + 1 < len(lines) else ""
        if len(line.split(maxsplit=1)) == 1 and not follows.startswith("   "):
            missing.append(line.strip())
    return missing


def test_undocumented_positionals_are_found() -> None:
    text = "usage: x\n\npositional arguments:\n  A           what a is\n  B\n\noptions:\n"
    assert undocumented_positionals(text) == ["B"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_positional_argument_is_explained(command: str) -> None:
    text = help_of(command)
    assert undocumented_positionals(text) == [], text


def test_connect_explains_host_and_port() -> None:
    text = help_of("connect")
    entry = re.search(r"^  HOST\[:PORT\]\s+(\S.*)$", text, re.MULTILINE)
    assert entry is not None, text
    assert "port" in entry.group(1)


@pytest.mark.parametrize(
    ("command", "option", "metavar"),
    [
        ("server", "--password-file", "FILE"),
        ("server", "--db", "FILE"),
        ("server", "--data-dir", "DIR"),
        ("server", "--port", "PORT"),
        ("server", "--host", "HOST"),
        ("server", "--client-ca", "FILE"),
        ("server", "--hello-timeout", "S"),
        ("connect", "--password-file", "FILE"),
        ("connect", "--cafile", "FILE"),
        ("connect", "--nick", "NICK"),
        ("gui", "--cert", "FILE"),
        ("gencert", "--out", "DIR"),
        ("gencert", "--days", "N"),
    ],
)
def test_option_metavar_says_what_it_takes(command: str, option: str, metavar: str) -> None:
    assert f"  {option} {metavar} " in help_of(command)
