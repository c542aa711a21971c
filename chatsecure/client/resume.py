"""What a client remembers between runs to resume a room: its id and the last ``seq`` seen.

Both live in the config folder (``CHATSECURE_HOME``): ``client_id``, made once, and
``last_seen.json``, the last ``seq`` per server certificate fingerprint (and the log it counts
in: ``[seq, log]``; a bare ``seq`` in files written before logs had ids). Failing to read or
write them costs a resume ("while you were away"), never the chat, so errors are swallowed
here, on purpose, and logged at DEBUG.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from pathlib import Path

from chatsecure.protocol.messages import valid_client_id
from chatsecure.tls.trust import config_home, config_locked, save_private

log = logging.getLogger(__name__)

CLIENT_ID_FILE = "client_id"
LAST_SEEN_FILE = "last_seen.json"
SAVE_EVERY = 0.05
"""Seconds between two writes of the last ``seq`` while lines keep coming: lines that come
further apart are each saved as they are shown, so a client killed then shows none twice."""
MAX_SERVERS = 200
"""Servers whose last ``seq`` is remembered; the least recently used are forgotten."""


def client_id(home: Path | None = None) -> str:
    """This installation's client id: read from the config folder, made on first use."""
    path = (home or config_home()) / CLIENT_ID_FILE
    with contextlib.suppress(OSError, UnicodeDecodeError):
        known = path.read_text(encoding="ascii").strip()
        if valid_client_id(known):
            return known
    made = secrets.token_urlsafe(18)  # 24 characters of [A-Za-z0-9_-]
    try:
        # Private: whoever knows it could make lines of ours look like re-sends.
        save_private(path, made + "\n")
    except OSError as exc:
        log.debug("cannot keep the client id in %s: %s", path, exc)
    return made


def _newer(kept: object, seq: int, log_id: str | None) -> object:
    """What ``last_seen.json`` keeps for a server: ``[seq, log]``, but never a seq below the
    one kept for the same log (another client of this folder, or of this window, was
    further on: its lines are shown)."""
    if log_id is None:
        return seq
    if isinstance(kept, list) and kept[1:] == [log_id] and isinstance(kept[0], int):
        seq = max(seq, kept[0])
    return [seq, log_id]


class LastSeen:
    """The last ``seq`` seen from each server, by certificate fingerprint (and by the address
    the client was given, for a server whose certificate has changed)."""

    def __init__(self, home: Path | None = None) -> None:
        self.path = (home or config_home()) / LAST_SEEN_FILE
        self._saved_at = 0.0

    def get(self, fingerprint: str) -> tuple[int | None, str | None]:
        """The last ``seq`` seen from the server of ``fingerprint``, and the log it counts in
        (None: not known, as in a file written before logs had ids)."""
        value = self._load().get(fingerprint)
        if isinstance(value, list) and len(value) == 2:  # [seq, log]
            value, log_id = value
        else:
            log_id = None
        seq = value if isinstance(value, int) and value >= 0 else None
        return seq, log_id if isinstance(log_id, str) and valid_client_id(log_id) else None

    def put(
        self,
        fingerprint: str,
        seq: int,
        log_id: str | None = None,
        *,
        force: bool = False,
        also: str | None = None,
    ) -> bool:
        """Remember ``seq`` (under ``also`` too); at most once per ``SAVE_EVERY`` seconds
        unless ``force``. False when it was put off: the caller puts it again later."""
        now = time.monotonic()
        if not force and now - self._saved_at < SAVE_EVERY:
            return False
        self._saved_at = now
        try:
            with config_locked(self.path):
                table = self._load()
                for key in (fingerprint, also):
                    if key is not None:
                        table[key] = _newer(table.pop(key, None), seq, log_id)
                        # (The newest last: the oldest go first when full.)
                while len(table) > MAX_SERVERS:
                    del table[next(iter(table))]
                save_private(self.path, json.dumps(table))
        except OSError as exc:
            log.debug("cannot write %s: %s", self.path, exc)
        return True

    def _load(self) -> dict[str, object]:
        try:
            table = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return table if isinstance(table, dict) else {}
