"""Editing a field of the connect form takes away what it was blamed for, and nothing else."""

from __future__ import annotations

from chatsecure.client.core import Disconnected
from chatsecure.client.state import ChatModel, ConnectRequest, FormField, validate_form

T = 1_700_000_000.0
AUTH_FAILED = "the server refused: wrong or missing password (auth_failed)"


def refused_password() -> ChatModel:
    model = ChatModel()
    model.connecting(ConnectRequest("10.0.0.2", 7467, "alice", password="guess"))
    model.apply(Disconnected(AUTH_FAILED, error=True, code="auth_failed"), T)
    assert model.form_errors == {"password": "Wrong password: check it and try again."}
    assert model.notice is not None
    return model


def test_editing_the_password_clears_its_error_and_the_notice_about_it() -> None:
    model = refused_password()
    assert not model.edited("host")  # not what the server complained about
    assert not model.edited("nick")
    assert model.notice is not None
    assert model.edited("password")
    assert model.form_errors == {}
    assert model.notice is None
    assert not model.edited("password")  # nothing left to clear


def test_editing_one_field_keeps_the_errors_of_the_others() -> None:
    model = ChatModel()
    model.invalid(validate_form("", "99999", " ").errors)
    assert set(model.form_errors) == {"host", "port", "nick"}
    assert model.edited("port")
    assert set(model.form_errors) == {"host", "nick"}
    assert not model.edited("password")
    assert set(model.form_errors) == {"host", "nick"}


def test_a_failed_connection_is_forgotten_when_the_address_is_edited() -> None:
    address: tuple[FormField, ...] = ("host", "port")
    for field in address:
        model = ChatModel()
        model.connecting(ConnectRequest("10.0.0.2", 7467, "alice"))
        model.apply(Disconnected("connection refused", error=True), T)
        assert model.notice is not None
        assert not model.edited("nick")
        assert not model.edited("password")
        assert model.notice is not None
        assert model.edited(field)
        assert model.notice is None


def test_an_information_notice_is_not_taken_away_by_editing() -> None:
    model = ChatModel()
    model.connecting(ConnectRequest("10.0.0.2", 7467, "alice"))
    model.cancelled()
    fields: tuple[FormField, ...] = ("host", "port", "nick", "password")
    for field in fields:
        assert not model.edited(field)
    assert model.notice is not None
    assert model.notice.text == "Connection cancelled."
