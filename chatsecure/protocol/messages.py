"""Typed, frozen protocol messages: parse, validate and encode. Pure, no I/O.

Every frame is one JSON object with a ``type``. Unknown fields are ignored so that later
versions can add them; unknown types are an error the peer survives.
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from chatsecure.errors import LocalProtocolError, RemoteProtocolError
from chatsecure.protocol.codes import ErrorCode
from chatsecure.protocol.limits import (
    HISTORY_PAGE_MAX,
    MAX_NICK,
    MAX_REF,
    MAX_TEXT,
    TS_MAX,
)

INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
"""Unicode categories a nick or a server name loses: controls (Cc), format characters such as
bidi overrides and zero-width joiners (Cf), and line/paragraph separators (Zl, Zp)."""

BLANKS = frozenset(
    "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u2800\u3164\uffa0"
    + "".join(map(chr, range(0xFE00, 0xFE10)))
    + "".join(map(chr, range(0xE0100, 0xE01F0)))
)
"""Characters that show as nothing, or as a blank, without being format characters: the
combining grapheme joiner, the Hangul and Khmer fillers, the variation selectors, the braille
blank. A nick loses them too, or ``alice`` + U+3164 would be a second ``alice``."""

_BLANKS_AND_SPACE = BLANKS | {" "}
"""What a printable text (whose only whitespace is the space) may hold and still show nothing."""


def clean_nick(raw: str) -> str:
    """Return ``raw`` as a displayable nick, or raise ``bad_nick``.

    Invisible and control characters are removed and surrounding whitespace is trimmed, so
    that no nick can hide a line break or reorder what others see; the rest is normalized
    (NFKC, as the PRECIS nickname profile of RFC 8266 does), so that two spellings that look
    the same (a decomposed "zoë", a full-width "zoe") are one nick, and the room tells
    them apart with a suffix.
    """
    # NFKC before (it turns some characters into blanks: U+3164 into U+1160) and after (a
    # character taken out from between "e" and U+0308 leaves them to compose: one "zoë").
    visible = "".join(
        c
        for c in unicodedata.normalize("NFKC", raw)
        if c not in BLANKS and unicodedata.category(c) not in INVISIBLE_CATEGORIES
    )
    nick = unicodedata.normalize("NFKC", visible).strip()
    if not 1 <= len(nick) <= MAX_NICK:
        raise RemoteProtocolError(
            ErrorCode.BAD_NICK,
            f"nick must be 1 to {MAX_NICK} visible characters",
            fatal=True,
        )
    return nick


ZWJ = "\u200d"
"""The zero-width joiner: it binds the characters on both sides into one (emoji sequences)."""
EMOJI_MODIFIERS = range(0x1F3FB, 0x1F400)
"""The skin-tone modifiers: each belongs to the emoji before it."""


def _joins_previous(c: str) -> bool:
    """Whether ``c`` belongs to the character before it: a mark (every character with a
    combining class is one, and so are the spacing vowel signs that have none), a skin-tone
    modifier, or a joiner."""
    return unicodedata.category(c)[0] == "M" or ord(c) in EMOJI_MODIFIERS or c == ZWJ


def cut_nick(nick: str, length: int) -> str:
    """``nick`` cut to at most ``length`` characters, never between a character and the marks
    that follow it.

    Cut anywhere, "q" + U+0301 would lose its accent and become a plain "q" another user may
    have, and a flag would lose half of itself; a cut falls before the whole character instead
    (a nick that is one character with more marks than fit is cut to nothing). ``clean_nick``
    removes joiners, but a cut never follows one either, so that no emoji sequence is left
    half joined.
    """
    end = max(length, 0)
    while 0 < end < len(nick) and (
        _joins_previous(nick[end]) or nick[end - 1] == ZWJ or _inside_a_flag(nick, end)
    ):
        end -= 1
    return nick[:end]


REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)
"""The letters of flags: a pair of them is one flag (🇫🇷), a lone one a boxed letter."""


def _inside_a_flag(nick: str, end: int) -> bool:
    """Whether ``end`` falls between the two letters of a flag: regional indicators pair up
    from the first of a run."""
    if ord(nick[end]) not in REGIONAL_INDICATORS:
        return False
    start = end
    while start > 0 and ord(nick[start - 1]) in REGIONAL_INDICATORS:
        start -= 1
    return (end - start) % 2 == 1


def clean_text(raw: str) -> str:
    """Message text without control characters other than newline and tab.

    Newlines are allowed (a pasted paragraph); clients show them so that they cannot pass for
    a line of their own.
    """
    if raw.isprintable():
        return raw
    return "".join(c for c in raw if c in "\n\t" or unicodedata.category(c) != "Cc")


def shows(text: str) -> bool:
    """Whether ``text`` shows anything: more than whitespace, format characters (a zero-width
    space, a bidi mark) and characters that show as a blank (a Hangul filler)."""
    stripped = text.strip()
    if not stripped:
        return False
    if stripped[0] not in BLANKS and stripped[0].isprintable():
        return True  # most lines: their first character shows
    if stripped.isprintable():  # no format character: anything but a blank or a space shows
        return not _BLANKS_AND_SPACE.issuperset(stripped)
    return any(
        not c.isspace() and c not in BLANKS and unicodedata.category(c) not in INVISIBLE_CATEGORIES
        for c in stripped
    )


@dataclass(frozen=True, slots=True)
class Peer:
    """A participant as the server sees it. Every field comes from the server."""

    id: str
    nick: str
    addr: str

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "nick": self.nick, "addr": self.addr}

    @classmethod
    def from_json(cls, obj: object) -> Peer:
        data = _require_object(obj, "peer")
        return cls(
            id=_require_str(data, "id"),
            nick=_require_str(data, "nick"),
            addr=_require_str(data, "addr"),
        )


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What ``welcome`` says about the server."""

    name: str
    version: str
    protocol: int = 1
    msg_rate: float | None = None
    """Frames a second a client may send (0: no limit); None: the server did not say."""
    msg_burst: int | None = None
    """Frames a client may send at once on top of the rate; None: the server did not say."""

    def to_json(self) -> dict[str, object]:
        info: dict[str, object] = {
            "name": self.name,
            "version": self.version,
            "protocol": self.protocol,
        }
        if self.msg_rate is not None:
            info["msg_rate"] = self.msg_rate
        if self.msg_burst is not None:
            info["msg_burst"] = self.msg_burst
        return info


CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
"""What a client id looks like: made once by a client and kept, it scopes ``ref``s."""


def valid_client_id(value: str) -> bool:
    return CLIENT_ID.fullmatch(value) is not None


def valid_ref(value: str) -> bool:
    return 1 <= len(value) <= MAX_REF and utf8_encodable(value)


# --- client -> server -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame of a client: who it wants to be, and (v2) where it left off."""

    nick: str
    password: str | None = field(default=None, repr=False)
    client: str | None = None
    """The client's own id (``CLIENT_ID``), made once and kept: it scopes ``ref``."""
    since: int | None = None
    """The last ``seq`` this client saw from this server; None for a newcomer."""
    log: str | None = None
    """(v2) The ``log`` of the welcome that ``since`` counts in: a server whose log is another
    one now (it lost its database, or its Redis) replays from the start of its log instead."""
    type: Literal["hello"] = field(default="hello", init=False)

    def __post_init__(self) -> None:
        if self.client is not None and not valid_client_id(self.client):
            raise LocalProtocolError(ErrorCode.BAD_MESSAGE, "client id must match CLIENT_ID")
        if self.log is not None and not valid_client_id(self.log):
            raise LocalProtocolError(ErrorCode.BAD_MESSAGE, "log id must match CLIENT_ID")
        if self.since is not None and self.since < 0:
            raise LocalProtocolError(ErrorCode.BAD_MESSAGE, "since must be >= 0")


