"""Discovery over real multicast between simulated hosts (network namespaces made here).

Every process that runs zeroconf runs inside a namespace of the test's lab; the lab removes
them all at the end. Addresses are private ones that exist only inside those namespaces.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from chatsecure.discovery.records import MAX_PENDING, MAX_RESOLVING, MAX_SERVERS, RECORD_TTL
from chatsecure.protocol.limits import PROTOCOL_VERSION
from chatsecure.tls.certs import fingerprint
from tests.discovery.procs import chatsecure, discover, env, found, start_discover, start_server
from tests.netns import Host, Lab, Proc

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

PROBE = Path(__file__).with_name("api_probe.py")
TWINS = Path(__file__).with_name("twins_probe.py")
FLOOD = Path(__file__).with_name("flood_probe.py")
BROWSE = Path(__file__).with_name("browse_probe.py")


def test_server_is_found_in_its_namespace_with_port_addresses_and_fingerprint(
    lab: Lab, cert_dir: Path
) -> None:
    host = lab.host("a")
    lab.stub(host, "10.77.0.1/24", "fd77::1/64")
    server = start_server(host, cert_dir, "room one")

    found = discover(host)

    assert found == [
        {
            "key": "room one._chatsecure._tcp.local.",
            "name": "room one",
            "instance": "room one",
            "addresses": ["10.77.0.1", "fd77::1"],  # every address but loopback, IPv4 first
            "port": server.port,
            "fingerprint": server.fingerprint,
            "version": PROTOCOL_VERSION,
        }
    ]


def test_stopped_server_disappears_from_a_running_browser_within_3_s(
    lab: Lab, cert_dir: Path
) -> None:
    host = lab.host("a")
    lab.stub(host, "10.77.0.1/24")
    server = start_server(host, cert_dir, "going away")
    watcher = host.popen(*chatsecure("discover", "--watch", "--timeout", "30"), env=env())
    added = json.loads(watcher.expect(r"^\{.*\"added\".*\}$").group(0))
    assert (added["name"], added["port"]) == ("going away", server.port)

    stopped = time.monotonic()
    assert server.proc.stop() == 0
    removed = json.loads(watcher.expect(r"^\{.*\"removed\".*\}$", timeout=3).group(0))

    assert removed == {"event": "removed", "key": added["key"]}
    assert time.monotonic() - stopped < 3
    assert "withdrew the mDNS advertisement" in server.proc.err


def test_browser_and_advertiser_api_deliver_events_to_a_queue_and_leave_no_threads(
    lab: Lab,
) -> None:
    host = lab.host("a")
    lab.stub(host, "10.77.0.1/24")
    fp = fingerprint(b"api probe certificate")

    result = host.run(sys.executable, str(PROBE), "7467", fp, "10.77.0.1", env=env())

    report = json.loads(result.stdout)
    assert report["browser_error"] is None
    assert report["instance"] == "api probe._chatsecure._tcp.local."
    assert report["added"]["addresses"] == ["10.77.0.1"]
    assert (report["added"]["port"], report["added"]["fingerprint"]) == (7467, fp)
    assert report["consumer_thread"] == "MainThread"
    assert "chatsecure-advertiser" not in report["advertiser_threads_after_stop"]
    assert report["removed"] == report["instance"]
    assert report["removed_after"] < 3
    assert report["threads_after_stop"] == []


def dig_records(host: Host, server_ip: str) -> list[tuple[int, str, str]]:
    """The (TTL, type, value) of each record a legacy unicast PTR query gets from ``server_ip``."""
    answer = host.run(
        "dig", "-p", "5353", f"@{server_ip}", "_chatsecure._tcp.local", "PTR",
        "+time=1", "+tries=3", "+norecurse",
    ).stdout  # fmt: skip
    return [
        (int(m.group(1)), m.group(2), m.group(3))
        for m in re.finditer(r"^\S+\s+(\d+)\s+IN\s+(\w+)\s+(.+)$", answer, re.MULTILINE)
    ]


def test_legacy_unicast_query_sees_ptr_srv_txt_and_address_records(
    lab: Lab, cert_dir: Path
) -> None:
    server_host, other = lab.host("srv"), lab.host("other")
    server_ip, _ = lab.lan("10.77.1.0/24", server_host, other)
    server = start_server(server_host, cert_dir, "dig me", "--host", server_ip)

    answer = dig_records(other, server_ip)

    records = {(kind, value) for _, kind, value in answer}
    assert ("PTR", "dig\\032me._chatsecure._tcp.local.") in records, answer
    srv = [value for kind, value in records if kind == "SRV"]
    assert len(srv) == 1, answer
    assert srv[0].startswith(f"0 0 {server.port} chatsecure-"), answer
    assert ("A", server_ip) in records, answer
    txt = next(value for kind, value in records if kind == "TXT")
    assert f'"fp={server.fingerprint}"' in txt, answer
    assert f'"v={PROTOCOL_VERSION}"' in txt, answer
    assert '"name=dig me"' in txt, answer


def test_every_advertised_record_lives_two_minutes_so_a_killed_server_goes_soon(
    lab: Lab, cert_dir: Path
) -> None:
    server_host, other = lab.host("srv"), lab.host("other")
    server_ip, _ = lab.lan("10.77.1.0/24", server_host, other)
    start_server(server_host, cert_dir, "short lived", "--host", server_ip)

    answer = dig_records(other, server_ip)

    assert {kind for _, kind, _ in answer} >= {"PTR", "SRV", "TXT", "A"}, answer
    assert {ttl for ttl, _, _ in answer} == {RECORD_TTL} == {120}, answer


def advertise_briefly(host: Host, ip: str, ttl: int) -> Proc:
    """An advertiser (no server) in ``host`` whose records live ``ttl`` seconds, advertising
    once it prints its name; the test kills it when it wants it gone without a goodbye."""
    script = (
        "import time\n"
        "from chatsecure.discovery.mdns import Advertiser\n"
        f"a = Advertiser('crashing', 7467, {fingerprint(b'x')!r}, [{ip!r}], ttl={ttl})\n"
        "a.start()\n"
        "print(a.wait(10), flush=True)\n"
        "time.sleep(60)\n"
    )
    server = host.popen(sys.executable, "-c", script, env=env())
    server.expect(r"crashing\._chatsecure")
    return server


def test_a_killed_server_leaves_a_running_browser_when_its_records_expire(
    lab: Lab, cert_dir: Path
) -> None:
    # What a server does with RECORD_TTL, with a TTL short enough to wait for.
    ttl = 3
    server_host, browser_host = lab.host("srv"), lab.host("browser")
    server_ip, _ = lab.lan("10.77.1.0/24", server_host, browser_host)
    server = advertise_briefly(server_host, server_ip, ttl)
    watcher = browser_host.popen(*chatsecure("discover", "--watch", "--timeout", "40"), env=env())
    added = json.loads(watcher.expect(r"^\{.*\"added\".*\}$").group(0))
    assert added["name"] == "crashing"

    time.sleep(2.5 * ttl)  # alive: the browser asks again before the records expire
    watcher._pump(0)
    assert "removed" not in watcher.out, watcher.err
    killed = time.monotonic()
    server.stop(signal.SIGKILL)  # no goodbye
    removed = json.loads(watcher.expect(r"^\{.*\"removed\".*\}$", timeout=ttl + 3).group(0))

    assert removed == {"event": "removed", "key": added["key"]}
    assert time.monotonic() - killed < ttl + 1.5


def test_found_from_another_host_and_chat_by_the_discovered_address(
    lab: Lab, cert_dir: Path
) -> None:
    server_host, bob_host, carol_host = lab.host("srv"), lab.host("bob"), lab.host("carol")
    _, bob_ip, carol_ip = lab.lan("10.77.1.0/24", server_host, bob_host, carol_host)
    server = start_server(server_host, cert_dir, "lan party")

    (found,) = discover(bob_host)
    assert found["addresses"] == ["10.77.1.1"]
    assert found["fingerprint"] == server.fingerprint

    address = f"{found['addresses'][0]}:{found['port']}"
    bob = bob_host.popen(
        *chatsecure("connect", address, "--nick", "bob", "--fingerprint", found["fingerprint"]),
        stdin=True,
        env=env(),
    )
    bob.expect(r"connected to 'lan party' as bob")
    carol = carol_host.popen(
        *chatsecure("connect", "--discovered", "lan party", "--nick", "carol", "--accept-new"),
        stdin=True,
        env=env(),
    )
    carol.expect(r"connected to 'lan party' as carol")
    bob.expect(rf"carol \({re.escape(carol_ip)}\) joined")

    bob.send("hello from bob")
    carol.expect(rf"bob \({re.escape(bob_ip)}\): hello from bob")
    carol.send("hi bob")
    bob.expect(rf"carol \({re.escape(carol_ip)}\): hi bob")

    carol.close_stdin()
    assert carol.wait() == 0
    bob.close_stdin()
    assert bob.wait() == 0


def test_discovery_stays_on_its_link_but_a_typed_ip_crosses_the_router(
    lab: Lab, cert_dir: Path
) -> None:
    server_host, router, client_host = (
        lab.host("srv"),
        lab.host("r", forwarding=True),
        lab.host("c"),
    )
    server_ip, router_ip1 = lab.lan("10.77.1.0/24", server_host, router)
    client_ip, router_ip2 = lab.lan("10.77.2.0/24", client_host, router)
    server_host.ip("route", "add", "default", "via", router_ip1)
    client_host.ip("route", "add", "default", "via", router_ip2)
    server = start_server(server_host, cert_dir, "behind the router")

    on_link, off_link = start_discover(router), start_discover(client_host)
    assert [s["name"] for s in found(on_link)] == ["behind the router"]  # it is advertised
    assert found(off_link) == []  # ... but multicast stays on its link

    client = client_host.popen(
        *chatsecure(
            "connect", f"{server_ip}:{server.port}", "--nick", "remote",
            "--fingerprint", server.fingerprint,
        ),
        stdin=True,
        env=env(),
    )  # fmt: skip
    client.expect(r"connected to 'behind the router' as remote")
    server.proc.expect(rf"remote joined from {re.escape(client_ip)}", stream="stderr")
    client.close_stdin()
    assert client.wait() == 0


def test_two_servers_with_the_same_name_both_appear_under_distinct_names(
    lab: Lab, cert_dir: Path
) -> None:
    first_host, second_host, browser = lab.host("one"), lab.host("two"), lab.host("browser")
    first_ip, second_ip, _ = lab.lan("10.77.1.0/24", first_host, second_host, browser)
    first = start_server(first_host, cert_dir, "twin")
    second = start_server(second_host, cert_dir, "twin")

    assert (first.instance, second.instance) == ("twin", "twin-2")
    assert "the name 'twin' is taken on this network; advertising as 'twin-2'" in second.proc.err
    found = {s["instance"]: (s["name"], s["addresses"]) for s in discover(browser)}
    assert found == {"twin": ("twin", [first_ip]), "twin-2": ("twin-2", [second_ip])}


def test_servers_of_one_name_on_one_host_get_distinct_names(lab: Lab) -> None:
    # The nodes of a cluster, or two servers someone started on one machine: each must hear
    # that the name is taken, though the answers to its probes may reach another's socket.
    host, other = lab.host("a"), lab.host("b")
    address, _ = lab.lan("10.77.2.0/24", host, other)

    result = host.run(sys.executable, str(TWINS), address, env=env())

    assert json.loads(result.stdout) == ["twin", "twin-2", "twin-3"]


def test_no_discovery_flag_and_advertise_ip_override(lab: Lab, cert_dir: Path) -> None:
    host = lab.host("a")
    lab.stub(host, "10.77.0.1/24")
    start_server(host, cert_dir, "hidden", "--no-discovery", advertised=False)
    start_server(host, cert_dir, "elsewhere", "--advertise-ip", "fd77::9",
                 "--advertise-ip", "10.77.0.9")  # fmt: skip

    found = discover(host)

    assert [(s["name"], s["addresses"]) for s in found] == [("elsewhere", ["10.77.0.9", "fd77::9"])]


def test_a_server_advertising_another_fingerprint_is_refused(lab: Lab, cert_dir: Path) -> None:
    host = lab.host("a")
    lab.stub(host, "10.77.0.1/24")
    real = start_server(host, cert_dir, "real", advertised=False)
    impostor_fp = fingerprint(b"someone else's certificate")
    script = (
        "import sys, time\n"
        "from chatsecure.discovery.mdns import Advertiser\n"
        f"with Advertiser('impostor', {real.port}, {impostor_fp!r}, ['10.77.0.1']) as a:\n"
        "    print(a.wait(10), flush=True)\n"
        "    time.sleep(30)\n"
    )
    impostor = host.popen(sys.executable, "-c", script, env=env())
    impostor.expect(r"impostor\._chatsecure")

    client = host.run(
        *chatsecure("connect", "--discovered", "impostor", "--nick", "x", "--accept-new"),
        env=env(),
        check=False,
    )

    assert client.returncode == 1
    assert f"presented {real.fingerprint}" in client.stderr
    assert f"advertised {impostor_fp}; refusing" in client.stderr
    assert "joined" not in real.proc.err


def test_server_without_a_multicast_interface_serves_and_warns(lab: Lab, cert_dir: Path) -> None:
    host = lab.host("lonely")  # loopback only
    server = start_server(host, cert_dir, "alone", advertised=False)
    server.proc.expect(
        r"WARNING .*not advertising over mDNS \(no network interface other than loopback\)",
        stream="stderr",
    )

    client = host.run(
        *chatsecure(
            "connect", f"127.0.0.1:{server.port}", "--nick", "me",
            "--fingerprint", server.fingerprint,
        ),
        env=env(),
    )  # fmt: skip

    assert "connected to 'alone' as me" in client.stdout
    browse = host.run(*chatsecure("discover", "--timeout", "1"), env=env(), check=False)
    assert browse.returncode == 1
    assert "cannot look for servers on this network" in browse.stderr


def test_a_server_on_loopback_only_is_not_advertised_and_says_why(lab: Lab, cert_dir: Path) -> None:
    host = lab.host("a")
    lab.stub(host, "10.77.0.1/24")
    server = start_server(host, cert_dir, "local only", "--host", "127.0.0.1", advertised=False)
    server.proc.expect(
        r"WARNING .*not advertising over mDNS \(listening on 127\.0\.0\.1, loopback only\)",
        stream="stderr",
    )

    assert discover(host) == []


def test_on_a_link_with_ipv6_link_local_only_the_server_advertises_that_not_loopback(
    lab: Lab, cert_dir: Path
) -> None:
    server_host, client_host = lab.host("srv"), lab.host("cli")
    server_host.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
                   "netns", client_host.name)  # fmt: skip
    for host in (server_host, client_host):
        host.ip("link", "set", "eth0", "up")
    own = link_local(server_host)
    server = start_server(server_host, cert_dir, "link local", advertised=False)
    advertised = server.proc.expect(r"advertising .* port \d+, addresses (.+)$", stream="stderr")
    assert advertised.group(1) == own  # neither 127.0.0.1 nor ::1

    (found,) = discover(client_host)
    assert [a.partition("%")[0] for a in found["addresses"]] == [own], found
    client = client_host.popen(
        *chatsecure("connect", "--discovered", "link local", "--nick", "ll", "--accept-new"),
        stdin=True,
        env=env(),
    )
    client.expect(r"connected to 'link local' as ll")
    client.close_stdin()
    assert client.wait() == 0


def test_an_advertiser_started_before_the_network_advertises_once_it_is_up_and_follows_it(
    lab: Lab,
) -> None:
    # What a server does every RECHECK seconds, with a recheck short enough to wait for.
    server_host, browser_host = lab.host("srv"), lab.host("browser")
    browser_host.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
                    "netns", server_host.name)  # fmt: skip
    browser_host.ip("addr", "add", "10.77.1.2/24", "dev", "eth0")
    browser_host.ip("link", "set", "eth0", "up")
    script = (
        "import logging, time\n"
        "from chatsecure.discovery.mdns import Advertiser\n"
        "logging.basicConfig(level=logging.INFO)\n"
        f"a = Advertiser('early bird', 7467, {fingerprint(b'x')!r}, recheck=0.5)\n"
        "a.start()\n"
        "print(a.wait(10), flush=True)\n"
        "time.sleep(60)\n"
    )
    server = server_host.popen(sys.executable, "-c", script, env=env())
    server.expect(r"not advertising over mDNS \(no network interface other than loopback\)",
                  stream="stderr")  # fmt: skip
    server.expect(r"^None$")
    watcher = browser_host.popen(*chatsecure("discover", "--watch", "--timeout", "40"), env=env())

    server_host.ip("addr", "add", "10.77.1.1/24", "dev", "eth0")
    server_host.ip("link", "set", "eth0", "up")  # the network comes up: only lo until now
    up = time.monotonic()
    added = json.loads(watcher.expect(r"^\{.*\"added\".*\}$", timeout=5).group(0))
    assert (added["name"], added["addresses"]) == ("early bird", ["10.77.1.1"])
    assert time.monotonic() - up < 4

    server_host.ip("addr", "add", "10.77.1.5/24", "dev", "eth0")  # and an address comes later
    again = json.loads(watcher.expect(r"^\{.*\"added\".*\}$", timeout=5).group(0))
    assert (again["name"], sorted(again["addresses"])) == ("early bird", ["10.77.1.1", "10.77.1.5"])
    server.expect(r"addresses to advertise changed; withdrawing", stream="stderr")
    server.expect(r"withdrew the mDNS advertisement", stream="stderr")


def link_local(host: Host) -> str:
    """The IPv6 link-local address the kernel gave ``host``'s first interface."""
    shown = host.ip("-6", "-o", "addr", "show", "dev", "eth0", "scope", "link").stdout
    match = re.search(r"inet6 (fe80::[0-9a-f:]+)/64", shown)
    assert match is not None, shown
    return match.group(1)


