"""What the desktop client does, without a screen: the public names, in one place.

Everything the Tk front end shows or decides that can be tested headless lives in the modules
named below; the Tk module only lays out widgets and wires them to these. No tkinter here.

- ``form``: the connect form's validation, the options of ``chatsecure gui``, the nickname
  remembered between runs;
- ``transcript``: transcript lines and the room's user list;
- ``model``: the connect/chat state machine, fed client events;
- ``trust_dialog``: the text of the trust dialogs, and the bridge that lets the network
  thread ask the Tk thread a trust question;
- ``servers``: the list of servers discovery found;
- ``controller``: the ``Controller`` that owns the model and the ``ChatClient``;
- ``attention``: the unread count in the title and the urgency of a line naming the user;
- ``doorbell``: the pipe that wakes the window when the network thread has news for it.
"""

from __future__ import annotations

from chatsecure.client.attention import Attention
from chatsecure.client.controller import EVENTS_PER_TICK, Controller, Update
from chatsecure.client.core import SHORT_FINGERPRINT, short_fingerprint
from chatsecure.client.doorbell import Doorbell, RingingQueue
from chatsecure.client.form import (
    MAX_PASSWORD,
    NICK_FILE,
    ConnectRequest,
    FormField,
    FormResult,
    GuiOptions,
    remember_nick,
    remembered_nick,
    validate_form,
)
from chatsecure.client.model import ChatModel, Notice, Outgoing, Phase, gap_text
from chatsecure.client.servers import IPNetwork, ServerList, ServerRow
from chatsecure.client.transcript import (
    LEAVE_REASONS,
    MAX_TRANSCRIPT_LINES,
    Line,
    LineKind,
    Roster,
    RosterRow,
    chat_line,
    notice,
)
from chatsecure.client.trust_dialog import (
    TRUST_ANSWER_TIMEOUT,
    PendingQuestion,
    TrustBridge,
    TrustPrompt,
    trust_prompt,
)
from chatsecure.tls.trust import host_port

__all__ = [
    "EVENTS_PER_TICK",
    "LEAVE_REASONS",
    "MAX_PASSWORD",
    "MAX_TRANSCRIPT_LINES",
    "NICK_FILE",
    "SHORT_FINGERPRINT",
    "TRUST_ANSWER_TIMEOUT",
    "Attention",
    "ChatModel",
    "ConnectRequest",
    "Controller",
    "Doorbell",
    "FormField",
    "FormResult",
    "GuiOptions",
    "IPNetwork",
    "Line",
    "LineKind",
    "Notice",
    "Outgoing",
    "PendingQuestion",
    "Phase",
    "RingingQueue",
    "Roster",
    "RosterRow",
    "ServerList",
    "ServerRow",
    "TrustBridge",
    "TrustPrompt",
    "Update",
    "chat_line",
    "gap_text",
    "host_port",
    "notice",
    "remember_nick",
    "remembered_nick",
    "short_fingerprint",
    "trust_prompt",
    "validate_form",
]