@dataclass(slots=True)  # made per line on the server: not frozen, for speed (see history.log)
class SendMsg:
    """A chat line from a client; the server adds the sender, the time and the ``seq``."""

    text: str
    ref: str | None = None
    """The client's name for this line (v2): the server acknowledges it, once."""
    type: Literal["msg"] = field(default="msg", init=False)

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise LocalProtocolError(ErrorCode.BAD_MESSAGE, "a message needs some text")
        if self.ref is not None and not valid_ref(self.ref):
            raise LocalProtocolError(ErrorCode.BAD_MESSAGE, f"ref must be 1 to {MAX_REF} chars")


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    """Older lines, please: up to ``limit`` lines before ``before`` (None: the newest)."""

    before: int | None = None
    limit: int = HISTORY_PAGE_MAX
    ref: str | None = None
    """(Optional) the client's name for this request: its ``history_end``, or the ``error``
    that refuses it, says the same."""
    type: Literal["history"] = field(default="history", init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= HISTORY_PAGE_MAX:
            raise LocalProtocolError(
                ErrorCode.BAD_MESSAGE, f"limit must be 1 to {HISTORY_PAGE_MAX}"
            )
        if self.ref is not None and not valid_ref(self.ref):
            raise LocalProtocolError(ErrorCode.BAD_MESSAGE, f"ref must be 1 to {MAX_REF} chars")


@dataclass(frozen=True, slots=True)
class Ping:
    """Are you there? Answered with ``pong``; either side may send it."""

    type: Literal["ping"] = field(default="ping", init=False)


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to ``ping``."""

    type: Literal["pong"] = field(default="pong", init=False)


@dataclass(frozen=True, slots=True)
class Quit:
    """The client is leaving on purpose."""

    type: Literal["quit"] = field(default="quit", init=False)


ClientMessage: TypeAlias = Hello | SendMsg | HistoryRequest | Ping | Pong | Quit


# --- server -> client -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcome:
    """The answer to ``hello``: the nick given (it may carry a suffix) and who is here."""

    you: Peer
    peers: tuple[Peer, ...]
    server: ServerInfo
    seq: int = 0
    """The newest ``seq`` of the room's log (0: empty, or a server that keeps no log)."""
    replay: int = 0
    """How many stored lines (``Chat`` with ``history``) follow at once."""
    skipped: int = 0
    """Lines after the client's ``since`` left out of the replay by the server's cap."""
    peers_total: int | None = None
    """(v2) How many peers are in the room besides us: ``peers`` holds the first of them and
    ``PeersMore`` frames bring the rest at once. None: ``peers`` is everyone (v1)."""
    log: str | None = None
    """(v2) Which log ``seq`` counts in: a new id when the server starts a new log (its
    database or its Redis lost), so that a client tells an old position from a new one."""
    type: Literal["welcome"] = field(default="welcome", init=False)


@dataclass(frozen=True, slots=True)
class PeersMore:
    """(v2) More of the room's peers, right after a ``welcome`` whose ``peers_total`` says so."""

    peers: tuple[Peer, ...]
    type: Literal["peers"] = field(default="peers", init=False)


@dataclass(frozen=True, slots=True)
class Joins:
    """(v2) Several people joined at about the same moment, in the order they joined."""

    peers: tuple[Peer, ...]
    type: Literal["joins"] = field(default="joins", init=False)


@dataclass(frozen=True, slots=True)
class Leaves:
    """(v2) Several people left at about the same moment, in order, each with its reason."""

    leaves: tuple[Leave, ...]
    type: Literal["leaves"] = field(default="leaves", init=False)


@dataclass(frozen=True, slots=True)
class Join:
    """Someone joined."""

    peer: Peer
    type: Literal["join"] = field(default="join", init=False)


@dataclass(frozen=True, slots=True)
class Leave:
    """Someone left; ``reason`` is one of ``codes.LEAVE_REASONS`` (or a later version's)."""

    peer: Peer
    reason: str
    type: Literal["leave"] = field(default="leave", init=False)


@dataclass(frozen=True, slots=True)
class Chat:
    """A message relayed by the server, with the sender as the server knows it."""

    sender: Peer
    text: str
    ts: float
    seq: int = 0
    """The line's place in the room's log; 0 for a server that keeps none (v1)."""
    history: bool = False
    """A stored line sent again (replay after ``welcome``, or an answer to ``history``)."""
    ref: str | None = None
    """In a replay to the client that sent the line: its ref (its ack may have been lost)."""
    type: Literal["msg"] = field(default="msg", init=False)


@dataclass(frozen=True, slots=True)
class Ack:
    """The server stored the sender's line ``ref`` as ``seq`` (0: it keeps no log)."""

    ref: str
    seq: int
    ts: float
    type: Literal["ack"] = field(default="ack", init=False)


@dataclass(frozen=True, slots=True)
class HistoryEnd:
    """The end of an answer to ``history``: ``count`` lines were sent."""

    before: int | None
    count: int
    ref: str | None = None
    """The request's ``ref``, if it had one."""
    type: Literal["history_end"] = field(default="history_end", init=False)


@dataclass(frozen=True, slots=True)
class Error:
    """Something the peer sent was refused; ``code`` is machine-readable."""

    code: str
    message: str
    ref: str | None = None
    """The ``ref`` of the ``msg`` or ``history`` refused, when it had a valid one
    (``not_stored``, ``text_too_long``, ``bad_message``, ``rate_limited``, ...)."""
    type: Literal["error"] = field(default="error", init=False)


@dataclass(frozen=True, slots=True)
class Notice:
    """News about the server's state, not an answer to anything; ``code`` is machine-readable.

    A client shows ``message``; a code it does not know it shows all the same.
    """

    code: str
    message: str
    type: Literal["notice"] = field(default="notice", init=False)


@dataclass(frozen=True, slots=True)
class Shutdown:
    """The server is stopping; the connection closes next."""

    type: Literal["shutdown"] = field(default="shutdown", init=False)


ServerMessage: TypeAlias = (
    Welcome
    | PeersMore
    | Join
    | Joins
    | Leave
    | Leaves
    | Chat
    | Ack
    | HistoryEnd
    | Ping
    | Pong
    | Error
    | Notice
    | Shutdown
)
Message: TypeAlias = ClientMessage | ServerMessage


# --- encoding ---------------------------------------------------------------------------


def encode(message: Message) -> bytes:
    """One frame: compact UTF-8 JSON and a newline."""
    return dump(to_json(message))


# One encoder for every frame: json.dumps with options builds a new JSONEncoder per call.
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@functools.lru_cache(maxsize=8)
def _server_json(server: ServerInfo) -> bytes:
    """``welcome``'s ``server`` object, encoded once: it is the same for every join."""
    return _dumps(server.to_json()).encode()


def dump(obj: dict[str, Any]) -> bytes:
    """Serialize an already-built JSON object as one frame."""
    return _dumps(obj).encode() + b"\n"


# A server sends the same peers over and over; it can encode each once with ``encode_peer``
# and build frames from the parts. Each function returns exactly the bytes ``encode`` would.


def encode_peer(peer: Peer) -> bytes:
    """``peer`` as compact JSON (no newline), to cache and pass to the functions below."""
    return _dumps(peer.to_json()).encode()


def encode_chat(sender: bytes, text: str, ts: float, seq: int = 0) -> bytes:
    """``encode(Chat(peer, text, ts, seq))`` where ``sender`` is ``encode_peer(peer)``."""
    # float.__repr__ is what json writes for a finite float, without its per-call setup.
    ts_json = repr(ts).encode() if math.isfinite(ts) else _dumps(ts).encode()
    text_json = _dumps(text).encode()
    if seq:
        return b'{"type":"msg","seq":%d,"from":%b,"text":%b,"ts":%b}\n' % (
            seq,
            sender,
            text_json,
            ts_json,
        )
    return b'{"type":"msg","from":%b,"text":%b,"ts":%b}\n' % (sender, text_json, ts_json)


def encode_ack(ref: str, seq: int, ts: float) -> bytes:
    """``encode(Ack(ref, seq, ts))``, without building a dict for every line a sender stores."""
    ts_json = repr(ts).encode() if math.isfinite(ts) else _dumps(ts).encode()
    return b'{"type":"ack","ref":%b,"seq":%d,"ts":%b}\n' % (_dumps(ref).encode(), seq, ts_json)


HISTORY_MARK = b',"history":true}\n'


def as_history(chat_frame: bytes) -> bytes:
    """A frame of ``encode_chat`` with ``"history":true``: the same line, sent again later."""
    return chat_frame[:-2] + HISTORY_MARK


def encode_welcome(
    you: bytes,
    peers: Iterable[bytes],
    server: ServerInfo,
    seq: int = 0,
    replay: int = 0,
    skipped: int = 0,
    log: str | None = None,
) -> bytes:
    """``encode(Welcome(...))`` from peers already encoded with ``encode_peer``."""
    parts = (you, b",".join(peers), _server_json(server), seq, replay, skipped, _log_json(log))
    return (
        b'{"type":"welcome","you":%b,"peers":[%b],"server":%b,"seq":%d,"replay":%d,'
        b'"skipped":%d%b}\n' % parts
    )


def _log_json(log: str | None) -> bytes:
    """A welcome's ``log`` field, if any (an id of ``CLIENT_ID``'s characters: no escapes)."""
    return b"" if log is None else b',"log":"%b"' % log.encode()


def encode_welcome_v2(
    you: bytes,
    first: bytes,
    total: int,
    server: ServerInfo,
    seq: int = 0,
    replay: int = 0,
    skipped: int = 0,
    log: str | None = None,
) -> bytes:
    """A v2 ``welcome`` whose ``peers`` are ``first`` (encoded peers joined by commas) of
    ``total``; ``encode_peers`` frames with the others follow it."""
    parts = (you, first, total, _server_json(server), seq, replay, skipped, _log_json(log))
    return (
        b'{"type":"welcome","you":%b,"peers":[%b],"peers_total":%d,"server":%b,"seq":%d,'
        b'"replay":%d,"skipped":%d%b}\n' % parts
    )


def encode_peers(kind: Literal["peers", "joins"], peers: Iterable[bytes]) -> bytes:
    """A ``peers`` or ``joins`` frame from peers already encoded with ``encode_peer``."""
    return b'{"type":"%b","peers":[%b]}\n' % (kind.encode(), b",".join(peers))


def encode_join(peer: bytes) -> bytes:
    """``encode(Join(p))`` where ``peer`` is ``encode_peer(p)``."""
    return b'{"type":"join","peer":%b}\n' % peer


def encode_leave(peer: bytes, reason: str) -> bytes:
    """``encode(Leave(p, reason))`` where ``peer`` is ``encode_peer(p)``."""
    return b'{"type":"leave","peer":%b,"reason":%b}\n' % (peer, _dumps(reason).encode())


def encode_leaves(leaves: Iterable[tuple[bytes, str]]) -> bytes:
    """A ``leaves`` frame from (encoded peer, reason) pairs."""
    items = b",".join(
        b'{"peer":%b,"reason":%b}' % (peer, _dumps(reason).encode()) for peer, reason in leaves
    )
    return b'{"type":"leaves","leaves":[%b]}\n' % items


def to_json(message: Message) -> dict[str, Any]:
    """The JSON object for ``message``."""
    match message:
        case Hello(nick=nick, password=password, client=client, since=since, log=log):
            obj: dict[str, Any] = {"type": "hello", "nick": nick}
            if password is not None:
                obj["password"] = password
            if client is not None:
                obj["client"] = client
            if since is not None:
                obj["since"] = since
            if log is not None:
                obj["log"] = log
            return obj
        case SendMsg(text=text, ref=ref):
            return (
                {"type": "msg", "text": text}
                if ref is None
                else {
                    "type": "msg",
                    "text": text,
                    "ref": ref,
                }
            )
        case HistoryRequest(before=before, limit=limit, ref=ref):
            request: dict[str, Any] = {"type": "history"}
            if before is not None:
                request["before"] = before
            request["limit"] = limit
            if ref is not None:
                request["ref"] = ref
            return request
        case Chat(sender=sender, text=text, ts=ts, seq=seq, history=history, ref=ref):
            chat: dict[str, Any] = {"type": "msg"}
            if seq:
                chat["seq"] = seq
            chat |= {"from": sender.to_json(), "text": text, "ts": ts}
            if history:
                chat["history"] = True
            if ref is not None:
                chat["ref"] = ref
            return chat
        case Ack(ref=ref, seq=seq, ts=ts):
            return {"type": "ack", "ref": ref, "seq": seq, "ts": ts}
        case HistoryEnd(before=before, count=count, ref=ref):
            if ref is None:
                return {"type": "history_end", "before": before, "count": count}
            return {"type": "history_end", "before": before, "count": count, "ref": ref}
        case Welcome(you=you, peers=peers, server=server, peers_total=int(total)):
            return {
                "type": "welcome",
                "you": you.to_json(),
                "peers": [p.to_json() for p in peers],
                "peers_total": total,
                "server": server.to_json(),
                "seq": message.seq,
                "replay": message.replay,
                "skipped": message.skipped,
            } | ({} if message.log is None else {"log": message.log})
        case PeersMore(peers=peers) | Joins(peers=peers):
            return {"type": message.type, "peers": [p.to_json() for p in peers]}
        case Leaves(leaves=leaves):
            return {
                "type": "leaves",
                "leaves": [{"peer": x.peer.to_json(), "reason": x.reason} for x in leaves],
            }
        case Welcome(you=you, peers=peers, server=server):
            return {
                "type": "welcome",
                "you": you.to_json(),
                "peers": [p.to_json() for p in peers],
                "server": server.to_json(),
                "seq": message.seq,
                "replay": message.replay,
                "skipped": message.skipped,
            } | ({} if message.log is None else {"log": message.log})
        case Join(peer=peer):
            return {"type": "join", "peer": peer.to_json()}
        case Leave(peer=peer, reason=reason):
            return {"type": "leave", "peer": peer.to_json(), "reason": reason}
        case Error(code=code, message=text, ref=ref):
            error = {"type": "error", "code": code, "message": text}
            return error if ref is None else error | {"ref": ref}
        case Notice(code=code, message=text):
            return {"type": "notice", "code": code, "message": text}
        case Ping() | Pong() | Quit() | Shutdown():
            return {"type": message.type}
    raise LocalProtocolError(ErrorCode.BAD_MESSAGE, f"cannot encode {message!r}")


# --- decoding ---------------------------------------------------------------------------


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_not_json)
"""Strict JSON: ``NaN`` and ``Infinity``, which Python's ``json`` takes, are not."""