@pytest.mark.parametrize("global6", [False, True], ids=["link-local-v6", "global-v6"])
def test_first_event_has_every_address_and_connect_picks_ipv4_every_time(
    lab: Lab, cert_dir: Path, global6: bool
) -> None:
    server_host, client_host = lab.host("srv"), lab.host("cli")
    subnet6 = "fd77:1::/64" if global6 else None
    server_ip, client_ip = lab.lan("10.77.1.0/24", server_host, client_host, subnet6=subnet6)
    own = link_local(server_host)
    advertised = [server_ip, *(["fd77:1::1"] if global6 else []), own]
    # Like responders that announce every address they have, link-local included. Its
    # records reach the browser twice: over IPv4 without the interface they came by, and
    # (when sent from the link-local address) over IPv6 with it, a moment later.
    watcher = client_host.popen(*chatsecure("discover", "--watch", "--timeout", "4"), env=env())
    server = start_server(server_host, cert_dir, "pick me",
                          *[arg for a in advertised for arg in ("--advertise-ip", a)])  # fmt: skip

    assert watcher.wait(15) == 0, watcher.err
    events = [json.loads(line) for line in watcher.out.splitlines()]
    assert [e["event"] for e in events] == ["added"], events  # complete at once: no "updated"
    addresses = events[0]["addresses"]
    # A link-local address is only usable with its interface: scoped, or left out.
    assert all(a.startswith(f"{own}%") for a in addresses if a.startswith("fe80:")), addresses
    assert [a for a in addresses if not a.startswith("fe80:")] == advertised[:-1]
    if not global6:  # sent from the link-local address, so its scope is known
        assert addresses[-1].startswith(f"{own}%"), addresses

    for attempt in range(4):
        nick = f"try{attempt}"
        client = client_host.popen(
            *chatsecure("connect", "--discovered", "pick me", "--nick", nick, "--accept-new"),
            stdin=True,
            env=env(),
        )
        client.expect(rf"connected to 'pick me' as {nick}")
        server.proc.expect(rf"{nick} joined from ([^\s;]+)", stream="stderr")
        joined_from = re.findall(rf"{nick} joined from ([^\s;]+)", server.proc.err)
        assert joined_from == [client_ip], server.proc.err
        client.close_stdin()
        assert client.wait() == 0


