"""Presence without sockets: whatever joins and leaves interleave, every roster is the room's.

Clients, some speaking v1 (a plain hello) and some v2 (with ``client``), join and leave a
``Room`` through the in-memory connections of ``test_v2_property``; each is a real
``ClientSession`` fed the bytes split anywhere, and its roster is rebuilt from the events the
session hands out (``Welcomed``, then one ``Presence`` per join or leave). The chunk size is
made tiny so that welcomes, ``peers``, ``joins`` and ``leaves`` frames all split.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatsecure.history import MemoryLog
from chatsecure.protocol import limits
from chatsecure.protocol.client import ClientSession, Presence, SessionEvent, Welcomed
from chatsecure.protocol.messages import Hello, Join, Leave, Peer, ServerInfo, parse_client
from chatsecure.room import Room

from .test_v2_property import LOTS, Pipe, iterations

CLIENTS = 8
CHUNK = 2
"""``PEERS_CHUNK`` in these tests: a room of 8 takes several frames of each kind."""


@contextlib.contextmanager
def chunk_size(size: int) -> Iterator[None]:
    saved = limits.PEERS_CHUNK
    limits.PEERS_CHUNK = size
    try:
        yield
    finally:
        limits.PEERS_CHUNK = saved


@dataclass
class Person:
    """One client: a session per connection (v1 or v2) and the roster it has rebuilt."""

    n: int
    v2: bool
    session: ClientSession | None = None
    pipe: Pipe | None = None
    roster: dict[str, Peer] = field(default_factory=dict)
    joined_twice: list[str] = field(default_factory=list)

    def take(self, events: list[SessionEvent]) -> None:
        for event in events:
            match event:
                case Welcomed(welcome=welcome):
                    self.roster = {p.id: p for p in (welcome.you, *welcome.peers)}
                case Presence(message=Join(peer=peer)):
                    if peer.id in self.roster:
                        self.joined_twice.append(peer.id)
                    self.roster[peer.id] = peer
                case Presence(message=Leave(peer=peer)):
                    assert peer.id in self.roster, f"client {self.n}: a leave of a stranger"
                    del self.roster[peer.id]


class Lobby:
    def __init__(self, v2: list[bool], pace: float) -> None:
        self.room = Room(ServerInfo("lab", "test", 2), MemoryLog(LOTS), presence_pace=pace)
        self.people = [Person(n, v2[n]) for n in range(CLIENTS)]
        self._ids = itertools.count(1)

    def connect(self, n: int) -> None:
        person = self.people[n]
        if person.pipe is not None:
            return
        client_id = f"client-{n:04d}" if person.v2 else None
        person.session = ClientSession(f"user{n % 3}", client_id=client_id)
        person.pipe = Pipe(self.room, str(next(self._ids)), client_id or "")
        person.session.connect()
        person.pipe.up += person.session.data_to_send()

    def leave(self, n: int) -> None:
        person = self.people[n]
        if person.pipe is None:
            return
        person.pipe.closed = True
        self.room.remove(person.pipe, "quit")
        person.pipe = person.session = None
        person.roster = {}

    def up(self, n: int) -> None:
        pipe = self.people[n].pipe
        if pipe is None:
            return
        data, pipe.up = bytes(pipe.up), bytearray()
        for frame in pipe.up_frames.feed(data):
            message = parse_client(frame)
            assert isinstance(message, Hello)
            self.room.join(pipe, message.nick, message, "127.0.0.1")

    def down(self, n: int, size: int) -> None:
        person = self.people[n]
        if person.pipe is None or person.session is None or not person.pipe.down:
            return
        data, person.pipe.down = bytes(person.pipe.down[:size]), person.pipe.down[size:]
        person.take(person.session.receive_data(data))

    async def settle(self) -> None:
        for _ in range(50):
            for n in range(CLIENTS):
                self.up(n)
            await iterations(3)
            if self.room._held:
                await asyncio.sleep(0.002)  # a paced release is due within milliseconds
            for n in range(CLIENTS):
                self.down(n, LOTS * 100)
            if not self.room._held and not self.room.frames and self.quiet():
                return
        raise AssertionError("the room never went quiet")

    def quiet(self) -> bool:
        return all(p.pipe is None or (not p.pipe.up and not p.pipe.down) for p in self.people)


who = st.integers(0, CLIENTS - 1)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("connect"), who),
        st.tuples(st.just("leave"), who),
        st.tuples(st.just("up"), who),
        st.tuples(st.just("down"), who, st.integers(1, 400)),
        st.tuples(st.just("loop"), st.integers(1, 3)),
    ),
    min_size=10,
    max_size=80,
)


async def play(v2: list[bool], pace: float, script: list[tuple[object, ...]]) -> Lobby:
    lobby = Lobby(v2, pace)
    await lobby.room.open()
    for action in script:
        match action:
            case ("connect", int(n)):
                lobby.connect(n)
            case ("leave", int(n)):
                lobby.leave(n)
            case ("up", int(n)):
                lobby.up(n)
            case ("down", int(n), int(size)):
                lobby.down(n, size)
            case ("loop", int(count)):
                await iterations(count)
    for n in range(CLIENTS):
        lobby.connect(n)  # everyone in at the end, so that every roster is checked
    await lobby.settle()
    return lobby


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    v2=st.lists(st.booleans(), min_size=CLIENTS, max_size=CLIENTS),
    pace=st.sampled_from([0.0, 0.0001]),
    script=steps,
)
def test_every_roster_rebuilt_from_the_frames_is_the_rooms(
    v2: list[bool], pace: float, script: list[tuple[object, ...]]
) -> None:
    with chunk_size(CHUNK):
        lobby = asyncio.run(play(v2, pace, script))
    room = {member.id: member.peer for member in lobby.room.members.values() if member.peer}
    assert len(room) == CLIENTS
    for person in lobby.people:
        assert person.roster == room, f"client {person.n} (v2: {person.v2})"
        assert not person.joined_twice, f"client {person.n} heard of {person.joined_twice} twice"
