"""What ``chatsecure connect`` and ``chatsecure server`` say when they cannot do their job."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from tests.client.test_errors import closed_port, ipv6_loopback, plain_tcp_server
from tests.helpers import CHATSECURE, ServerProcess, Terminal
from tests.netns import Lab, lab

__all__ = ["lab"]


def connect(target: str) -> str:
    """Run ``chatsecure connect TARGET`` to its end; return what it printed on stderr."""
    result = Terminal.run_cli("connect", target, "--nick", "bob", "--accept-new")
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    return result.stderr


def test_a_closed_port_is_refused_naming_the_address_once() -> None:
    port = closed_port()
    assert connect(f"127.0.0.1:{port}") == (
        f"chatsecure: cannot connect to 127.0.0.1:{port}: "
        "connection refused: no chatsecure server is listening on that port\n"
    )


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_an_ipv6_address_is_shown_in_brackets() -> None:
    port = closed_port("::1")
    assert connect(f"[::1]:{port}").startswith(f"chatsecure: cannot connect to [::1]:{port}: ")


def test_a_server_that_is_not_tls_is_named_as_such() -> None:
    with plain_tcp_server() as port:
        assert connect(f"127.0.0.1:{port}") == (
            f"chatsecure: cannot connect to 127.0.0.1:{port}: "
            "that address answers, but not with TLS — is it a chatsecure server?\n"
        )


def test_a_port_in_use_names_the_other_program_and_the_address_once(cert_dir: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = Terminal.run_cli(
            "server", "--host", "127.0.0.1", "--port", str(port), "--no-discovery",
            "--cert", str(cert_dir / "server.crt"), "--key", str(cert_dir / "server.key"),
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == (
        f"chatsecure: another program (perhaps another chatsecure server) is already using "
        f"port {port} on 127.0.0.1: stop it, or choose another port with --port\n"
    )


def test_a_dotted_quad_with_leading_zeros_is_refused_before_anything_is_dialled(
    cert_dir: Path,
) -> None:
    """``127.000.000.001`` would reach 127.0.0.1, but ``192.168.001.010`` 192.168.1.8: no
    form of a number but the plain dotted quad is dialled."""
    cert = ["--cert", str(cert_dir / "server.crt"), "--key", str(cert_dir / "server.key")]
    server = ServerProcess([*CHATSECURE, "server", "-v", *cert])
    try:
        result = Terminal.run_cli(
            "connect", "--no-discovery", f"127.000.000.001:{server.port}",
            "--nick", "bob", "--accept-new",
        )  # fmt: skip
    finally:
        _, logged = server.stop()
    assert result.returncode == 1, result
    assert result.stderr == (
        "chatsecure: '127.000.000.001' is not an IPv4 address: give four numbers from 0 to "
        "255, like 192.168.1.10\n"
    )
    assert "connection from" not in logged, logged
    assert "bob" not in logged, logged


@pytest.mark.parametrize(
    ("first", "meant"),
    [("127.0.0.1", "127.0.0.1:7500"), ("::1", "[::1]:7500"), ("[::1]:7467", "[::1]:7500")],
)
def test_a_port_given_as_a_second_host_is_said_where_it_goes(first: str, meant: str) -> None:
    result = Terminal.run_cli("connect", first, "7500", "--nick", "bob", "--accept-new")
    assert result.returncode == 1, result
    assert result.stderr == (
        f"chatsecure: '7500' is not a host: a port goes after its host, {meant} (or --port 7500)\n"
    )


def test_port_flag_is_the_port_of_a_host_given_without_one(cert_dir: Path) -> None:
    cert = ["--cert", str(cert_dir / "server.crt"), "--key", str(cert_dir / "server.key")]
    server = ServerProcess([*CHATSECURE, "server", *cert])
    try:
        result = Terminal.run_cli(
            "connect", "--no-discovery", "127.0.0.1", "--port", str(server.port),
            "--nick", "bob", "--accept-new",
        )  # fmt: skip
    finally:
        server.stop()
    assert result.returncode == 0, result
    assert result.stdout.startswith("connected to "), result
    assert server.fingerprint in result.stdout.splitlines()[0], "that server, on that port"


def test_a_server_refuses_a_blank_name(tmp_path: Path) -> None:
    result = Terminal.run_cli(
        "server", "--host", "127.0.0.1", "--name", "  ", "--port", "0", "--no-discovery",
        "--data-dir", str(tmp_path / "d"),
    )  # fmt: skip
    assert result.returncode == 1, result
    assert "name cannot be blank" in result.stderr, result.stderr
    assert not (tmp_path / "d").exists(), "nothing is made for a server that cannot start"


def lone_connect(lab: Lab, target: str) -> str:
    """``chatsecure connect`` in a namespace with nothing but loopback: nothing leaves it."""
    alone = lab.host("alone")
    result = alone.run(
        sys.executable, "-m", "chatsecure", "connect", target, "--nick", "bob", "--accept-new",
        check=False,
    )  # fmt: skip
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    return result.stderr


# (In a namespace of its own: were the check ever gone, the resolver would ask the network's
# name server about these.)
@pytest.mark.netns
def test_a_host_with_a_space_is_refused_before_anything_is_looked_up(lab: Lab) -> None:
    assert lone_connect(lab, "127.0.0.1 :7467") == (
        "chatsecure: '127.0.0.1 ' has a space in it: no host name or address has one\n"
    )


@pytest.mark.netns
@pytest.mark.parametrize(
    ("host", "said"),
    [("127.0.0.300", "'127.0.0.300' is not an IPv4 address"), ("127.0.0.1 ", "has a space")],
)
def test_a_server_refuses_a_mistyped_address(
    lab: Lab, tmp_path: Path, host: str, said: str
) -> None:
    result = lab.host("alone").run(
        sys.executable, "-m", "chatsecure", "server", "--host", host, "--port", "0",
        "--no-discovery", "--data-dir", str(tmp_path / "d"),
        check=False,
    )  # fmt: skip
    assert result.returncode == 1, result
    assert said in result.stderr, result.stderr
    assert not (tmp_path / "d").exists(), "nothing is made for a server that cannot start"


@pytest.mark.netns
@pytest.mark.parametrize("target", ["192.0.2.77:21002", "[2001:db8::77]:21002"])
def test_an_unreachable_address_is_said_so_with_the_address(lab: Lab, target: str) -> None:
    assert lone_connect(lab, target) == (
        f"chatsecure: cannot connect to {target}: "
        "the address is unreachable (network is unreachable): check it\n"
    )


@pytest.mark.netns
def test_a_host_name_that_cannot_be_looked_up_is_repeated(lab: Lab) -> None:
    said = lone_connect(lab, "chat.invalid:7467")
    assert said.startswith("chatsecure: cannot connect to chat.invalid:7467: "), said
    assert "Errno" not in said


@pytest.mark.netns
@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("[fe80::1]:17470", "the link-local address fe80::1 needs its network interface, "
         "like fe80::1%eth0"),
        ("[fe80::1%nosuch]:17470", "there is no network interface 'nosuch' on this machine "
         "(fe80::1%nosuch)"),
    ],
)  # fmt: skip
def test_a_link_local_address_without_a_usable_interface_is_said_so(
    lab: Lab, target: str, says: str
) -> None:
    assert lone_connect(lab, target) == f"chatsecure: {says}\n"


@pytest.mark.netns
def test_an_ipv6_address_ending_in_a_port_is_explained_when_it_fails(lab: Lab) -> None:
    assert lone_connect(lab, "fd77::1:7468") == (
        "chatsecure: cannot connect to [fd77::1:7468]:7467: the address is unreachable "
        "(network is unreachable): check it (to give a port with an IPv6 address, write "
        "[fd77::1]:7468)\n"
    )
