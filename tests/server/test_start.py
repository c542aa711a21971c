"""Starting a server: what cannot work is refused with a message that names the culprit."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

import pytest

from chatsecure.cli import build_parser
from chatsecure.errors import ConfigError
from chatsecure.server import listen_sockets, serve
from chatsecure.testing import server_config
from tests.helpers import CHATSECURE


def blocked_cert_dir(tmp_path: Path) -> Path:
    """A certificate folder that cannot be made: a plain file is in the way (even for root)."""
    (tmp_path / "not-a-folder").write_text("a file\n")
    return tmp_path / "not-a-folder" / "certs"


def test_unusable_certificate_folder_is_named_not_blamed_on_the_port(tmp_path: Path) -> None:
    config = server_config(blocked_cert_dir(tmp_path))
    with pytest.raises(ConfigError) as info:
        asyncio.run(serve(config))
    message = str(info.value)
    assert str(tmp_path / "not-a-folder" / "certs") in message
    assert "Not a directory" in message
    assert "listen" not in message


def test_unusable_certificate_folder_stops_the_cli_with_exit_1(tmp_path: Path) -> None:
    cert_dir = blocked_cert_dir(tmp_path)
    files = ["--cert", str(cert_dir / "server.crt"), "--key", str(cert_dir / "server.key")]
    result = subprocess.run(
        [*CHATSECURE, "server", "--no-discovery", "--host", "127.0.0.1", "--port", "0", *files],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"chatsecure: cannot make the folder {cert_dir}:"), (
        result.stderr
    )


def test_port_in_use_is_refused_with_the_address(cert_dir: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"already using port {port} on 127\.0\.0\.1"):
            asyncio.run(serve(server_config(cert_dir, port=port)))


def test_bracketed_ipv6_host_is_taken_as_clients_take_it() -> None:
    (sock,) = listen_sockets("[::1]", 0)
    with sock:
        assert sock.getsockname()[0] == "::1"


@pytest.mark.parametrize("host", ["127.0.0.1:7000", "[::1]:7000", "localhost:7000", "[::1]:"])
def test_a_port_in_the_host_is_refused_with_where_it_goes(host: str) -> None:
    with pytest.raises(ConfigError, match=r"give the address alone, and the port with --port"):
        listen_sockets(host, 0)


def test_advertised_address_with_an_interface_is_refused_at_start(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["server", "--advertise-ip", "fe80::1%eth0"])
    assert info.value.code == 2
    assert "'fe80::1%eth0': an advertised address has no %interface; give fe80::1" in (
        capsys.readouterr().err
    )


def test_a_link_local_address_without_its_interface_is_refused_saying_so() -> None:
    with pytest.raises(ConfigError, match=r"a link-local address needs its interface"):
        listen_sockets("fe80::1", 0)  # (the bind fails: nothing is sent)