def test_the_nodes_of_a_cluster_advertise_one_room_id_and_keep_the_rooms_name(
    lab: Lab, cert_dir: Path, tmp_path: Path
) -> None:
    from chatsecure.discovery.records import cluster_id
    from tests.redis_server import REDIS_SERVER

    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    nodes_host, browser = lab.host("nodes"), lab.host("browser")
    nodes_ip, _ = lab.lan("10.77.2.0/24", nodes_host, browser)
    # Redis on the namespace's own loopback: nothing outside the lab can reach it.
    redis = nodes_host.popen(
        REDIS_SERVER, "--port", "6390", "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", str(tmp_path),
    )  # fmt: skip
    redis.expect(r"Ready to accept connections")
    url = "redis://127.0.0.1:6390/0"
    first = start_server(nodes_host, cert_dir, "lab room", "--cluster", url)
    second = start_server(nodes_host, cert_dir, "lab room", "--cluster", url)
    alone = start_server(nodes_host, cert_dir, "elsewhere")

    assert (first.instance, second.instance) == ("lab room", "lab room-2")
    found = {s["instance"]: s for s in discover(browser)}
    room = cluster_id(url, "lab room")
    assert {i: (s["name"], s.get("cluster"), s["port"]) for i, s in found.items()} == {
        "lab room": ("lab room", room, first.port),
        "lab room-2": ("lab room", room, second.port),  # one room: the name is not renamed
        "elsewhere": ("elsewhere", None, alone.port),
    }
    assert found["lab room"]["addresses"] == [nodes_ip]


