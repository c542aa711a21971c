"""Every limit and default of the protocol and the server, in one place."""

from __future__ import annotations

from typing import Final

PROTOCOL_VERSION: Final = 2
"""The wire protocol version; sent in ``welcome`` and advertised over mDNS as ``v``.

Version 2 (a superset of 1) adds the room log: ``seq``, ``ack``, replay and ``history``."""

DEFAULT_PORT: Final = 7467
"""The TCP port a server listens on when none is given (unassigned by IANA)."""

MAX_FRAME: Final = 16 * 1024
"""Longest line (bytes, newline excluded) a peer may send; longer closes the connection."""

MAX_SERVER_FRAME: Final = 1024 * 1024
"""Longest line (bytes) a client accepts from a server; longer ends the connection.

Far more than ``MAX_FRAME``, because ``welcome`` lists everyone in the room: 50 bytes a peer
(``{"id":"12","nick":"alice","addr":"192.168.1.20"}``), at most about 190 (a 32-character nick
of 4-byte characters, an IPv6 address), so a full room at ``MAX_SESSIONS`` is 50 to 190 KB and
1 MiB leaves room for five times that. It still bounds what an endless line from a hostile
server costs: 1 MiB of memory, and the decoder's copying of its buffer stays in milliseconds."""

MAX_TEXT: Final = 4000
"""Longest message text in characters; longer is refused, the connection kept."""

MAX_NICK: Final = 32
"""Longest nick in characters."""

HELLO_TIMEOUT: Final = 10.0
"""Seconds a client has after the TLS handshake to send ``hello``."""

HANDSHAKE_TIMEOUT: Final = 10.0
"""Seconds a client has to finish the TLS handshake."""

HANDSHAKE_TIMEOUT_OFF: Final = 60.0
"""The handshake timeout when it is set to 0 ("off"): asyncio has no "never", and a handshake
that never ends would hold its socket and memory for ever. asyncio's own default."""

SEND_BUFFER_LIMIT: Final = 1024 * 1024
"""Bytes a session may have queued for sending before it is dropped as a slow consumer."""

CERT_DAYS: Final = 825
"""Default validity of a generated certificate, in days."""

CONNECT_TIMEOUT: Final = 10.0
"""Seconds a client waits for TCP and TLS (and for ``welcome`` after its ``hello``, see
``WELCOME_TIMEOUT``)."""

WELCOME_TIMEOUT: Final = CONNECT_TIMEOUT
"""Seconds a client waits for ``welcome`` after its ``hello``; with a room password,
``AUTH_DELAY_MAX`` more: after wrong guesses from its address the server holds even the right
password's welcome that long, and a client that gave up sooner would take it for no server."""

MAX_SESSIONS: Final = 1000
"""Connections (joined or not) a server takes at once; one more gets ``server_full``."""

MAX_PER_IP: Final = 20
"""Connections one IP address may hold at once; one more gets ``too_many_connections``."""

MSG_RATE: Final = 5.0
"""Frames per second a session may send on average (token bucket refill rate)."""

MSG_BURST: Final = 20
"""Frames a session may send at once before the rate applies (token bucket size); 0 means no
burst: one frame at a time, at the rate."""

FLOOD_WINDOW: Final = 10.0
"""A session refused for ``FLOOD_WINDOW`` seconds' worth of its rate over what the rate allows
(about 3 times the rate, kept up for 10 s) is disconnected as ``flooding``."""

IDLE_TIMEOUT: Final = 90.0
"""Seconds of silence by which a session is dropped (at the server's last check before, so up
to 1/8 of it earlier); the server pings a session silent for half of it."""

CERT_WARN_DAYS: Final = 30
"""The server warns at start, and each day while it runs, when its certificate expires
within this many days."""

CERT_CHECK_EVERY: Final = 86400.0
"""Seconds between a running server's looks at its certificate's expiry (and one at it)."""

AUTH_DELAY: Final = 0.5
"""Seconds before answering the first wrong password from an address; doubles each time."""

AUTH_DELAY_MAX: Final = 30.0
"""The longest wait before a wrong password is answered."""

AUTH_FORGET: Final = 600.0
"""Seconds after which an address's earlier wrong passwords no longer lengthen the wait."""

AUTH_TRACKED: Final = 10_000
"""Addresses (IPv6: /64 networks) whose wrong passwords the server remembers at once; past
that, the one that failed longest ago is forgotten first."""

