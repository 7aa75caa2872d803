"""FIX session layer: an initiator and an acceptor wired back to back in memory, every admin
flow driven by an explicit clock."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.fix_codec import (
    Field,
    FixMessage,
    FixParser,
    decode,
    encode,
    encode_fields,
    format_utc_timestamp,
    frame,
)
from gateway.fix_session import (
    Action,
    Deliver,
    Disconnect,
    FixSession,
    LoggedOn,
    LoggedOut,
    Rejected,
    Send,
    SessionConfig,
    SessionRejectReason,
    State,
)
from gateway.fix_store import FileStore, MemoryStore, SessionStore

NS = 1_000_000_000
T0 = 1_800_000_000 * NS
INI, ACC = "initiator", "acceptor"
ORDER: list[Field] = [(11, "C1"), (55, "GPU.H100.SPOT"), (54, 1), (38, 5), (40, 2),
                      (44, "2.500")]


class Link:
    """Both sides of one connection; bytes written by one are fed to the other in order.
    ``lose[side]`` drops what that side writes (the other side never sees it)."""

    def __init__(
        self,
        initiator_store: SessionStore | None = None,
        acceptor_stores: dict[tuple[str, str], SessionStore] | None = None,
        *,
        refusal: str | None = None,
        config: SessionConfig | None = None,
        now: int = T0,
    ) -> None:
        self.now = now
        self.stores = {} if acceptor_stores is None else acceptor_stores
        self.checked: list[FixMessage] = []

        def open_store(sender: str, target: str) -> SessionStore:
            return self.stores.setdefault((sender, target), MemoryStore())

        def check(logon: FixMessage) -> str | None:
            self.checked.append(logon)
            return refusal

        def logon_fields(sending_time: str, seq: int) -> list[Field]:
            return [(553, "0xacc"), (554, f"{sending_time}|{seq}|MM1|CMX")]

        self.sessions = {
            ACC: FixSession.acceptor("CMX", open_store, check, config),
            INI: FixSession.initiator("MM1", "CMX", initiator_store or MemoryStore(),
                                      logon_fields, config),
        }
        self.sent: dict[str, list[FixMessage]] = {INI: [], ACC: []}
        self.events: dict[str, list[Action]] = {INI: [], ACC: []}
        self.lose = {INI: False, ACC: False}
        self.up = True

    @property
    def initiator(self) -> FixSession:
        return self.sessions[INI]

    @property
    def acceptor(self) -> FixSession:
        return self.sessions[ACC]

    def run(self, side: str, actions: list[Action]) -> None:
        """Carry out ``actions`` of ``side`` and everything they set off."""
        pending: deque[tuple[str, bytes | None]] = deque()
        self._handle(side, actions, pending)
        while pending:
            target, data = pending.popleft()
            session = self.sessions[target]
            if data is None:
                self._handle(target, session.connection_lost(self.now), pending)
            else:
                self._handle(target, session.on_bytes(data, self.now), pending)

    def _handle(self, side: str, actions: list[Action],
                pending: deque[tuple[str, bytes | None]]) -> None:
        other = ACC if side == INI else INI
        for action in actions:
            if isinstance(action, Send):
                message = decode(action.data)
                assert isinstance(message, FixMessage), action.data
                self.sent[side].append(message)
                if self.up and not self.lose[side]:
                    pending.append((other, action.data))
            else:
                self.events[side].append(action)
                if isinstance(action, Disconnect) and self.up:
                    self.up = False
                    pending.append((other, None))

    def connect(self) -> None:
        self.run(ACC, self.acceptor.connection_made(self.now))
        self.run(INI, self.initiator.connection_made(self.now))

    def feed(self, side: str, data: bytes) -> None:
        """Bytes arriving at ``side`` from the wire."""
        self.run(side, self.sessions[side].on_bytes(data, self.now))

    def send(self, side: str, msg_type: str, body: Sequence[Field] = ORDER) -> None:
        self.run(side, self.sessions[side].send(msg_type, body, self.now))

    def tick(self, seconds: float) -> None:
        self.now += int(seconds * NS)
        for side in (INI, ACC):
            self.run(side, self.sessions[side].on_timer(self.now))

    def delivered(self, side: str) -> list[FixMessage]:
        return [event.message for event in self.events[side] if isinstance(event, Deliver)]

    def kinds(self, side: str) -> list[type]:
        return [type(event) for event in self.events[side]]

    def wire(self, side: str) -> list[tuple[str, int]]:
        """(MsgType, MsgSeqNum) of what ``side`` wrote."""
        return [(message.msg_type, message.get_int(34) or 0) for message in self.sent[side]]


def logged_on_link(
    initiator_store: SessionStore | None = None,
    acceptor_stores: dict[tuple[str, str], SessionStore] | None = None,
    config: SessionConfig | None = None,
) -> Link:
    link = Link(initiator_store, acceptor_stores, config=config)
    link.connect()
    assert link.initiator.logged_on and link.acceptor.logged_on
    return link


def client_message(seq: int, msg_type: str = "D", body: Sequence[Field] = ORDER, *,
                   now: int = T0, header: Sequence[Field] = (), sender: str = "MM1") -> bytes:
    return encode(msg_type, body, sender=sender, target="CMX", seq=seq,
                  sending_time=format_utc_timestamp(now), header=header)


def handmade(fields: Sequence[Field]) -> bytes:
    """A correctly framed message with exactly ``fields`` after 9 (35 first)."""
    return frame(encode_fields(fields))


def last(link: Link, side: str) -> FixMessage:
    return link.sent[side][-1]


# -- logon ---------------------------------------------------------------------------------


def test_logon_handshake_uses_the_initiators_heartbeat_interval() -> None:
    link = logged_on_link(config=SessionConfig(heartbeat_s=17))
    logon, answer = link.sent[INI][0], link.sent[ACC][0]
    assert (logon.msg_type, logon.get(108), logon.get(98)) == ("A", "17", "0")
    assert (answer.msg_type, answer.get(108), answer.get(56)) == ("A", "17", "MM1")
    assert link.checked == [logon]
    assert logon.get(554) == f"{logon.get(52)}|1|MM1|CMX"
    assert link.kinds(INI) == [LoggedOn] and link.kinds(ACC) == [LoggedOn]
    assert link.acceptor.target_comp_id == "MM1"
    store = link.stores["CMX", "MM1"]
    assert (store.next_sender_seq(), store.next_target_seq()) == (2, 2)


def test_refused_logon_gets_a_logout_with_the_reason_and_a_disconnect() -> None:
    link = Link(refusal="signature does not match the account")
    link.connect()
    assert link.wire(ACC) == [("5", 1)]
    assert last(link, ACC).get(58) == "signature does not match the account"
    assert link.events[ACC] == [Disconnect("signature does not match the account")]
    assert link.events[INI] == [
        Disconnect("Logout during logon: signature does not match the account")]
    assert link.stores == {}


def test_first_message_must_be_a_logon() -> None:
    link = Link()
    link.run(ACC, link.acceptor.connection_made(link.now))
    link.feed(ACC, client_message(1))
    assert link.sent[ACC] == []
    assert link.events[ACC] == [Disconnect("first message was MsgType D, not a Logon")]
    assert link.acceptor.closed


@pytest.mark.parametrize(
    ("body", "header_time", "target", "reason"),
    [
        ([(98, 0), (108, 30)], T0, "OTHER", "CompID problem"),
        ([(98, 0), (108, 0)], T0, "CMX", "HeartBtInt (108) must be 1 to 300"),
        ([(98, 0)], T0, "CMX", "HeartBtInt (108) must be 1 to 300"),
        ([(98, 1), (108, 30)], T0, "CMX", "EncryptMethod (98) must be 0"),
        ([(98, 0), (108, 30)], T0 - 600 * NS, "CMX", "SendingTime accuracy problem"),
    ],
)
def test_bad_logons_are_refused_before_the_application_sees_them(
    body: list[Field], header_time: int, target: str, reason: str
) -> None:
    link = Link()
    link.run(ACC, link.acceptor.connection_made(link.now))
    link.feed(ACC, encode("A", body, sender="MM1", target=target, seq=1,
                          sending_time=format_utc_timestamp(header_time)))
    assert link.checked == []
    assert last(link, ACC).get(58) == reason
    assert link.events[ACC] == [Disconnect(reason)]


def test_unusable_sender_comp_id_is_dropped_without_an_answer() -> None:
    link = Link()
    link.run(ACC, link.acceptor.connection_made(link.now))
    link.feed(ACC, client_message(1, "A", [(98, 0), (108, 30)], sender="../etc"))
    assert link.sent[ACC] == []
    assert link.events[ACC] == [Disconnect("SenderCompID missing or not usable")]


def test_no_logon_in_time_disconnects() -> None:
    link = Link()
    link.run(ACC, link.acceptor.connection_made(link.now))
    assert link.acceptor.next_deadline_ns() == T0 + 10 * NS
    link.tick(9.9)
    assert link.events[ACC] == []
    link.tick(0.1)
    assert link.events[ACC] == [Disconnect("no Logon in time")]


def test_acceptor_cannot_send_before_logon() -> None:
    link = Link()
    link.run(ACC, link.acceptor.connection_made(link.now))
    with pytest.raises(RuntimeError):
        link.acceptor.send("8", [(37, "1")], link.now)


# -- heartbeats and test requests ----------------------------------------------------------


def test_heartbeat_after_an_interval_of_our_silence() -> None:
    link = logged_on_link(config=SessionConfig(heartbeat_s=10))
    link.tick(9)
    assert link.wire(INI) == [("A", 1)]
    link.tick(1)
    assert link.wire(INI) == [("A", 1), ("0", 2)]
    assert link.wire(ACC) == [("A", 1), ("0", 2)]
    assert link.kinds(INI) == [LoggedOn]


def test_test_request_after_silence_is_answered_with_its_id() -> None:
    link = logged_on_link(config=SessionConfig(heartbeat_s=10))
    link.lose[INI] = True  # the acceptor hears nothing from the initiator
    link.tick(10)
    link.lose[INI] = False
    assert link.wire(ACC)[-1] == ("0", 2)
    assert link.acceptor.next_deadline_ns() == T0 + 12 * NS
    link.tick(2)
    request = link.sent[ACC][2]
    assert (request.msg_type, request.get(112)) == ("1", "TEST1")
    answer = link.sent[INI][2]
    assert (answer.msg_type, answer.get(112)) == ("0", "TEST1")
    # The answer came after a lost heartbeat: the gap is filled and the answer then counts.
    assert link.wire(ACC)[3:] == [("2", 4)]
    assert link.wire(INI)[3:] == [("4", 2)]
    assert link.acceptor.logged_on
    assert link.acceptor.next_deadline_ns() == T0 + 22 * NS  # our next heartbeat


def test_silence_for_twice_the_interval_disconnects() -> None:
    link = logged_on_link(config=SessionConfig(heartbeat_s=10))
    link.lose[INI] = True
    link.tick(12)
    assert last(link, ACC).msg_type == "1"
    link.tick(7.9)
    assert link.acceptor.logged_on
    link.tick(0.1)
    reason = "no message from the counterparty in twice HeartBtInt"
    assert link.events[ACC][-2:] == [LoggedOut(reason), Disconnect(reason)]
    assert link.events[INI][-1] == LoggedOut("connection lost")


# -- sequence gaps, resend and gap fill ------------------------------------------------------


def test_gap_is_resent_and_queued_messages_delivered_in_order() -> None:
    link = logged_on_link()
    link.lose[INI] = True
    link.send(INI, "D", [(11, "A"), (55, "X")])
    link.tick(30)  # an initiator heartbeat is lost too
    link.send(INI, "D", [(11, "B"), (55, "X")])
    link.lose[INI] = False
    link.send(INI, "D", [(11, "C"), (55, "X")])
    link.send(INI, "D", [(11, "D"), (55, "X")])
    assert [message.get(11) for message in link.delivered(ACC)] == ["A", "B", "C", "D"]
    request = [message for message in link.sent[ACC] if message.msg_type == "2"]
    assert [(message.get(7), message.get(16)) for message in request] == [("2", "0")]
    replay = link.sent[INI][-5:-1]
    assert [(message.msg_type, message.get_int(34)) for message in replay] == [
        ("D", 2), ("4", 3), ("D", 4), ("D", 5)]
    assert [message.get(43) for message in replay] == ["Y", "Y", "Y", "Y"]
    assert replay[1].get(36) == "4" and replay[1].get(123) == "Y"
    resent_a = replay[0]
    assert resent_a.get(122) == link.sent[INI][1].get(52)
    assert resent_a.get(52) == format_utc_timestamp(link.now)
    assert link.delivered(ACC)[0].get(43) == "Y"
    assert link.stores["CMX", "MM1"].next_target_seq() == 7


def test_resend_range_with_an_end_and_admin_gap_fill_coalesced() -> None:
    link = logged_on_link(config=SessionConfig(heartbeat_s=5))
    link.tick(5)
    link.tick(5)  # heartbeats 2 and 3 from both sides
    link.send(ACC, "8", [(37, "O1")])
    link.feed(ACC, client_message(4, "2", [(7, 1), (16, 4)], now=link.now))
    assert link.wire(ACC)[-2:] == [("4", 1), ("8", 4)]
    gap_fill = link.sent[ACC][-2]
    assert (gap_fill.get(36), gap_fill.get(43), gap_fill.get(123)) == ("4", "Y", "Y")
    assert gap_fill.get(122) == gap_fill.get(52)


def test_too_high_resend_request_is_answered_before_our_own_gap_is_filled() -> None:
    link = logged_on_link()
    link.send(ACC, "8", [(37, "O1")])
    link.feed(ACC, client_message(5, "2", [(7, 2), (16, 0)], now=link.now))
    kinds = link.wire(ACC)[-2:]
    assert kinds == [("8", 2), ("2", 3)]
    assert link.sent[ACC][-2].get(43) == "Y"


def test_duplicate_with_possdup_is_ignored() -> None:
    link = logged_on_link()
    link.send(INI, "D")
    link.feed(ACC, client_message(2, header=[(43, "Y"), (122, format_utc_timestamp(T0))]))
    assert len(link.delivered(ACC)) == 1
    assert link.acceptor.logged_on


def test_too_low_without_possdup_logs_out() -> None:
    link = logged_on_link()
    link.send(INI, "D")
    link.feed(ACC, client_message(2))
    logout = last(link, ACC)
    assert logout.msg_type == "5"
    assert logout.get(58) == "MsgSeqNum too low, expecting 3 but received 2"
    assert link.kinds(ACC)[-2:] == [LoggedOut, Disconnect]


def test_sequence_reset_mode_ignores_its_own_number() -> None:
    link = logged_on_link()
    link.feed(ACC, client_message(1, "4", [(36, 10)]))
    assert link.stores["CMX", "MM1"].next_target_seq() == 10
    link.feed(ACC, client_message(10))
    assert len(link.delivered(ACC)) == 1
    link.feed(ACC, client_message(99, "4", [(36, 5)]))
    reject = last(link, ACC)
    assert (reject.msg_type, reject.get(373), reject.get(371)) == ("3", "5", "36")
    assert link.stores["CMX", "MM1"].next_target_seq() == 11


def test_gap_fill_that_lowers_the_number_is_rejected() -> None:
    link = logged_on_link()
    gap_fill = client_message(2, "4", [(123, "Y"), (36, 2)],
                              header=[(43, "Y"), (122, format_utc_timestamp(T0))])
    link.feed(ACC, gap_fill)
    reject = last(link, ACC)
    assert (reject.msg_type, reject.get(45), reject.get(373)) == ("3", "2", "5")
    assert link.stores["CMX", "MM1"].next_target_seq() == 3


# -- rejects ----------------------------------------------------------------------------------


def stamp(now: int = T0) -> str:
    return format_utc_timestamp(now)


@pytest.mark.parametrize(
    ("fields", "reason", "ref_tag"),
    [
        ([(35, "D"), (49, "MM1"), (56, "CMX"), (34, 2), (11, "x")], 1, "52"),
        ([(35, "D"), (56, "CMX"), (34, 2), (52, stamp())], 1, "49"),
        ([(35, "ZZ"), (49, "MM1"), (56, "CMX"), (34, 2), (52, stamp())], 11, "35"),
        ([(35, "D"), (49, "MM1"), (56, "CMX"), (34, 2), (52, "yesterday")], 6, "52"),
        ([(35, "D"), (49, "MM1"), (56, "CMX"), (34, 2), (52, stamp()), (43, "Y")], 1, "122"),
        ([(35, "1"), (49, "MM1"), (56, "CMX"), (34, 2), (52, stamp())], 1, "112"),
        ([(35, "2"), (49, "MM1"), (56, "CMX"), (34, 2), (52, stamp()), (7, "a"), (16, 0)],
         6, "7"),
    ],
)
def test_session_problems_are_rejected_and_consume_the_number(
    fields: list[Field], reason: int, ref_tag: str
) -> None:
    link = logged_on_link()
    link.feed(ACC, handmade(fields))
    reject = last(link, ACC)
    assert reject.msg_type == "3"
    assert (reject.get(45), reject.get(373), reject.get(371)) == ("2", str(reason), ref_tag)
    assert reject.get(372) == fields[0][1]
    link.feed(ACC, client_message(3))
    assert [message.get_int(34) for message in link.delivered(ACC)] == [3]
    assert link.acceptor.logged_on


def test_tag_without_value_is_rejected() -> None:
    link = logged_on_link()
    body = encode_fields([(35, "D"), (49, "MM1"), (56, "CMX"), (34, 2), (52, stamp())])
    link.feed(ACC, frame(body + b"58=\x01"))
    reject = last(link, ACC)
    assert (reject.get(373), reject.get(371)) == ("4", "58")


@pytest.mark.parametrize(
    ("message", "reason", "text"),
    [
        (handmade([(35, "D"), (49, "MM1"), (56, "CMX"), (34, 2), (52, stamp(T0 - 300 * NS))]),
         SessionRejectReason.SENDING_TIME_ACCURACY, "SendingTime accuracy problem"),
        (handmade([(35, "D"), (49, "MM2"), (56, "CMX"), (34, 2), (52, stamp())]),
         SessionRejectReason.COMPID_PROBLEM, "CompID problem"),
        (client_message(2, header=[(43, "Y"), (122, stamp(T0 + NS))]),
         SessionRejectReason.SENDING_TIME_ACCURACY, "OrigSendingTime after SendingTime"),
    ],
)
def test_time_and_compid_problems_are_rejected_then_logged_out(
    message: bytes, reason: int, text: str
) -> None:
    link = logged_on_link()
    link.feed(ACC, message)
    reject, logout = link.sent[ACC][-2:]
    assert (reject.msg_type, reject.get_int(373)) == ("3", reason)
    assert (logout.msg_type, logout.get(58)) == ("5", text)
    assert link.events[ACC][-2:] == [LoggedOut(text), Disconnect(text)]
    assert link.stores["CMX", "MM1"].next_target_seq() == 3


@pytest.mark.parametrize("seq", [None, "x", "-3", "9" * 5000])
def test_missing_or_unreadable_seq_num_logs_out(seq: str | None) -> None:
    link = logged_on_link()
    number = [] if seq is None else [(34, seq)]
    link.feed(ACC, handmade([(35, "D"), (49, "MM1"), (56, "CMX"), *number, (52, stamp())]))
    assert last(link, ACC).get(58) == "MsgSeqNum missing or not a number"
    assert link.acceptor.closed


def test_garbled_messages_are_ignored_without_using_a_number() -> None:
    link = logged_on_link()
    bad = bytearray(client_message(2))
    bad[-3] = ord("0") + (bad[-3] - ord("0") + 1) % 10
    link.feed(ACC, bytes(bad))
    link.feed(ACC, b"\x00\xffnoise")
    assert link.acceptor.garbled == 2
    assert link.sent[ACC][1:] == []
    link.send(INI, "D")
    assert [message.get_int(34) for message in link.delivered(ACC)] == [2]


def test_application_rejects_a_delivered_message() -> None:
    link = logged_on_link()
    link.send(INI, "D", [(11, "C9")])
    delivered = link.delivered(ACC)[0]
    link.run(ACC, link.acceptor.reject(delivered, SessionRejectReason.REQUIRED_TAG_MISSING,
                                       link.now, tag=55, text="Symbol required"))
    reject = last(link, ACC)
    assert [reject.get(tag) for tag in (45, 371, 372, 373, 58)] == [
        "2", "55", "D", "1", "Symbol required"]
    assert link.events[INI][-1] == Rejected(reject)
    assert link.delivered(INI) == []


# -- logout -----------------------------------------------------------------------------------


def test_logout_handshake() -> None:
    link = logged_on_link()
    link.run(INI, link.initiator.logout(link.now, "done for the day"))
    assert link.wire(INI)[-1] == ("5", 2) and link.wire(ACC)[-1] == ("5", 2)
    assert link.sent[INI][-1].get(58) == "done for the day"
    assert link.events[ACC][-2:] == [LoggedOut("done for the day"), Disconnect("done for the day")]
    assert link.events[INI] == [LoggedOn(link.sent[ACC][0]), LoggedOut("Logout"),
                                Disconnect("Logout")]
    assert link.initiator.closed and link.acceptor.closed


def test_unanswered_logout_times_out() -> None:
    link = logged_on_link()
    link.lose[INI] = True
    link.run(INI, link.initiator.logout(link.now))
    assert link.initiator.state is State.LOGOUT_SENT
    link.tick(5)
    assert link.events[INI][-2:] == [LoggedOut("Logout not answered in time"),
                                     Disconnect("Logout not answered in time")]


def test_messages_still_arrive_while_logout_is_pending() -> None:
    link = logged_on_link()
    link.lose[INI] = True
    link.run(INI, link.initiator.logout(link.now))
    link.send(ACC, "8", [(37, "late")])
    assert [message.get(37) for message in link.delivered(INI)] == ["late"]


# -- persistence across connections -----------------------------------------------------------


def test_reconnect_continues_the_numbers_from_file_stores(tmp_path: Path) -> None:
    def link(now: int) -> Link:
        return Link(FileStore(tmp_path / "mm"),
                    {("CMX", "MM1"): FileStore(tmp_path / "cmx")}, now=now)

    first = link(T0)
    first.connect()
    first.send(INI, "D")
    first.send(ACC, "8", [(37, "O1")])
    first.run(INI, first.initiator.logout(first.now))
    for session in first.sessions.values():
        assert session.store is not None
        session.store.close()

    second = link(T0 + 60 * NS)
    second.connect()
    assert second.wire(INI)[0] == ("A", 4)
    assert second.wire(ACC)[0] == ("A", 4)
    assert all(message.msg_type != "2" for message in second.sent[ACC] + second.sent[INI])
    assert second.kinds(INI) == [LoggedOn] and second.kinds(ACC) == [LoggedOn]


def test_reconnect_resends_what_each_side_missed() -> None:
    client_store = MemoryStore()
    exchange_stores: dict[tuple[str, str], SessionStore] = {}
    first = logged_on_link(initiator_store=client_store, acceptor_stores=exchange_stores)
    first.lose[INI] = first.lose[ACC] = True  # the connection dies silently
    first.send(INI, "D", [(11, "lost order")])
    first.send(ACC, "8", [(37, "lost report")])
    first.run(INI, first.initiator.connection_lost(first.now))
    first.run(ACC, first.acceptor.connection_lost(first.now))
    old_acceptor = first.acceptor
    old_acceptor.send("8", [(37, "report while away")], first.now)  # stored, not written

    second = Link(client_store, exchange_stores, now=T0 + 10 * NS)
    second.connect()
    assert [message.get(11) for message in second.delivered(ACC)] == ["lost order"]
    assert [message.get(37) for message in second.delivered(INI)] == [
        "lost report", "report while away"]
    assert all(message.get(43) == "Y" for message in second.delivered(INI))
    second.send(INI, "D", [(11, "fresh")])
    assert [message.get(11) for message in second.delivered(ACC)] == ["lost order", "fresh"]
    assert client_store.next_sender_seq() == exchange_stores["CMX", "MM1"].next_target_seq()
    assert client_store.next_target_seq() == exchange_stores["CMX", "MM1"].next_sender_seq()


def test_messages_sent_while_logging_on_reach_the_acceptor_by_resend() -> None:
    link = Link()
    link.run(ACC, link.acceptor.connection_made(link.now))
    link.lose[INI] = True
    link.run(INI, link.initiator.connection_made(link.now))
    link.send(INI, "D", [(11, "early")])  # stored: not logged on yet
    assert link.wire(INI) == [("A", 1)]
    link.lose[INI] = False
    link.feed(ACC, link.sent[INI][0].raw)
    assert link.wire(INI)[:3] == [("A", 1), ("0", 3), ("D", 2)]
    assert [message.get(11) for message in link.delivered(ACC)] == ["early"]


def test_lost_client_store_means_too_low_logon_and_logout() -> None:
    exchange_stores: dict[tuple[str, str], SessionStore] = {}
    first = logged_on_link(acceptor_stores=exchange_stores)
    first.send(INI, "D")
    second = Link(MemoryStore(), exchange_stores)
    second.connect()
    text = "MsgSeqNum too low, expecting 3 but received 1"
    assert last(second, ACC).get(58) == text
    assert second.events[ACC] == [Disconnect(text)]
    assert second.events[INI] == [Disconnect(f"Logout during logon: {text}")]


def test_reset_seq_num_flag_starts_both_sides_at_one() -> None:
    client_store = MemoryStore()
    exchange_stores: dict[tuple[str, str], SessionStore] = {}
    first = logged_on_link(initiator_store=client_store, acceptor_stores=exchange_stores)
    first.send(INI, "D")
    first.send(ACC, "8", [(37, "O1")])
    second = Link(client_store, exchange_stores, config=SessionConfig(reset_on_logon=True))
    second.connect()
    assert second.wire(INI)[0] == ("A", 1) and second.wire(ACC)[0] == ("A", 1)
    assert second.sent[ACC][0].get(141) == "Y"
    assert exchange_stores["CMX", "MM1"].sent(1, 100) == []
    assert second.acceptor.logged_on


def test_deadline_follows_heartbeats_and_test_requests() -> None:
    link = logged_on_link(config=SessionConfig(heartbeat_s=10))
    assert link.initiator.next_deadline_ns() == T0 + 10 * NS
    link.lose[ACC] = True
    link.tick(10)
    assert link.initiator.next_deadline_ns() == T0 + 12 * NS
    link.tick(2)
    assert link.initiator.next_deadline_ns() == T0 + 20 * NS


def test_parser_of_a_session_holds_partial_input() -> None:
    link = logged_on_link()
    raw = client_message(2)
    for index in range(len(raw)):
        link.feed(ACC, raw[index:index + 1])
    assert [message.raw for message in link.delivered(ACC)] == [raw]
    assert FixParser().feed(raw)[0] == link.delivered(ACC)[0]