def test_a_discovered_server_is_reached_at_its_next_address_when_the_first_is_gone(
    lab: Lab, cert_dir: Path
) -> None:
    server_host, client_host = lab.host("srv"), lab.host("cli")
    lab.lan("10.77.1.0/24", server_host, client_host, subnet6="fd77:1::/64")
    # An address it advertises but has lost, on the client's network: being IPv4, it is
    # preferred to the IPv6 address the server has.
    client_host.ip("route", "add", "unreachable", "10.77.1.50/32")
    advertised = ["10.77.1.50", "fd77:1::1"]
    server = start_server(server_host, cert_dir, "lab stale",
                          *[arg for a in advertised for arg in ("--advertise-ip", a)])  # fmt: skip

    client = client_host.popen(
        *chatsecure("connect", "--discovered", "lab stale", "--nick", "carol", "--accept-new"),
        stdin=True,
        env=env(),
    )
    client.expect(r"connected to 'lab stale' as carol")
    assert f"cannot reach 10.77.1.50:{server.port} (the address is unreachable" in client.err
    match = server.proc.expect(r"carol joined from ([^\s;]+)", stream="stderr")
    assert match.group(1) == "fd77:1::2"  # the client, over IPv6
    client.close_stdin()
    assert client.wait() == 0


def test_a_discovered_server_that_answers_at_no_address_names_each_one_tried(
    lab: Lab, cert_dir: Path
) -> None:
    server_host, client_host = lab.host("srv"), lab.host("cli")
    lab.lan("10.77.1.0/24", server_host, client_host)
    lost = ["10.77.1.50", "10.77.1.51"]
    for address in lost:
        client_host.ip("route", "add", "unreachable", f"{address}/32")
    server = start_server(server_host, cert_dir, "lab gone",
                          *[arg for a in lost for arg in ("--advertise-ip", a)])  # fmt: skip

    result = client_host.run(
        *chatsecure("connect", "--discovered", "lab gone", "--nick", "carol", "--accept-new"),
        check=False,
        env=env(),
    )
    assert result.returncode == 1, result
    said = result.stderr.splitlines()[-1]
    tried = [f"{a}:{server.port} (the address is unreachable (no route to host): check it)"
             for a in lost]  # fmt: skip
    # (in the order the records came: the same rank, the same family)
    assert said in [
        f"chatsecure: none of the server's addresses answered: {'; '.join(order)}"
        for order in (tried, tried[::-1])
    ], said


