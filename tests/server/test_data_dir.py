"""Where the server keeps its certificate and history: ``certs/`` or ``--data-dir``, said aloud."""

from __future__ import annotations

import socket
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from chatsecure.cli import build_parser
from chatsecure.errors import ConfigError
from chatsecure.settings import HISTORY_DB, server_config
from chatsecure.testing import joined
from chatsecure.tls import certs
from tests.helpers import CHATSECURE, ServerProcess
from tests.redis_server import free_port

SERVER = [*CHATSECURE, "server"]


def everything_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


def printed(server: ServerProcess) -> list[str]:
    """Every line the server printed on stdout, up to its exit."""
    return "\n".join(server.stdout).splitlines()


def stored_texts(db: Path) -> list[str]:
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        return [text for (text,) in conn.execute("SELECT text FROM lines ORDER BY seq")]
    finally:
        conn.close()


def start_failing(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``chatsecure server`` on 127.0.0.1 with ``args``, run to its end (it cannot start)."""
    return subprocess.run(
        [*SERVER, "--host", "127.0.0.1", "--no-discovery", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("data_dir", [False, True], ids=["default-certs", "data-dir"])
def test_port_in_use_exits_1_and_makes_nothing(tmp_path: Path, data_dir: bool) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    extra = ["--data-dir", str(tmp_path / "cwd" / "state")] if data_dir else []
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = start_failing(cwd, "--port", str(port), *extra)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(
        "chatsecure: another program (perhaps another chatsecure server) is already using "
        f"port {port} on 127.0.0.1"
    ), result.stderr
    assert "Traceback" not in result.stderr
    assert everything_under(cwd) == []
    assert "generated" not in result.stderr


def test_default_folder_is_certs_in_the_working_directory_printed_absolute(
    tmp_path: Path,
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    server = ServerProcess(SERVER, cwd=cwd)
    try:
        code, log = server.stop()
    finally:
        server.kill()
    assert code == 0, log
    cert = cwd / "certs" / certs.CERT_NAME
    assert f"certificate: {cert}" in printed(server)
    assert f"history: {cwd / 'certs' / HISTORY_DB}" in printed(server)
    assert server.fingerprint == certs.cert_fingerprint(cert)


def test_history_0_says_so_and_makes_no_file(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    server = ServerProcess([*SERVER, "--history", "0"], cwd=cwd)
    try:
        with joined("127.0.0.1", server.port, "alice") as (alice,):
            alice.send({"type": "msg", "text": "not kept"})
        code, log = server.stop()
    finally:
        server.kill()
    assert code == 0, log
    assert "history: off (--history 0): nothing said is stored" in printed(server)
    assert [p.name for p in everything_under(cwd / "certs")] == [certs.CERT_NAME, certs.KEY_NAME]


def test_data_dir_holds_certificate_and_history_and_keeps_the_fingerprint(
    tmp_path: Path,
) -> None:
    data = tmp_path / "var" / "chatsecure"
    first_cwd, second_cwd = tmp_path / "first", tmp_path / "second"
    first_cwd.mkdir()
    second_cwd.mkdir()
    first = ServerProcess([*SERVER, "--data-dir", str(data)], cwd=first_cwd)
    try:
        with joined("127.0.0.1", first.port, "alice", "bob") as (alice, bob):
            alice.send({"type": "msg", "text": "kept in the data folder"})
            bob.expect("msg")
        code, first_log = first.stop()
    finally:
        first.kill()
    assert code == 0, first_log

    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE(data.parent.stat().st_mode) == 0o700  # each folder it made
    assert stat.S_IMODE((data / certs.KEY_NAME).stat().st_mode) == 0o600
    assert first.fingerprint == certs.cert_fingerprint(data / certs.CERT_NAME)
    assert stored_texts(data / HISTORY_DB) == ["kept in the data folder"]
    assert everything_under(first_cwd) == []
    assert f"certificate: {data / certs.CERT_NAME}" in printed(first)
    assert f"history: {data / HISTORY_DB}" in printed(first)
    warning = (
        f"WARNING chatsecure.server: generated a new certificate with fingerprint "
        f"{first.fingerprint} at {data / certs.CERT_NAME}"
    )
    assert warning in first_log
    assert "if this server had one before (started from another folder?), clients that" in first_log

    second = ServerProcess([*SERVER, "--data-dir", str(data)], cwd=second_cwd)
    try:
        code, second_log = second.stop()
    finally:
        second.kill()
    assert code == 0, second_log
    assert second.fingerprint == first.fingerprint
    assert "generated" not in second_log
    assert f"certificate: {data / certs.CERT_NAME}" in printed(second)
    assert everything_under(second_cwd) == []


def test_data_dir_from_the_config_file_is_relative_to_that_file(tmp_path: Path) -> None:
    etc, cwd = tmp_path / "etc", tmp_path / "cwd"
    etc.mkdir()
    cwd.mkdir()
    (etc / "server.toml").write_text('[server]\ndata-dir = "state"\n')
    server = ServerProcess([*SERVER, "--config", str(etc / "server.toml")], cwd=cwd)
    try:
        code, log = server.stop()
    finally:
        server.kill()
    assert code == 0, log
    assert server.fingerprint == certs.cert_fingerprint(etc / "state" / certs.CERT_NAME)
    assert (etc / "state" / HISTORY_DB).is_file()
    assert everything_under(cwd) == []


def test_data_dir_sets_certificate_key_and_database() -> None:
    config = server_config(build_parser().parse_args(["server", "--data-dir", "/srv/chat"]))
    assert config.cert == Path("/srv/chat") / certs.CERT_NAME
    assert config.key == Path("/srv/chat") / certs.KEY_NAME
    assert config.db_path == Path("/srv/chat") / HISTORY_DB


def test_explicit_cert_key_and_db_win_over_data_dir() -> None:
    argv = ["--data-dir", "/srv/chat", "--cert", "/etc/c.crt", "--key", "/etc/c.key"]
    config = server_config(build_parser().parse_args(["server", *argv]))
    assert (config.cert, config.key) == (Path("/etc/c.crt"), Path("/etc/c.key"))
    assert config.db_path == Path("/srv/chat") / HISTORY_DB
    with_db = server_config(build_parser().parse_args(["server", *argv, "--db", "/var/h.db"]))
    assert with_db.db_path == Path("/var/h.db")


def test_data_dir_on_the_command_line_wins_over_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "server.toml").write_text('data_dir = "from-file"\n')
    argv = ["server", "--config", str(tmp_path / "server.toml"), "--data-dir", "/srv/chat"]
    config = server_config(build_parser().parse_args(argv))
    assert config.cert == Path("/srv/chat") / certs.CERT_NAME
    from_file = server_config(
        build_parser().parse_args(["server", "--config", str(tmp_path / "server.toml")])
    )
    assert from_file.cert == tmp_path / "from-file" / certs.CERT_NAME


def test_a_certificate_alone_takes_the_key_beside_it() -> None:
    config = server_config(build_parser().parse_args(["server", "--cert", "/etc/chat/lab.crt"]))
    assert (config.cert, config.key) == (Path("/etc/chat/lab.crt"), Path("/etc/chat/lab.key"))
    assert not config.make_cert  # a mistyped path is not a new identity
    argv = ["server", "--data-dir", "/srv/chat", "--cert", "/etc/chat/lab.crt"]
    config = server_config(build_parser().parse_args(argv))
    assert (config.cert, config.key) == (Path("/etc/chat/lab.crt"), Path("/etc/chat/lab.key"))
    assert config.db_path == Path("/srv/chat") / HISTORY_DB


def combined_pem_with_a_stale_key_beside(folder: Path) -> Path:
    """``folder/lab.pem`` holding a certificate and its key, and beside it ``lab.key``, the key
    of another certificate (left over from an earlier pair). Both mode 0600."""
    pair, old = certs.generate(folder / "pair"), certs.generate(folder / "old")
    pem, stale = folder / "lab.pem", folder / "lab.key"
    pem.write_bytes(pair.cert.read_bytes() + pair.key.read_bytes())
    pem.chmod(0o600)
    old.key.rename(stale)
    return pem


def test_a_certificate_alone_that_holds_its_key_takes_it_not_the_stale_key_beside_it(
    tmp_path: Path,
) -> None:
    pem = combined_pem_with_a_stale_key_beside(tmp_path)
    config = server_config(build_parser().parse_args(["server", "--cert", str(pem)]))
    assert (config.cert, config.key) == (pem, pem)
    assert not config.make_cert
    argv = ["server", "--cert", str(pem), "--key", str(tmp_path / "lab.key")]
    given = server_config(build_parser().parse_args(argv))
    assert given.key == tmp_path / "lab.key"  # --key wins, as always

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    server = ServerProcess([*SERVER, "--cert", str(pem)], cwd=cwd)
    try:
        with joined("127.0.0.1", server.port, "alice") as (alice,):
            presented = alice.sock.getpeercert(binary_form=True)
        code, log = server.stop()
    finally:
        server.kill()
    assert code == 0, log
    assert presented is not None
    assert certs.fingerprint(presented) == server.fingerprint == certs.cert_fingerprint(pem)
    assert "generated" not in log
    assert everything_under(cwd) == []
    assert not (tmp_path / certs.CERT_NAME).exists()  # nothing made beside it either


def test_a_mistyped_certificate_is_refused_not_made(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    typo = tmp_path / "typo" / "server.crt"
    result = start_failing(cwd, "--port", "0", "--cert", str(typo))
    assert result.returncode == 1
    assert result.stderr.startswith(f"chatsecure: {typo} does not exist (is the path right?)"), (
        result.stderr
    )
    assert everything_under(tmp_path) == [cwd]


def test_a_key_that_is_not_the_certificates_stops_the_start_before_anything_is_made(
    tmp_path: Path,
) -> None:
    certs.generate(tmp_path / "one")
    certs.generate(tmp_path / "two")
    cwd, state = tmp_path / "cwd", tmp_path / "state"
    cwd.mkdir()
    pair = [
        "--cert",
        str(tmp_path / "one" / "server.crt"),
        "--key",
        str(tmp_path / "two" / "server.key"),
    ]
    result = start_failing(cwd, "--port", "0", "--data-dir", str(state), *pair)
    assert result.returncode == 1
    assert "cannot load certificate" in result.stderr, result.stderr
    assert not state.exists()
    assert everything_under(cwd) == []


def test_a_certificate_without_its_key_names_the_key_it_looked_for(tmp_path: Path) -> None:
    certs.generate(tmp_path / "pair")
    (tmp_path / "pair" / certs.KEY_NAME).unlink()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = start_failing(cwd, "--port", "0", "--cert", str(tmp_path / "pair" / "server.crt"))
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"chatsecure: {tmp_path / 'pair' / 'server.crt'} exists but "
        f"{tmp_path / 'pair' / 'server.key'} does not: give the right one with --key, "
    ), result.stderr
    assert everything_under(cwd) == []


def test_a_start_refused_for_its_client_ca_or_cluster_makes_nothing(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = start_failing(cwd, "--port", "0", "--client-ca", "nosuch.pem")
    assert result.returncode == 1
    assert result.stderr.startswith("chatsecure: cannot load client CA nosuch.pem: "), result.stderr
    port = free_port()
    result = start_failing(cwd, "--port", "0", "--cluster", f"redis://127.0.0.1:{port}/0")
    assert result.returncode == 1
    assert f"cannot use the Redis at redis://127.0.0.1:{port}/0" in result.stderr, result.stderr
    assert everything_under(cwd) == []


def test_data_dir_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("in the way\n")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    blocked = ["--data-dir", str(tmp_path / "a-file" / "state")]
    result = start_failing(cwd, "--port", "0", *blocked)
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"chatsecure: cannot make the data folder {tmp_path / 'a-file' / 'state'}: "
    ), result.stderr
    assert everything_under(cwd) == []


def test_a_second_server_on_the_same_history_is_refused_at_its_start(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    first = ServerProcess(SERVER, cwd=cwd)
    try:
        second = start_failing(cwd, "--port", "0")
        assert second.returncode == 1, second.stderr
        assert second.stderr.startswith(
            f"chatsecure: certs/{HISTORY_DB} is in use by another chatsecure server; "
            "stop that one, or give each server its own --db"
        ), second.stderr
        assert "Traceback" not in second.stderr
        assert "listening" not in second.stdout
        with joined("127.0.0.1", first.port, "alice", "bob") as (alice, bob):
            alice.send({"type": "msg", "text": "the first goes on", "ref": "r1"})
            assert alice.expect("ack")["seq"] == 1
            assert bob.expect("msg")["text"] == "the first goes on"
        code, log = first.stop()
        assert code == 0, log
        again = ServerProcess(SERVER, cwd=cwd)  # once it has stopped, the file is free
        code, log = again.stop()
        assert code == 0, log
    finally:
        first.kill()
    assert stored_texts(cwd / "certs" / HISTORY_DB) == ["the first goes on"]


def test_a_home_folder_in_the_config_file_is_the_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "server.toml").write_text('data-dir = "~/chat"\n')
    config = server_config(
        build_parser().parse_args(["server", "--config", str(tmp_path / "server.toml")])
    )
    assert config.cert == tmp_path / "home" / "chat" / certs.CERT_NAME  # not ./~/chat
    (tmp_path / "server.toml").write_text('data-dir = "~no-such-user-here/chat"\n')
    with pytest.raises(ConfigError, match="cannot find the home folder"):
        server_config(
            build_parser().parse_args(["server", "--config", str(tmp_path / "server.toml")])
        )


@pytest.mark.parametrize("setting", ["port = true", "history = false", "msg-burst = true"])
def test_true_or_false_for_a_number_in_the_config_file_is_refused(
    tmp_path: Path, setting: str
) -> None:
    (tmp_path / "server.toml").write_text(setting + "\n")
    argv = ["server", "--config", str(tmp_path / "server.toml")]
    with pytest.raises(ConfigError, match=r"must be an integer, not (True|False)"):
        server_config(build_parser().parse_args(argv))
