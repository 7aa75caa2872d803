"""Session-level vocabulary of FIX 4.4 for ``gateway.fix_session``: the actions a session
returns, its configuration, SessionRejectReason, the header checks of an inbound message,
the resequencing of early messages and the messages that answer a ResendRequest.

Session rules (FIX 4.4 volume 2): the first message to an acceptor must be a Logon
(HeartBtInt 108 is the initiator's; the acceptor's answer carries the same value and 141=Y
when asked to reset); ``logon_check(logon) -> None | refusal text`` authenticates (a refusal
is a Logout with that text, then disconnect). Heartbeat after HeartBtInt of our silence;
TestRequest after 1.2x HeartBtInt of the counterparty's silence, disconnect after 2x.
A MsgSeqNum above the expected one is queued and a ResendRequest (7=expected, 16=0) sent;
queued messages are processed in order once the gap is filled (a ResendRequest or Logout
above the expected number is acted on at once, so two sides with gaps never wait on each
other). Too low without 43=Y: Logout
and disconnect; too low with 43=Y: ignored. A ResendRequest is answered by replaying the
stored application messages (43=Y, 122 = original 52, fresh 52) and gap-filling the rest with
SequenceReset 123=Y. SequenceReset without 123=Y resets the expected number whatever its
MsgSeqNum. Problems in a message carrying the expected number are answered with Reject 3
(45, 371, 372, 373, 58) and consume the number: required header tag missing (373=1), tag
without value (4), bad value or format (5, 6), CompID problem (9, then Logout), SendingTime
off by more than ``sending_time_tolerance_s`` or OrigSendingTime after SendingTime (10,
then Logout), unknown MsgType (11). Garbled input is dropped without consuming a number.
A missing MsgSeqNum means Logout and disconnect.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from gateway.fix_codec import (
    FIX44_MSG_TYPES,
    Field,
    FixMessage,
    encode,
    format_utc_timestamp,
    parse_utc_timestamp,
    possdup_parts,
)
from gateway.fix_store import SessionStore

NS = 1_000_000_000


class SessionRejectReason(enum.IntEnum):
    """SessionRejectReason (373) values of FIX 4.4."""

    INVALID_TAG_NUMBER = 0
    REQUIRED_TAG_MISSING = 1
    TAG_NOT_DEFINED_FOR_MESSAGE_TYPE = 2
    UNDEFINED_TAG = 3
    TAG_WITHOUT_VALUE = 4
    VALUE_INCORRECT = 5
    INCORRECT_DATA_FORMAT = 6
    COMPID_PROBLEM = 9
    SENDING_TIME_ACCURACY = 10
    INVALID_MSG_TYPE = 11
    TAG_APPEARS_MORE_THAN_ONCE = 13
    TAG_OUT_OF_ORDER = 14
    INCORRECT_NUM_IN_GROUP = 16
    OTHER = 99


class Role(enum.Enum):
    """Which side opened the connection."""

    ACCEPTOR = "acceptor"
    INITIATOR = "initiator"


class State(enum.Enum):
    """Where the session is in its life."""

    NEW = "new"
    AWAITING_LOGON = "awaiting logon"
    ACTIVE = "active"
    LOGOUT_SENT = "logout sent"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Send:
    """Write these bytes to the counterparty."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Deliver:
    """An application message for the application, in sequence order."""

    message: FixMessage


@dataclass(frozen=True, slots=True)
class Rejected:
    """The counterparty's session-level Reject (35=3) of one of our messages; its
    RefSeqNum (45) says which. Not an application message: never answer it."""

    message: FixMessage


@dataclass(frozen=True, slots=True)
class LoggedOn:
    """The logon handshake completed; ``message`` is the counterparty's Logon."""

    message: FixMessage


@dataclass(frozen=True, slots=True)
class LoggedOut:
    """A logged-on session ended."""

    reason: str


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the transport (after writing the Sends before this action)."""

    reason: str


Action = Send | Deliver | Rejected | LoggedOn | LoggedOut | Disconnect
LogonCheck = Callable[[FixMessage], str | None]
LogonFields = Callable[[str, int], Sequence[Field]]


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Tunables. ``heartbeat_s`` is what an initiator proposes; an acceptor accepts
    proposals within ``heartbeat_range_s``."""

    heartbeat_s: int = 30
    heartbeat_range_s: tuple[int, int] = (1, 300)
    sending_time_tolerance_s: int | None = 120
    logon_timeout_s: int = 10
    logout_timeout_s: int = 5
    reset_on_logon: bool = False
    max_queued: int = 10_000
    msg_types: frozenset[str] = FIX44_MSG_TYPES
    autocommit: bool = True


_EMPTY_VALUE = re.compile(rb"\x01([0-9]+)=\x01")


class HeaderProblem(NamedTuple):
    """Why a message is rejected: SessionRejectReason, RefTagID and Text."""

    reason: SessionRejectReason
    tag: int | None
    text: str