def start_browse_probe(host: Host, *args: str) -> Proc:
    """``browse_probe.py`` in ``host``: events as JSON lines, a report once stdin closes."""
    return host.popen(sys.executable, str(BROWSE), "40", *args, stdin=True, env=env())


def report_of(probe: Proc) -> dict[str, object]:
    """Stop a ``start_browse_probe`` process; its report."""
    probe.close_stdin()
    assert probe.wait(15) == 0, probe.err
    report: dict[str, object] = json.loads(probe.out.splitlines()[-1])["report"]
    return report


def seen(proc: Proc, pattern: str, timeout: float) -> bool:
    """Whether ``pattern`` shows on ``proc``'s stderr within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, proc.err, re.MULTILINE) and time.monotonic() < deadline:
        proc._pump(0.1)
    return re.search(pattern, proc.err, re.MULTILINE) is not None


def flood_lab(lab: Lab, cert_dir: Path) -> tuple[Host, str, Proc, str]:
    """A genuine server, a hostile neighbour and a browser that listed the server, on one link:
    the neighbour's host and address, the browser and the server's key."""
    server_host, hostile, browser_host = lab.host("srv"), lab.host("bad"), lab.host("browser")
    _, hostile_ip, _ = lab.lan("10.77.1.0/24", server_host, hostile, browser_host)
    start_server(server_host, cert_dir, "genuine")
    probe = start_browse_probe(browser_host)
    added = json.loads(probe.expect(r'^\{"event": "added".*\}$').group(0))
    assert added["name"] == "genuine"
    return hostile, hostile_ip, probe, added["key"]


def test_a_neighbour_announcing_hundreds_of_names_gets_a_few_resolves_at_a_time(
    lab: Lab, cert_dir: Path
) -> None:
    hostile, hostile_ip, probe, genuine = flood_lab(lab, cert_dir)
    count = MAX_RESOLVING + MAX_PENDING + 40  # names that never resolve: each waits it out

    hostile.run(sys.executable, str(FLOOD), hostile_ip, str(count), "bare", env=env())
    warned = seen(probe, r"announces too many chatsecure servers", timeout=5)
    time.sleep(1)  # a little more of the flood's resolves
    report = report_of(probe)

    assert report["peak_resolving"] == MAX_RESOLVING, report  # reached, never passed
    assert warned, probe.err
    assert probe.err.count("announces too many") == 1, probe.err  # once, not once a name
    assert report["listed"] == [genuine.lower()], report
    assert '"removed"' not in probe.out
    assert isinstance(report["stop_seconds"], float)
    assert report["stop_seconds"] < 2, report
    assert report["threads_after_stop"] == [], report


def test_a_neighbour_announcing_more_servers_than_a_list_holds_fills_it_and_no_more(
    lab: Lab, cert_dir: Path
) -> None:
    hostile, hostile_ip, probe, genuine = flood_lab(lab, cert_dir)
    count = MAX_SERVERS + 44  # names that resolve at once, from the records they came with

    hostile.run(sys.executable, str(FLOOD), hostile_ip, str(count), "full", env=env())
    warned = seen(probe, rf"more than {MAX_SERVERS} chatsecure servers", timeout=10)
    time.sleep(0.5)  # time for any more to be listed, wrongly
    report = report_of(probe)

    assert report["most_listed"] == MAX_SERVERS, report["most_listed"]
    assert warned, probe.err
    assert probe.err.count("listing no more") == 1, probe.err
    listed = report["listed"]
    assert isinstance(listed, list)
    assert genuine.lower() in listed  # listed before the flood, and still
    assert report["peak_resolving"] <= MAX_RESOLVING, report
    assert report["threads_after_stop"] == [], report


def test_the_watcher_goes_on_after_a_look_that_fails_and_drops_a_killed_server(
    lab: Lab,
) -> None:
    ttl = 3
    server_host, browser_host = lab.host("srv"), lab.host("browser")
    server_ip, _ = lab.lan("10.77.1.0/24", server_host, browser_host)
    server = advertise_briefly(server_host, server_ip, ttl)
    probe = start_browse_probe(browser_host, "--fail-checks", "2")
    added = json.loads(probe.expect(r'^\{"event": "added".*\}$').group(0))
    assert added["name"] == "crashing"

    killed = time.monotonic()
    server.stop(signal.SIGKILL)  # no goodbye: only the watcher can tell it is gone
    removed = json.loads(probe.expect(r'^\{"event": "removed".*\}$', timeout=ttl + 3).group(0))

    assert removed == {"event": "removed", "key": added["key"]}
    assert time.monotonic() - killed < ttl + 1.5
    report_of(probe)
    failed = f"ERROR chatsecure.discovery.mdns: watching {added['key'].lower()} failed; going on"
    assert probe.err.count(failed) == 1, probe.err  # the second failure is not said again
    assert "RuntimeError: a look at the cache that fails" in probe.err
