"""Join storms over real TLS: rosters in chunks, v1 clients unchanged, CPU per join bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from chatsecure.protocol.client import ClientSession, Line, Presence, SessionEvent, Welcomed
from chatsecure.protocol.messages import Join, Leave, Peer
from chatsecure.testing import RawClient, ServerThread
from chatsecure.tls.context import client_context

STORM = 400
"""Clients in the storm test: what a CI machine joins in a few seconds."""
LINES = 20
"""Lines said to the whole room after the storm, one at a time: the unit of the bound."""
JOIN_PER_LINE = 0.45
"""Most server CPU per join, in lines broadcast to the same room by the same server in the
same test. A shared machine's speed changes from minute to minute, and machines differ in what
is dear (TLS handshakes against a send to a socket), so the bound is a ratio of two costs made
of the same work: writes to every member. 400 clients say hello one after another, each in a
loop iteration of its own: the worst case for announcing joins one by one, a write to everyone
per join. Measured on 2 shared cores (a line: 13.3-14.1 ms, 35 us per member): 7.7-7.9 ms per
join, 0.55-0.57 lines, before joins were batched and paced; 3.8-4.9 ms, 0.27-0.37 lines, after.
On a slower machine (a line: 23-28 ms) that pace (0.1 ms per member) measured 0.50-0.54 lines,
no pacing 0.55, and the pace of now (0.5 ms) 0.05-0.06. (Handshakes were the unit before; on
another machine the same code went from 2-3 to 5-6.5 handshakes per join.)"""


@dataclass
class Member:
    """A client in the storm: a real ``ClientSession`` and the roster it rebuilt."""

    session: ClientSession
    roster: dict[str, Peer] = field(default_factory=dict)
    welcomed: asyncio.Event = field(default_factory=asyncio.Event)
    lines: int = 0

    def take(self, events: list[SessionEvent]) -> None:
        for event in events:
            match event:
                case Welcomed(welcome=welcome):
                    self.roster = {p.id: p for p in (welcome.you, *welcome.peers)}
                    self.welcomed.set()
                case Presence(message=Join(peer=peer)):
                    self.roster[peer.id] = peer
                case Presence(message=Leave(peer=peer)):
                    self.roster.pop(peer.id, None)
                case Line():
                    self.lines += 1


async def storm(
    server: ServerThread, count: int, concurrency: int, done: Callable[[list[Member]], bool]
) -> tuple[list[Member], dict[str, Peer], float, float]:
    """``count`` v2 clients make their TLS connections, then say hello ``concurrency`` at a
    time; once ``done``, return them, the server's room (before they leave), and the server's
    CPU seconds for the joins (from the first hello on) and for a line said to them all."""
    ctx = client_context()
    members = [
        Member(ClientSession(f"storm{n}", client_id=f"storm-client-{n:06d}")) for n in range(count)
    ]
    writers: list[asyncio.StreamWriter] = []
    readers: list[asyncio.Task[None]] = []

    async def read(member: Member, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(65536):
            member.take(member.session.receive_data(data))

    async def connect(member: Member) -> None:
        reader, writer = await asyncio.open_connection(
            server.host, server.port, ssl=ctx, server_hostname=""
        )
        writers.append(writer)
        readers.append(asyncio.create_task(read(member, reader)))

    gate = asyncio.Semaphore(concurrency)

    async def hello(member: Member, writer: asyncio.StreamWriter) -> None:
        async with gate:
            member.session.connect()
            writer.write(member.session.data_to_send())
            await member.welcomed.wait()

    try:
        for first in range(0, count, 64):
            await asyncio.gather(*(connect(m) for m in members[first : first + 64]))
        cpu0 = await asyncio.to_thread(server.call, time.thread_time)
        await asyncio.gather(*(hello(m, w) for m, w in zip(members, writers, strict=True)))
        while not done(members):
            await asyncio.sleep(0.02)
        cpu = await asyncio.to_thread(server.call, time.thread_time) - cpu0
        room = await asyncio.to_thread(room_of, server)
        return members, room, cpu, await line_cost(server, members[0], writers[0], members[1:])
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for writer in writers:
            writer.transport.abort()


async def line_cost(
    server: ServerThread, speaker: Member, writer: asyncio.StreamWriter, others: list[Member]
) -> float:
    """Server CPU seconds for one line said to the room: ``LINES`` of them, one at a time."""
    cpu0 = await asyncio.to_thread(server.call, time.thread_time)
    for n in range(1, LINES + 1):
        speaker.session.send(f"line {n}")
        writer.write(speaker.session.data_to_send())
        while any(m.lines < n for m in others):
            await asyncio.sleep(0.005)
    return (await asyncio.to_thread(server.call, time.thread_time) - cpu0) / LINES


def everyone_knows_everyone(count: int) -> Callable[[list[Member]], bool]:
    return lambda members: all(len(m.roster) == count for m in members)


def room_of(server: ServerThread) -> dict[str, Peer]:
    members = server.call(lambda: list(server.server.room.members.values()))
    return {m.id: m.peer for m in members if m.peer is not None}


STORM_TIMEOUT = 60.0
"""Seconds a storm may take in all."""
ATTEMPTS = 3
"""Storms measured at most: the best counts. On a shared machine one measure now and then lands
above the bound (0.46 lines once, in a full run; 0.53 and 0.47 in a row once, in another, where
alone the same code measured 0.22-0.43); joins announced one by one cost more than the bound in
every storm."""


def test_a_storm_of_joins_costs_little_cpu_and_every_roster_is_the_servers(
    start_server: Callable[..., ServerThread],
) -> None:
    measured: list[str] = []
    for _ in range(ATTEMPTS):
        # (The last connections wait for 399 joins before their hello: on a slow machine
        # longer than the default hello timeout, which this test is not about.)
        server = start_server(
            max_per_ip=0, max_sessions=STORM + 10, msg_rate=0, hello_timeout=STORM_TIMEOUT
        )
        members, room, cpu, line = asyncio.run(
            asyncio.wait_for(storm(server, STORM, 1, everyone_knows_everyone(STORM)), STORM_TIMEOUT)
        )
        server.stop()
        assert len(room) == STORM
        for member in members:
            assert member.roster == room
        per_join, per_line = cpu * 1000 / STORM, line * 1000
        if per_join < JOIN_PER_LINE * per_line:
            return
        measured.append(f"{per_join:.2f} ms per join, {per_line:.2f} ms per line")
    raise AssertionError(f"server CPU per join over {JOIN_PER_LINE} lines: {measured}")


def test_a_big_room_is_joined_in_chunks_and_a_v1_client_gets_one_welcome(
    start_server: Callable[..., ServerThread],
) -> None:
    big = 550
    server = start_server(max_per_ip=0, max_sessions=big + 10)
    assert asyncio.run(asyncio.wait_for(hold_room(server, big), 60))


async def hold_room(server: ServerThread, big: int) -> bool:
    """With ``big`` v2 clients in the room, a v2 and a v1 client join by hand."""
    ctx = client_context()
    members: list[Member] = []
    writers: list[asyncio.StreamWriter] = []
    readers: list[asyncio.Task[None]] = []

    async def read(member: Member, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(65536):
            member.take(member.session.receive_data(data))

    try:
        for n in range(big):
            member = Member(ClientSession(f"room{n}", client_id=f"room-client-{n:06d}"))
            reader, writer = await asyncio.open_connection(
                server.host, server.port, ssl=ctx, server_hostname=""
            )
            members.append(member)
            writers.append(writer)
            member.session.connect()
            writer.write(member.session.data_to_send())
            readers.append(asyncio.create_task(read(member, reader)))
        await asyncio.gather(*(m.welcomed.wait() for m in members))
        return await asyncio.to_thread(join_by_hand, server, big, members)
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for writer in writers:
            writer.transport.abort()


def join_by_hand(server: ServerThread, big: int, members: list[Member]) -> bool:
    room = room_of(server)
    assert len(room) == big
    with RawClient(server.host, server.port) as v2, RawClient(server.host, server.port) as v1:
        welcome = v2.join("v2-by-hand", client="by-hand-client-v2")
        assert welcome["peers_total"] == big
        assert len(welcome["peers"]) == 500
        more = v2.expect("peers")
        assert len(more["peers"]) == big - 500
        ids = [p["id"] for p in welcome["peers"] + more["peers"]]
        assert sorted(ids) == sorted(room)
        old = v1.join("v1-by-hand")
        assert "peers_total" not in old
        assert sorted(p["id"] for p in old["peers"]) == sorted([*room, welcome["you"]["id"]])
        # The v2 client hears of the v1 client's join; nothing else comes before it.
        assert v2.expect("join")["peer"]["id"] == old["you"]["id"]
        assert v1.silent(0.3)
        deadline = time.monotonic() + 10
        while any(len(m.roster) != big + 2 for m in members) and time.monotonic() < deadline:
            time.sleep(0.02)
        room = room_of(server)
        return all(m.roster == room for m in members)
