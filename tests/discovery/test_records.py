"""The pure side of discovery: names, TXT records, addresses. No network."""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from zeroconf import BadTypeInNameException, ServiceInfo, service_type_name

from chatsecure.discovery import records
from chatsecure.discovery.mdns import Advertiser
from chatsecure.discovery.records import (
    MAX_LABEL,
    SERVICE_TYPE,
    DiscoveredServer,
    ServerAdded,
    ServerRemoved,
    ServerUpdated,
    address_rank,
    addresses_settled,
    advertised_addresses,
    connectable_addresses,
    decode_txt,
    describe_server,
    encode_txt,
    event_json,
    friendly_name,
    host_name,
    instance_label,
    instance_label_of,
    instance_name,
    match_servers,
    order_addresses,
    preferred_addresses,
    renamed,
    server_from_records,
)
from chatsecure.errors import ConfigError
from chatsecure.protocol.limits import PROTOCOL_VERSION
from chatsecure.tls.certs import fingerprint

FP = fingerprint(b"certificate")
digests = st.binary(min_size=32, max_size=32).map(
    lambda raw: "SHA256:" + base64.b64encode(raw).decode().rstrip("=")
)


def server(
    key: str = "chat._chatsecure._tcp.local.", name: str = "chat", **kw: object
) -> DiscoveredServer:
    values: dict[str, object] = {
        "addresses": ("10.0.0.5",),
        "port": 7467,
        "fingerprint": FP,
        "version": 1,
    }
    values.update(kw)
    return DiscoveredServer(key=key, name=name, **values)  # type: ignore[arg-type]


# --- names ------------------------------------------------------------------------------


def test_service_type_is_a_valid_dns_sd_type() -> None:
    assert SERVICE_TYPE == "_chatsecure._tcp.local."
    assert service_type_name(SERVICE_TYPE) == SERVICE_TYPE


def test_friendly_name_uses_the_first_label_of_the_host_name() -> None:
    assert friendly_name("pc1.example.lan") == "chat on pc1"
    assert friendly_name("") == "chat on localhost"


def test_instance_label_keeps_a_plain_name_as_it_is() -> None:
    assert instance_label("chat on pc1") == "chat on pc1"


def test_instance_label_loses_dots_controls_and_bidi_overrides() -> None:
    assert instance_label("v1.2\tteam\u202echat\n") == "v1-2 teamchat"


