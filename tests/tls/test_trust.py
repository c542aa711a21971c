"""Trust on first use: KnownServers (the pins) and TrustPolicy (the decisions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatsecure.errors import TrustError
from chatsecure.tls import certs
from chatsecure.tls.trust import (
    KnownServers,
    TrustPolicy,
    TrustQuestion,
    config_home,
    new_server_message,
    server_key,
)

OLD = certs.fingerprint(b"old certificate")
NEW = certs.fingerprint(b"new certificate")


@pytest.fixture
def store(chatsecure_home: Path) -> KnownServers:
    return KnownServers()


# --- the store --------------------------------------------------------------------------


def test_store_lives_in_chatsecure_home(chatsecure_home: Path) -> None:
    assert config_home() == chatsecure_home
    assert KnownServers().path == chatsecure_home / "known_servers"


def test_config_home_follows_xdg_without_chatsecure_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CHATSECURE_HOME")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_home() == tmp_path / "xdg" / "chatsecure"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config_home() == tmp_path / "home" / ".config" / "chatsecure"


def test_pin_check_and_remove(store: KnownServers) -> None:
    assert store.get("10.0.0.5", 7467) is None
    store.pin("10.0.0.5", 7467, OLD)
    assert store.get("10.0.0.5", 7467) == OLD
    assert store.get("10.0.0.5", 7468) is None, "the port is part of the name"
    assert store.remove("10.0.0.5", 7467)
    assert not store.remove("10.0.0.5", 7467)
    assert store.get("10.0.0.5", 7467) is None


def test_pins_survive_a_new_store_object_and_keep_the_others(store: KnownServers) -> None:
    store.pin("a.example", 1, OLD)
    store.pin("b.example", 2, NEW)
    store.pin("a.example", 1, NEW)  # re-pin
    again = KnownServers()
    assert again.get("a.example", 1) == NEW
    assert again.get("b.example", 2) == NEW
    lines = [line for line in store.path.read_text().splitlines() if not line.startswith("#")]
    assert lines == [f"a.example:1 {NEW}", f"b.example:2 {NEW}"]


def test_store_ignores_comments_and_junk_lines(store: KnownServers) -> None:
    store.path.parent.mkdir(parents=True)
    store.path.write_text(f"# a comment\n\njunk\nhost:1 {OLD} extra words\n#host:2 {NEW}\n")
    assert store.get("host", 1) == OLD
    assert store.get("host", 2) is None


def test_server_key_is_case_insensitive_and_brackets_ipv6() -> None:
    assert server_key("Chat.Example", 7467) == "chat.example:7467"
    assert server_key("::1", 7467) == "[::1]:7467"
    assert server_key("[FE80::1]", 1) == "[fe80::1]:1"


def test_one_address_spelt_two_ways_is_one_pin(store: KnownServers) -> None:
    assert server_key("0:0:0:0:0:0:0:1", 7467) == server_key("[::1]", 7467) == "[::1]:7467"
    assert server_key("FD77:0::0:1%eth0", 7) == "[fd77::1%eth0]:7"
    store.pin("0:0::1", 7467, OLD)
    assert store.get("::1", 7467) == OLD
    assert store.remove("[0::1]", 7467)


def test_a_pin_written_in_a_longer_spelling_still_guards_its_server(store: KnownServers) -> None:
    store.path.parent.mkdir(parents=True, exist_ok=True)
    store.path.write_text(f"[fd00::0005]:7467 {OLD}\nChat.Example:7 {OLD}\n", encoding="utf-8")
    assert store.get("fd00::5", 7467) == OLD
    assert store.get("chat.example", 7) == OLD
    question = TrustPolicy(store, accept_new=True).check("FD00:0::5", 7467, NEW)
    assert question is not None  # a changed certificate, not a new server to pin in silence
    assert question.pinned == OLD
    assert store.remove("fd00::5", 7467)


def test_store_file_is_replaced_whole(store: KnownServers) -> None:
    store.pin("host", 1, OLD)
    assert not list(store.path.parent.glob("*.tmp")), "no temporary file is left behind"


# --- the policy -------------------------------------------------------------------------


def test_first_use_pins_with_accept_new(store: KnownServers) -> None:
    policy = TrustPolicy(store, accept_new=True)
    policy.verify("host", 7467, OLD)
    assert store.get("host", 7467) == OLD


def test_pinned_match_passes_silently(store: KnownServers) -> None:
    store.pin("host", 7467, OLD)
    asked: list[TrustQuestion] = []

    def ask(question: TrustQuestion) -> bool:
        asked.append(question)
        return False

    TrustPolicy(store, ask=ask).verify("host", 7467, OLD)
    assert asked == []


def test_first_use_without_a_way_to_ask_is_refused(store: KnownServers) -> None:
    with pytest.raises(TrustError) as info:
        TrustPolicy(store).verify("host", 7467, OLD)
    message = str(info.value)
    assert OLD in message
    assert "--accept-new" in message
    assert "--fingerprint" in message
    assert store.get("host", 7467) is None
    assert not store.path.exists()


@pytest.mark.parametrize("answer", [True, False])
def test_first_use_asks_and_pins_only_on_yes(store: KnownServers, answer: bool) -> None:
    asked: list[TrustQuestion] = []

    def ask(question: TrustQuestion) -> bool:
        asked.append(question)
        return answer

    policy = TrustPolicy(store, ask=ask)
    if answer:
        policy.verify("host", 7467, OLD)
    else:
        with pytest.raises(TrustError):
            policy.verify("host", 7467, OLD)
    assert asked == [TrustQuestion("host", 7467, OLD)]
    assert not asked[0].changed
    assert store.get("host", 7467) == (OLD if answer else None)


def test_changed_certificate_is_refused_loudly(store: KnownServers) -> None:
    store.pin("host", 7467, OLD)
    with pytest.raises(TrustError) as info:
        TrustPolicy(store, accept_new=True).verify("host", 7467, NEW)
    message = str(info.value)
    assert "CHANGED" in message
    assert OLD in message
    assert NEW in message
    assert "chatsecure forget host:7467" in message
    assert str(store.path) in message
    assert store.get("host", 7467) == OLD, "the old pin stays"


def test_changed_certificate_question_says_what_was_pinned(store: KnownServers) -> None:
    store.pin("host", 7467, OLD)
    question = TrustPolicy(store).check("host", 7467, NEW)
    assert question == TrustQuestion("host", 7467, NEW, pinned=OLD)
    assert question.changed


def test_changed_certificate_is_replaced_only_if_the_user_says_so(store: KnownServers) -> None:
    store.pin("host", 7467, OLD)
    TrustPolicy(store, ask=lambda q: q.changed).verify("host", 7467, NEW)
    assert store.get("host", 7467) == NEW


def test_expected_fingerprint_is_the_only_one_accepted(store: KnownServers) -> None:
    policy = TrustPolicy(store, fingerprint=OLD)
    with pytest.raises(TrustError) as info:
        policy.verify("host", 7467, NEW)
    assert OLD in str(info.value)
    assert NEW in str(info.value)
    assert store.get("host", 7467) is None
    policy.verify("host", 7467, OLD)
    assert store.get("host", 7467) == OLD


def test_expected_fingerprint_replaces_an_old_pin_and_says_so(
    store: KnownServers, caplog: pytest.LogCaptureFixture
) -> None:
    """Passing the new fingerprint out of band is how a rotated certificate is accepted."""
    store.pin("host", 7467, OLD)
    TrustPolicy(store, fingerprint=NEW).verify("host", 7467, NEW)
    assert store.get("host", 7467) == NEW
    [said] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert said == f"host:7467 was pinned to {OLD}; --fingerprint replaces that pin"
    caplog.clear()
    TrustPolicy(store, fingerprint=NEW).verify("host", 7467, NEW)
    assert not caplog.records  # the same again: nothing to say


def test_advertised_mismatch_is_refused_even_when_pinned(store: KnownServers) -> None:
    store.pin("host", 7467, NEW)
    with pytest.raises(TrustError, match="advertised") as info:
        TrustPolicy(store, accept_new=True).verify("host", 7467, NEW, advertised=OLD)
    assert OLD in str(info.value)


def test_advertised_match_still_needs_trust(store: KnownServers) -> None:
    question = TrustPolicy(store).check("host", 7467, OLD, advertised=OLD)
    assert question == TrustQuestion("host", 7467, OLD, advertised=OLD)


FP_ROOM = "SHA256:" + "A" * 43
FP_OTHER = "SHA256:" + "B" * 43


def test_a_sibling_address_showing_the_rooms_pinned_certificate_is_pinned_without_asking(
    store: KnownServers,
) -> None:
    store.pin("10.0.0.1", 7467, FP_ROOM)
    policy = TrustPolicy(store)  # asks nobody, accepts nothing new
    assert policy.check("10.0.0.2", 7467, FP_ROOM, siblings=[("10.0.0.1", 7467)]) is None
    assert store.get("10.0.0.2", 7467) == FP_ROOM


def test_a_sibling_address_with_another_certificate_is_asked_about(store: KnownServers) -> None:
    store.pin("10.0.0.1", 7467, FP_ROOM)
    question = TrustPolicy(store).check("10.0.0.2", 7467, FP_OTHER, siblings=[("10.0.0.1", 7467)])
    assert question is not None
    assert (question.fingerprint, question.changed) == (FP_OTHER, False)
    assert store.get("10.0.0.2", 7467) is None


def test_an_address_pinned_to_another_certificate_stays_a_change_even_for_a_sibling(
    store: KnownServers,
) -> None:
    store.pin("10.0.0.1", 7467, FP_ROOM)
    store.pin("10.0.0.2", 7467, FP_OTHER)
    question = TrustPolicy(store).check("10.0.0.2", 7467, FP_ROOM, siblings=[("10.0.0.1", 7467)])
    assert question is not None
    assert question.changed
    assert store.get("10.0.0.2", 7467) == FP_OTHER


def test_without_siblings_a_certificate_known_elsewhere_is_still_a_new_server(
    store: KnownServers,
) -> None:
    store.pin("10.0.0.1", 7467, FP_ROOM)
    question = TrustPolicy(store).check("10.0.0.2", 7467, FP_ROOM)
    assert question is not None
    # ...but the question says where it is trusted already: most likely the same server.
    assert question.known_as == ("10.0.0.1:7467",)
    assert (
        "You already trust this certificate for 10.0.0.1:7467: the same server, by another name."
        in new_server_message(question)
    )
    assert TrustPolicy(store).check("10.0.0.3", 7467, OLD).known_as == ()  # type: ignore[union-attr]