def load(frame: bytes) -> dict[str, Any]:
    """Decode one frame into a JSON object with a string ``type``."""
    try:
        obj = _DECODER.decode(frame.decode("utf-8"))
    except UnicodeDecodeError:
        raise RemoteProtocolError(ErrorCode.BAD_JSON, "frame is not valid UTF-8") from None
    except (ValueError, RecursionError):
        raise RemoteProtocolError(ErrorCode.BAD_JSON, "frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError(ErrorCode.BAD_JSON, "frame is not a JSON object")
    if not isinstance(obj.get("type"), str):
        raise RemoteProtocolError(ErrorCode.BAD_MESSAGE, "frame has no string 'type'")
    return obj


def parse_client(frame: bytes, max_text: int = MAX_TEXT) -> ClientMessage:
    """Validate a frame a client sent. Raises ``RemoteProtocolError`` with the code to answer.

    ``max_text`` of 0 lifts the text limit.
    """
    obj = load(frame)
    kind = obj["type"]
    if kind == "msg":
        ref = _client_ref(obj)
        try:
            text = clean_text(_require_str(obj, "text"))
            if max_text and len(text) > max_text:
                raise RemoteProtocolError(
                    ErrorCode.TEXT_TOO_LONG, f"text longer than {max_text} characters"
                )
            if not shows(text):  # (after the length: at most max_text characters to look at)
                raise RemoteProtocolError(ErrorCode.BAD_MESSAGE, "'text' is empty")
        except RemoteProtocolError as exc:
            exc.ref = ref  # the sender's line that will never be stored
            raise
        return SendMsg(text, ref)
    if kind == "hello":
        password = obj.get("password")
        if password is not None and not isinstance(password, str):
            raise RemoteProtocolError(ErrorCode.BAD_MESSAGE, "'password' must be a string")
        if password is not None:
            _encodable(password, "password")
        client = obj.get("client")
        if client is not None and not (isinstance(client, str) and valid_client_id(client)):
            raise RemoteProtocolError(
                ErrorCode.BAD_MESSAGE, "'client' must be 8 to 64 of A-Z, a-z, 0-9, _ and -"
            )
        since = _optional_count(obj, "since")
        log = obj.get("log")
        if log is not None and not (isinstance(log, str) and valid_client_id(log)):
            raise RemoteProtocolError(
                ErrorCode.BAD_MESSAGE, "'log' must be 8 to 64 of A-Z, a-z, 0-9, _ and -"
            )
        return Hello(_require_str(obj, "nick"), password, client, since, log)
    if kind == "history":
        ref = _client_ref(obj)
        try:
            before = _optional_count(obj, "before")
            limit = _optional_count(obj, "limit")
            limit = HISTORY_PAGE_MAX if limit is None else min(limit, HISTORY_PAGE_MAX)
            if limit < 1:
                raise RemoteProtocolError(ErrorCode.BAD_MESSAGE, "'limit' must be at least 1")
        except RemoteProtocolError as exc:
            exc.ref = ref  # the request that gets no answer but this error
            raise
        return HistoryRequest(before, limit, ref)
    if kind == "ping":
        return Ping()
    if kind == "pong":
        return Pong()
    if kind == "quit":
        return Quit()
    raise RemoteProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown type {kind[:40]!r}")


def parse_server(frame: bytes) -> ServerMessage:
    """Validate a frame a server sent.

    Every field is checked here, once: what a hostile server puts in a field can make this
    raise ``RemoteProtocolError`` (the frame is skipped) but never reach a front end unchecked.
    A ``ts`` that is not a sane time becomes "now" rather than costing the line.
    """
    obj = load(frame)
    kind = obj["type"]
    if kind == "msg":
        return Chat(
            Peer.from_json(obj.get("from")),
            _require_str(obj, "text"),
            _timestamp(obj.get("ts")),
            _optional_count(obj, "seq") or 0,
            obj.get("history") is True,
            _optional_ref(obj),
        )
    if kind == "ack":
        return Ack(
            _require_str(obj, "ref"), _optional_count(obj, "seq") or 0, _timestamp(obj.get("ts"))
        )
    if kind == "history_end":
        return HistoryEnd(
            _optional_count(obj, "before"), _optional_count(obj, "count") or 0, _optional_ref(obj)
        )
    if kind == "join":
        return Join(Peer.from_json(obj.get("peer")))
    if kind in ("peers", "joins"):
        listed = _peer_list(obj.get("peers"))
        return PeersMore(listed) if kind == "peers" else Joins(listed)
    if kind == "leaves":
        items = obj.get("leaves")
        if not isinstance(items, list):
            raise RemoteProtocolError(ErrorCode.BAD_MESSAGE, "'leaves' must be a list")
        return Leaves(tuple(_leave_item(item) for item in items))
    if kind == "leave":
        return Leave(Peer.from_json(obj.get("peer")), _optional_str(obj, "reason", "closed"))
    if kind == "welcome":
        peers = obj.get("peers")
        if not isinstance(peers, list):
            raise RemoteProtocolError(ErrorCode.BAD_MESSAGE, "'peers' must be a list")
        server = _require_object(obj.get("server", {}), "server")
        protocol = server.get("protocol", 1)
        info = ServerInfo(
            name=_optional_str(server, "name", ""),
            version=_optional_str(server, "version", ""),
            protocol=protocol if isinstance(protocol, int) else 1,
            msg_rate=_said_rate(server.get("msg_rate")),
            msg_burst=_said_burst(server.get("msg_burst")),
        )
        return Welcome(
            Peer.from_json(obj.get("you")),
            tuple(map(Peer.from_json, peers)),
            info,
            seq=_optional_count(obj, "seq") or 0,
            replay=_optional_count(obj, "replay") or 0,
            skipped=_optional_count(obj, "skipped") or 0,
            peers_total=_optional_count(obj, "peers_total"),
            log=log if isinstance(log := obj.get("log"), str) and valid_client_id(log) else None,
        )
    if kind == "error":
        ref = obj.get("ref")
        ref = ref if isinstance(ref, str) and valid_ref(ref) else None
        return Error(_optional_str(obj, "code", "error"), _optional_str(obj, "message", ""), ref)
    if kind == "notice":
        return Notice(_optional_str(obj, "code", "notice"), _optional_str(obj, "message", ""))
    if kind == "pong":
        return Pong()
    if kind == "ping":
        return Ping()
    if kind == "shutdown":
        return Shutdown()
    raise RemoteProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown type {kind[:40]!r}")


def _leave_item(item: object) -> Leave:
    data = _require_object(item, "leave")
    return Leave(Peer.from_json(data.get("peer")), _optional_str(data, "reason", "closed"))


def _peer_list(value: object) -> tuple[Peer, ...]:
    if not isinstance(value, list):
        raise RemoteProtocolError(ErrorCode.BAD_MESSAGE, "'peers' must be a list")
    return tuple(map(Peer.from_json, value))


def _timestamp(value: object) -> float:
    """A server's ``ts`` if it is a sane Unix time, else now: a bad clock costs no line."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        ts = float(value)
        if 0.0 <= ts <= TS_MAX:  # also false for NaN
            return ts
    return time.time()


def _client_ref(obj: dict[str, Any]) -> str | None:
    """The ``ref`` a client gave a frame (``msg``, ``history``); one that breaks the rules is
    refused."""
    ref = obj.get("ref")
    if ref is not None and not (isinstance(ref, str) and valid_ref(ref)):
        raise RemoteProtocolError(
            ErrorCode.BAD_MESSAGE,
            f"'ref' must be a string of 1 to {MAX_REF} characters, without lone surrogates",
        )
    return ref


def _optional_ref(obj: dict[str, Any]) -> str | None:
    ref = obj.get("ref")
    return ref if isinstance(ref, str) and valid_ref(ref) else None


def with_ref(history_frame: bytes, ref: str) -> bytes:
    """A frame of ``as_history`` for the line's own sender: with its ``ref``."""
    return history_frame[:-2] + b',"ref":%b}\n' % _dumps(ref).encode()


def _said_rate(value: object) -> float | None:
    """A ``msg_rate`` of ``welcome``; one that makes no sense is as good as none said."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e9:
        return float(value)
    return None


def _said_burst(value: object) -> int | None:
    """A ``msg_burst`` of ``welcome``; one that makes no sense is as good as none said."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31:
        return value
    return None


def _optional_count(obj: dict[str, Any], key: str) -> int | None:
    """An optional integer >= 0 (``seq``, ``since``, ``limit``...); else ``bad_message``."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value >= 2**63:
        raise RemoteProtocolError(ErrorCode.BAD_MESSAGE, f"'{key}' must be an integer >= 0")
    return value


def _require_object(obj: object, name: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise RemoteProtocolError(ErrorCode.BAD_MESSAGE, f"'{name}' must be an object")
    return obj


def _require_str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise RemoteProtocolError(ErrorCode.BAD_MESSAGE, f"'{key}' must be a string")
    return _encodable(value, key)


def utf8_encodable(text: str) -> bool:
    """Whether UTF-8 can carry ``text``: False when it holds a lone surrogate.

    A JSON escape such as ``\\ud800``, or a byte that is not UTF-8 in a command line or piped
    input, makes one; it passes every other check and fails only later, deep in ``encode``.
    """
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _encodable(value: str, key: str) -> str:
    """``value`` if UTF-8 can carry it, else ``bad_message``."""
    if not utf8_encodable(value):
        raise RemoteProtocolError(ErrorCode.BAD_MESSAGE, f"'{key}' holds a lone surrogate")
    return value


def _optional_str(obj: dict[str, Any], key: str, default: str) -> str:
    value = obj.get(key, default)
    return value if isinstance(value, str) else default