def header_problem(
    message: FixMessage, *, sender: str, target: str | None, now_ns: int, config: SessionConfig
) -> HeaderProblem | None:
    """The first thing wrong with an inbound message's header, MsgType or values
    (``sender``/``target`` are this side's CompID and the counterparty's)."""
    reasons = SessionRejectReason
    for tag in (49, 56, 52):
        if message.get(tag) is None:
            return HeaderProblem(reasons.REQUIRED_TAG_MISSING, tag, f"tag {tag} missing")
    if message.get(49) != target or message.get(56) != sender:
        return HeaderProblem(reasons.COMPID_PROBLEM, None, "CompID problem")
    sending_ns = parse_utc_timestamp(message.get(52) or "")
    if sending_ns is None:
        return HeaderProblem(reasons.INCORRECT_DATA_FORMAT, 52, "SendingTime not a UTCTimestamp")
    tolerance = config.sending_time_tolerance_s
    if tolerance is not None and abs(sending_ns - now_ns) > tolerance * NS:
        return HeaderProblem(reasons.SENDING_TIME_ACCURACY, 52, "SendingTime accuracy problem")
    if message.get(43) == "Y":
        original = message.get(122)
        if original is None:
            return HeaderProblem(reasons.REQUIRED_TAG_MISSING, 122, "tag 122 missing")
        original_ns = parse_utc_timestamp(original)
        if original_ns is None:
            return HeaderProblem(reasons.INCORRECT_DATA_FORMAT, 122,
                                 "OrigSendingTime not a UTCTimestamp")
        if original_ns > sending_ns:
            return HeaderProblem(reasons.SENDING_TIME_ACCURACY, 122,
                                 "OrigSendingTime after SendingTime")
    if message.msg_type not in config.msg_types:
        return HeaderProblem(reasons.INVALID_MSG_TYPE, 35, "invalid MsgType")
    empty = _EMPTY_VALUE.search(message.raw)
    if empty is not None:
        tag = int(empty.group(1))
        return HeaderProblem(reasons.TAG_WITHOUT_VALUE, tag, f"tag {tag} without a value")
    return None


def logon_problem(
    message: FixMessage, *, acceptor: bool, now_ns: int, config: SessionConfig
) -> str | None:
    """Why a Logon (or an acceptor's answer to ours) cannot be taken, besides CompIDs and
    authentication: MsgSeqNum, HeartBtInt (bounded for an acceptor), EncryptMethod 0 and
    SendingTime within the tolerance."""
    if message.get_int(34) is None:
        return "MsgSeqNum missing or not a number"
    heart_bt_int = message.get_int(108)
    low, high = config.heartbeat_range_s
    if heart_bt_int is None or (acceptor and not low <= heart_bt_int <= high):
        return f"HeartBtInt (108) must be {low} to {high}"
    if message.get(98) != "0":
        return "EncryptMethod (98) must be 0"
    sending_ns = parse_utc_timestamp(message.get(52) or "")
    tolerance = config.sending_time_tolerance_s
    if sending_ns is None or (tolerance is not None
                              and abs(sending_ns - now_ns) > tolerance * NS):
        return "SendingTime accuracy problem"
    return None


class Resequencer:
    """Inbound messages that came ahead of their turn, waiting for a gap to be resent.

    ``awaited`` is the highest number the outstanding ResendRequest (if any) should bring;
    ``answered`` holds the numbers of ResendRequests answered ahead of their turn."""

    def __init__(self) -> None:
        self._held: dict[int, FixMessage] = {}
        self.awaited: int | None = None
        self.answered: set[int] = set()

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, seq: int, message: FixMessage) -> bool:
        """Keep a message; True if no ResendRequest is outstanding, so one should go out."""
        self._held[seq] = message
        if self.awaited is None:
            return True
        self.awaited = max(self.awaited, seq)
        return False

    def take(self, seq: int) -> FixMessage | None:
        """The held message numbered ``seq``, if any."""
        return self._held.pop(seq, None)

    def settle(self, expected: int) -> int | None:
        """Forget what is now behind ``expected``. Returns the highest held number when a
        gap remains and no ResendRequest is outstanding (a new one is needed)."""
        for seq in [seq for seq in self._held if seq < expected]:
            del self._held[seq]
        self.answered = {seq for seq in self.answered if seq >= expected}
        if self.awaited is not None and expected > self.awaited:
            self.awaited = None
        return max(self._held) if self._held and self.awaited is None else None


def resend(
    store: SessionStore, begin: int, end: int, *, sender: str, target: str, now_ns: int
) -> list[bytes]:
    """The answer to ResendRequest(begin, end) (``end`` already capped at the last sent
    number): stored application messages again with 43=Y, 122 and a fresh 52, the other
    numbers covered by SequenceReset-GapFill."""
    now = format_utc_timestamp(now_ns)

    def gap_fill(seq: int, new_seq: int) -> bytes:
        return encode("4", [(123, "Y"), (36, new_seq)], sender=sender, target=target, seq=seq,
                      sending_time=now, header=[(43, "Y"), (122, now)])

    out: list[bytes] = []
    position = begin
    for seq, raw in store.sent(begin, end):
        parts = possdup_parts(raw)
        if parts is None:
            continue
        if seq > position:
            out.append(gap_fill(position, seq))
        msg_type, header, body = parts
        out.append(encode(msg_type, body, sender=sender, target=target, seq=seq,
                          sending_time=now, header=header))
        position = seq + 1
    if position <= end:
        out.append(gap_fill(position, end + 1))
    return out