MAX_REF: Final = 64
"""Longest ``ref`` a client may give a line, in characters."""

HISTORY_PAGE_MAX: Final = 200
"""Most lines one ``history`` request returns; a larger ``limit`` is taken as this."""

HISTORY_KEEP: Final = 10_000
"""Lines the server's log keeps by default (``--history``); older ones are deleted."""

REPLAY: Final = 50
"""Stored lines a newcomer (no ``since``) gets after ``welcome`` (``--replay``)."""

REPLAY_MAX: Final = 1000
"""Most stored lines a returning client (``since``) gets after ``welcome`` (``--replay-max``);
the newest ones, and ``skipped`` says how many older ones were left out."""

TS_MAX: Final = 253_402_300_799.0
"""The last second of the year 9999: a server ``ts`` past this (or negative, or not finite) is
not a time any clock shows, and the client takes "now" instead."""

PING_AFTER: Final = 30.0
"""Seconds of silence from the server after which a client pings it."""

PONG_TIMEOUT: Final = 15.0
"""Seconds a client waits for any answer to its ping before it takes the server for dead."""

SEQ_AHEAD_MAX: Final = 1_000_000
"""Most a ``seq`` from a server (a line's, an ack's) may be above the newest it has stated on
the connection (its welcome's, or a line's since) before the client takes it for a lie and
ignores it. Every stored line reaches every member in order, so an honest server skips only
lines a member was not sent (its own refused as ``not_stored`` though Redis kept them): a few
commits' worth. One line with seq 2**62, taken for the newest, hid every line after it."""

PRESENCE_LOG_LINES: Final = 20
"""Join and leave lines the server logs (INFO) per client address in ``PRESENCE_LOG_PERIOD``;
past that they are counted, and the count is logged at the next idle sweep: a client that
connects and quits in a loop cannot grow the log without bound."""

PRESENCE_LOG_PERIOD: Final = 60.0
"""Seconds over which ``PRESENCE_LOG_LINES`` join and leave lines per address are logged."""

MAX_ROOM: Final = 200_000
"""The most people a client takes a room to hold (a welcome's peers, gathered): a server that
announces more is taken for a hostile one, whose ``peers`` frames would use up the client's
memory."""

PEERS_CHUNK = 500
"""Most peers in one frame (``welcome``, ``peers``, ``joins``, ``leaves``) to a v2 client: a
room of any size is joined in frames of about 25 KB, far below ``MAX_SERVER_FRAME``."""

PRESENCE_PACE = 0.0005
"""Seconds a join storm may hold presence back per member in the room: after announcing joins
or leaves, the room announces the next ones no sooner than this times its size (capped by
``PRESENCE_HOLD_MAX``). Each announcement costs one write per member, so a storm of joins into
a big room becomes a few writes per member, not one per join. A lone join goes out at once."""

PRESENCE_HOLD_MAX = 0.5
"""The longest a join or leave waits to be announced during a storm, in seconds."""

HISTORY_RATE: Final = 1024 * 1024
"""Bytes of ``history`` answers per second one client address (IPv6: its /64) is given, all
its connections together, once its ``HISTORY_BURST`` is spent; a request beyond waits.

An answer costs the server about 5.5 ms of CPU per MiB (read from SQLite, encoded,
encrypted; measured on 2 shared cores: 17 ms for a page of 200 lines of 16 KB), and its
read holds up the log's worker thread, which stores everyone's lines too. At 1 MiB/s an
address costs under 1% of a core however it asks; before, one address asking for pages of
3.2 MB from 20 connections kept a core busy and the room's acks waited seconds. A person
scrolling back never notices: a page of 200 ordinary lines (about 100 characters) is about
40 KB, so 1 MiB/s is some 25 pages a second."""

HISTORY_WAITING_MAX: Final = 4
"""``history`` requests of one connection that may wait for their answer; one more is refused
with ``rate_limited``. The clients here ask for the next page once a page has come; without a
bound, a connection asking at the frame rate for pages answered at ``HISTORY_RATE`` would
have the server keep (and later read and send) every request it ever made."""

HISTORY_BURST: Final = 4 * 1024 * 1024
"""Bytes of ``history`` answers an address may have at once before ``HISTORY_RATE`` paces it:
about 100 pages of ordinary lines, or one of the largest page (200 lines of 4,000 four-byte
characters, 3.2 MB); an answer is never cut, so a larger one goes out whole and the next
waits until the overdraft is paid back."""