def test_instance_label_is_cut_at_a_character_boundary_leaving_room_for_a_suffix() -> None:
    label = instance_label("é" * 100)
    assert label == "é" * ((MAX_LABEL - records.RENAME_ROOM) // 2)
    assert len((label + "-999").encode()) <= MAX_LABEL


def test_instance_label_of_an_empty_name_is_still_a_label() -> None:
    assert instance_label(" \x00\u200b ") == "chatsecure"


@given(st.text(max_size=200))
def test_every_instance_label_is_valid_for_zeroconf_even_after_a_rename(name: str) -> None:
    label = instance_label(name)
    assert label
    service_type_name(instance_name(label))
    service_type_name(instance_name(label + "-999"))
    assert instance_label_of(instance_name(label)) == label


def test_zeroconf_refuses_the_labels_instance_label_avoids() -> None:
    with pytest.raises(BadTypeInNameException):
        service_type_name(instance_name("x" * 64))


def test_instance_label_of_a_foreign_name_is_the_name() -> None:
    assert instance_label_of("printer._ipp._tcp.local.") == "printer._ipp._tcp.local."
    assert instance_label_of("Chat._CHATSECURE._tcp.local.") == "Chat"


def test_renamed_carries_zeroconfs_suffix_over_to_the_friendly_name() -> None:
    assert renamed("chat on pc1", "chat on pc1", "chat on pc1-2") == "chat on pc1-2"
    assert renamed("a.b", "a-b", "a-b-3") == "a.b-3"
    assert renamed("same", "same", "same") == "same"
    assert renamed("x", "x", "other") == "other"


def test_host_name_is_a_single_ascii_label_in_local() -> None:
    name = host_name("Mäx's PC.example.org", "a1b2c3")
    assert name == "chatsecure-M-x-s-PC-a1b2c3.local."
    assert len(name.split(".")[0]) <= MAX_LABEL
    assert host_name("", "ff") == "chatsecure-host-ff.local."


# --- TXT --------------------------------------------------------------------------------


def test_txt_has_version_fingerprint_and_name() -> None:
    assert encode_txt("chat on pc1", FP) == {
        "v": str(PROTOCOL_VERSION),
        "fp": FP,
        "name": "chat on pc1",
    }


def _wire_txt(properties: dict[str, str]) -> dict[bytes, bytes | None]:
    """The TXT record as zeroconf puts it on the wire and parses it back."""
    sent = ServiceInfo(SERVICE_TYPE, instance_name("x"), properties=properties)
    received = ServiceInfo(SERVICE_TYPE, instance_name("x"), properties=sent.text)
    return received.properties


@given(
    name=st.text(st.characters(blacklist_categories=("Cc", "Cf", "Zl", "Zp", "Cs")), max_size=80),
    fp=digests,
    version=st.integers(min_value=0, max_value=999_999),
)
def test_txt_round_trips_through_zeroconfs_wire_format(name: str, fp: str, version: int) -> None:
    properties = encode_txt(name, fp, version)
    txt = decode_txt(_wire_txt(properties))
    assert txt.fingerprint == fp
    assert txt.version == version
    assert txt.name == (" ".join(name.split()) or None)


@given(st.text(max_size=400))
def test_every_txt_string_fits_in_255_bytes(name: str) -> None:
    for key, value in encode_txt(name, FP).items():
        assert len(f"{key}={value}".encode()) <= records.MAX_TXT_STRING


@given(st.dictionaries(st.binary(max_size=20), st.none() | st.binary(max_size=300)))
def test_decoding_any_txt_never_raises(properties: dict[bytes, bytes | None]) -> None:
    txt = decode_txt(properties)
    assert txt.name is None or (0 < len(txt.name) <= records.MAX_NAME and txt.name.isprintable())


def test_txt_keys_are_case_insensitive() -> None:
    txt = decode_txt({b"V": b"1", b"FP": FP.encode(), b"Name": b"chat"})
    assert (txt.version, txt.fingerprint, txt.name) == (1, FP, "chat")


@pytest.mark.parametrize(
    "properties",
    [
        {},
        {b"v": None, b"fp": None, b"name": None},
        {b"v": b"one", b"fp": b"SHA256:short", b"name": b""},
        {b"v": b"-1", b"fp": b"\xff\xfe", b"name": b"\x00\x01"},
        {b"v": b"12345678901234567890", b"fp": b"MD5:abc"},
    ],
)
def test_malformed_txt_values_are_none(properties: dict[bytes, bytes | None]) -> None:
    txt = decode_txt(properties)
    assert (txt.version, txt.fingerprint, txt.name) == (None, None, None)


def test_fingerprint_is_normalized_to_the_printed_format() -> None:
    padded = FP.removeprefix("SHA256:") + "="
    assert decode_txt({b"fp": padded.encode()}).fingerprint == FP


def test_a_received_name_cannot_fake_a_line_break() -> None:
    txt = decode_txt({b"name": "evil\nserver\u202e\u2028x".encode()})
    assert txt.name == "evil server x"


# --- resolved servers -------------------------------------------------------------------


def test_server_from_records_orders_ipv4_first_and_drops_junk() -> None:
    found = server_from_records(
        "chat._chatsecure._tcp.local.",
        7467,
        {b"v": b"1", b"fp": FP.encode(), b"name": b"Chat Room"},
        ["fd00::1", "10.0.0.1", "nonsense", "10.0.0.1", "fe80::1%eth0"],
    )
    assert found == DiscoveredServer(
        key="chat._chatsecure._tcp.local.",
        name="Chat Room",
        addresses=("10.0.0.1", "fd00::1", "fe80::1%eth0"),
        port=7467,
        fingerprint=FP,
        version=1,
    )
    assert found.instance == "chat"


def test_server_without_txt_name_is_called_by_its_instance_label() -> None:
    found = server_from_records("room 2._chatsecure._tcp.local.", 1, {}, ["10.0.0.1"])
    assert (found.name, found.fingerprint, found.version) == ("room 2", None, None)


def test_server_json_has_the_fields_scripts_use() -> None:
    data = json.loads(json.dumps(server(addresses=("10.0.0.5", "fd00::5")).to_json()))
    assert data == {
        "key": "chat._chatsecure._tcp.local.",
        "name": "chat",
        "instance": "chat",
        "addresses": ["10.0.0.5", "fd00::5"],
        "port": 7467,
        "fingerprint": FP,
        "version": 1,
    }


def test_events_as_json_lines() -> None:
    found = server()
    assert event_json(ServerAdded(found)) == {"event": "added", **found.to_json()}
    assert event_json(ServerUpdated(found)) == {"event": "updated", **found.to_json()}
    assert event_json(ServerRemoved(found.key)) == {"event": "removed", "key": found.key}


def test_describe_server_shows_addresses_with_port_and_how_to_pick_a_renamed_one() -> None:
    text = describe_server(
        server("chat-2._chatsecure._tcp.local.", "chat", addresses=("10.0.0.5", "fd00::5"))
    )
    assert "'chat' at 10.0.0.5:7467, [fd00::5]:7467" in text
    assert f"fingerprint {FP}, protocol v1" in text
    assert "chatsecure connect --discovered 'chat-2'" in text
    assert "--discovered" not in describe_server(server())


# --- picking ----------------------------------------------------------------------------


def test_match_prefers_an_exact_instance_over_shared_friendly_names() -> None:
    first = server("Chat._chatsecure._tcp.local.", "chat")
    second = server("chat-2._chatsecure._tcp.local.", "chat")
    assert match_servers([first, second], "chat") == [first]
    assert match_servers([first, second], "CHAT-2") == [second]
    assert match_servers([first, second], second.key) == [second]
    assert match_servers([first, second], "nobody") == []


def test_match_by_friendly_name_can_be_ambiguous() -> None:
    first = server("a._chatsecure._tcp.local.", "Team chat")
    second = server("b._chatsecure._tcp.local.", "team chat")
    assert match_servers([first, second], "team chat") == [first, second]


def test_preferred_address_is_one_on_a_shared_network() -> None:
    found = server(addresses=("192.168.1.5", "10.0.0.5", "fd00::5"))
    here = [ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("fd00::/64")]
    assert preferred_addresses(found, here)[0] == "10.0.0.5"
    assert preferred_addresses(found, [ipaddress.ip_network("fd00::/64")])[0] == "fd00::5"
    assert preferred_addresses(found, [])[0] == "192.168.1.5"


HERE = [ipaddress.ip_network("10.0.0.0/24"), ipaddress.ip_network("fd00::/64")]
"""The networks of the machine that connects, in the tests below."""


@pytest.mark.parametrize(
    ("addresses", "chosen"),
    [
        # on our network first, IPv4 before IPv6 among those, whatever order they came in
        (("fd00::5", "fe80::5%eth0", "10.0.0.5"), "10.0.0.5"),
        (("192.0.2.5", "fe80::5%eth0", "fd00::5"), "fd00::5"),
        # then link-local with its interface, before an address off our networks
        (("192.0.2.5", "2001:db8::5", "fe80::5%eth0"), "fe80::5%eth0"),
        (("fe80::5", "192.0.2.5"), "192.0.2.5"),  # link-local without an interface: never
        (("fe80::5", "fe80::6%3"), "fe80::6%3"),
        (("2001:db8::5", "192.0.2.5"), "192.0.2.5"),
    ],
)
def test_preferred_address_order(addresses: tuple[str, ...], chosen: str) -> None:
    assert preferred_addresses(server(addresses=addresses), HERE)[0] == chosen


def test_only_unscoped_link_local_addresses_cannot_be_connected_to() -> None:
    with pytest.raises(ConfigError, match="no address this machine can connect to"):
        preferred_addresses(server(name="far", addresses=("fe80::5", "fe80::6")), HERE)[0]


def test_address_rank() -> None:
    assert [address_rank(a, HERE) for a in ("10.0.0.9", "fd00::9", "fe80::9%eth1")] == [0, 0, 1]
    assert [address_rank(a, HERE) for a in ("192.0.2.9", "2001:db8::9", "169.254.0.9")] == [2] * 3
    assert [address_rank(a, HERE) for a in ("fe80::9", "fe80::9%", "not an ip")] == [None] * 3


addresses_here = st.lists(
    st.sampled_from(
        ["10.0.0.5", "192.0.2.5", "fd00::5", "2001:db8::5", "fe80::5", "fe80::6%eth0", "::1"]
    ),
    min_size=1,
)


@given(addresses_here)
def test_preferred_address_is_a_best_ranked_one_and_never_unscoped(addresses: list[str]) -> None:
    ranks = [r for a in addresses if (r := address_rank(a, HERE)) is not None]
    try:
        chosen = preferred_addresses(server(addresses=tuple(addresses)), HERE)[0]
    except ConfigError:
        assert ranks == []
        return
    assert chosen in addresses
    assert chosen != "fe80::5"
    assert address_rank(chosen, HERE) == min(ranks)


# --- a resolved address set -------------------------------------------------------------


@pytest.mark.parametrize(
    ("addresses", "denied", "settled"),
    [
        (("10.0.0.5", "fd00::5"), (), True),
        (("10.0.0.5", "fe80::5%2"), (), True),
        (("10.0.0.5",), (), False),  # the AAAA answer may still be on its way
        (("fd00::5",), (), False),  # ... or the A answer
        (("10.0.0.5",), (6,), True),  # the server said it has no IPv6 address (NSEC)
        (("fd00::5",), (4,), True),
        (("10.0.0.5", "fe80::5"), (), False),  # its interface comes with the IPv6 copy
        (("10.0.0.5", "fd00::5", "fe80::5"), (), False),
        ((), (4, 6), True),
    ],
)
def test_addresses_settled(
    addresses: tuple[str, ...], denied: tuple[int, ...], settled: bool
) -> None:
    assert addresses_settled(addresses, denied) is settled


def test_connectable_addresses_drop_link_local_without_interface() -> None:
    given_ = ["fe80::1", "fd00::1", "fe80::2%eth0", "10.0.0.1", "169.254.0.1", "bogus"]
    assert connectable_addresses(given_) == ("10.0.0.1", "169.254.0.1", "fd00::1", "fe80::2%eth0")


def test_a_resolved_server_never_carries_an_address_without_its_interface() -> None:
    found = server_from_records(
        "chat._chatsecure._tcp.local.", 7467, {}, ["fe80::1", "fe80::2%3", "10.0.0.1"]
    )
    assert found.addresses == ("10.0.0.1", "fe80::2%3")


# --- what to advertise ------------------------------------------------------------------

LOCAL = ["127.0.0.1", "10.0.0.5", "::1", "fd00::5", "192.168.1.5", "fe80::1"]


def test_wildcards_advertise_every_address_but_loopback_ipv4_first() -> None:
    both = ["0.0.0.0", "::"]  # a dual-stack socket
    assert advertised_addresses(both, LOCAL) == ["10.0.0.5", "192.168.1.5", "fd00::5"]


def test_ipv6_wildcard_advertises_ipv6_only() -> None:
    assert advertised_addresses(["::"], LOCAL) == ["fd00::5"]


def test_ipv4_wildcard_advertises_ipv4_only() -> None:
    assert advertised_addresses(["0.0.0.0"], LOCAL) == ["10.0.0.5", "192.168.1.5"]


def test_a_specific_address_is_advertised_alone() -> None:
    assert advertised_addresses(["192.168.1.5"], LOCAL) == ["192.168.1.5"]


def test_loopback_is_never_advertised_and_the_reason_says_why() -> None:
    assert advertised_addresses(["0.0.0.0", "::"], ["127.0.0.1", "::1"]) == []
    assert advertised_addresses(["127.0.0.1"], LOCAL) == []
    assert advertised_addresses(["127.0.0.1", "::1"], LOCAL) == []
    assert records.unadvertised_reason(["127.0.0.1"]) == "listening on 127.0.0.1, loopback only"
    assert records.unadvertised_reason(["::"]) == "no address other than loopback"
    assert records.without_loopback(["127.0.0.1", "10.0.0.5", "::1", "fd00::5"]) == [
        "10.0.0.5",
        "fd00::5",
    ]


def test_link_local_is_advertised_only_when_nothing_else_is_left() -> None:
    alone = ["127.0.0.1", "::1", "fe80::5%eth0", "169.254.0.5"]
    both = ["0.0.0.0", "::"]  # (a dual-stack socket)
    assert advertised_addresses(both, alone) == ["169.254.0.5", "fe80::5"]
    assert advertised_addresses(["::"], alone) == ["fe80::5"]
    assert advertised_addresses(["0.0.0.0"], alone[:2] + alone[2:3]) == []
    assert advertised_addresses(both, [*LOCAL, *alone]) == advertised_addresses(both, LOCAL)


def test_nothing_to_advertise_for_names_or_nothing() -> None:
    assert advertised_addresses(["localhost"], LOCAL) == []
    assert advertised_addresses([], LOCAL) == []


def test_order_addresses_keeps_family_order_and_drops_duplicates() -> None:
    assert order_addresses(["fd00::2", "10.0.0.2", "fd00::1", "10.0.0.1", "10.0.0.2"]) == (
        "10.0.0.2",
        "10.0.0.1",
        "fd00::2",
        "fd00::1",
    )


# --- cluster ----------------------------------------------------------------------------


def test_cluster_id_is_the_same_for_every_node_and_hides_the_password() -> None:
    plain = records.cluster_id("redis://redis.lab:6379/0", "lab 3")
    assert plain == records.cluster_id("rediss://:s3cret@REDIS.lab/0", "lab 3")
    assert plain == records.cluster_id("redis://user:pw@redis.lab:6379", "lab 3")
    assert len(plain) == records.CLUSTER_ID_LENGTH
    assert int(plain, 16) >= 0
    assert "s3cret" not in json.dumps(encode_txt("lab 3", FP, cluster=plain))
    others = {
        records.cluster_id("redis://redis.lab:6379/1", "lab 3"),  # another db
        records.cluster_id("redis://redis.lab:6380/0", "lab 3"),  # another Redis
        records.cluster_id("redis://redis.lab:6379/0", "lab 4"),  # another room
        records.cluster_id("redis://10.0.0.7:6379/0", "lab 3"),  # named otherwise
    }
    assert plain not in others
    assert len(others) == 4


def test_cluster_txt_round_trips_and_a_bad_one_is_dropped() -> None:
    cluster = records.cluster_id("redis://127.0.0.1:6379/0", "room")
    txt = encode_txt("room", FP, cluster=cluster)
    assert txt[records.TXT_CLUSTER] == cluster
    properties = {k.encode(): v.encode() for k, v in txt.items()}
    assert decode_txt(properties).cluster == cluster
    server = server_from_records(instance_name("room-2"), 7467, properties, ["10.0.0.5"])
    assert server.cluster == cluster
    assert server.to_json()["cluster"] == cluster
    assert records.TXT_CLUSTER not in encode_txt("room", FP)
    assert "cluster" not in server_from_records("k", 1, {}, ["10.0.0.5"]).to_json()
    for bad in (b"", b"xyz", b"0" * 15, b"g" * 16, b"0" * 17, b"\xff" * 16):
        assert decode_txt({b"cluster": bad}).cluster is None
    assert decode_txt({b"CLUSTER": cluster.upper().encode()}).cluster == cluster


@given(st.dictionaries(st.binary(max_size=12), st.one_of(st.none(), st.binary(max_size=40))))
def test_decoding_any_txt_with_a_cluster_key_never_raises(
    properties: dict[bytes, bytes | None],
) -> None:
    cluster = decode_txt({**properties, b"cluster": properties.get(b"x") or b""}).cluster
    assert cluster is None or len(cluster) == records.CLUSTER_ID_LENGTH


class FailingOnce(Advertiser):
    """An advertiser whose first look fails as a bug would; later ones find nothing to
    advertise (so no zeroconf is opened: this runs outside a namespace)."""

    looks = 0

    def _wanted(self) -> Any:
        self.looks += 1
        if self.looks == 1:
            raise RuntimeError("a bug")
        raise OSError("nothing to advertise here")


def test_an_advertiser_that_fails_says_so_and_looks_again(caplog: pytest.LogCaptureFixture) -> None:
    advertiser = FailingOnce("lab", 7467, "SHA256:x", recheck=0.05)
    with caplog.at_level(logging.WARNING, "chatsecure.discovery.mdns"), advertiser:
        deadline = time.monotonic() + 5
        while advertiser.looks < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert advertiser.looks >= 3  # still looking after the failure
    assert "advertising over mDNS failed; trying again in 0 s" in caplog.text
    assert "not advertising over mDNS (nothing to advertise here)" in caplog.text
