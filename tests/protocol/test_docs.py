"""docs/protocol.md against the code: every error code and leave reason, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from chatsecure.client.state import LEAVE_REASONS as SHOWN_REASONS
from chatsecure.protocol.codes import LEAVE_REASONS, ErrorCode, NoticeCode

PROTOCOL_MD = Path(__file__).parents[2] / "docs" / "protocol.md"


def table_after(heading: str) -> dict[str, str]:
    """The rows of the first table under ``## heading``: first cell (unquoted) -> the rest."""
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \|(.*)\|$", section, flags=re.MULTILINE)
    return dict(rows)


def test_every_error_code_is_documented_with_what_happens_to_the_connection() -> None:
    documented = table_after("Errors and limits")
    assert set(documented) == {code.value for code in ErrorCode}
    for code, rest in documented.items():
        connection = rest.rsplit("|", 1)[-1].strip()
        assert connection.startswith(("closed", "kept")), f"{code}: {connection!r}"


def test_the_codes_documented_as_keeping_the_connection_are_the_non_fatal_ones() -> None:
    kept = {
        code
        for code, rest in table_after("Errors and limits").items()
        if rest.rsplit("|", 1)[-1].strip().startswith("kept")
    }
    assert kept == {
        ErrorCode.BAD_JSON,
        ErrorCode.BAD_MESSAGE,
        ErrorCode.UNKNOWN_TYPE,
        ErrorCode.TEXT_TOO_LONG,
        ErrorCode.ALREADY_JOINED,
        ErrorCode.RATE_LIMITED,
        ErrorCode.NOT_STORED,
        ErrorCode.HISTORY_UNAVAILABLE,
    }


def test_leave_reasons_in_the_docs_the_code_and_the_client_agree() -> None:
    assert set(table_after("Leave reasons")) == LEAVE_REASONS
    assert set(SHOWN_REASONS) == LEAVE_REASONS, "the client names each reason, and no other"


def test_server_ping_and_the_duty_to_answer_are_documented() -> None:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    server_frames = table_after("Server → client")
    client_frames = table_after("Client → server")
    assert '{"type":"ping"}' in server_frames
    assert '{"type":"pong"}' in client_frames
    assert "required" in client_frames['{"type":"pong"}']
    assert "## Staying connected" in text


def test_every_notice_code_is_documented() -> None:
    assert set(table_after("Notices")) == {code.value for code in NoticeCode}
    assert '{"type":"notice"' in "".join(table_after("Server → client"))
