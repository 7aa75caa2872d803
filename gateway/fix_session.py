"""Sans-I/O FIX 4.4 session layer: one ``FixSession`` per connection, acceptor or initiator.

Actions, ``SessionConfig``, ``SessionRejectReason``, ``Role`` and ``State`` live in
``gateway.fix_admin`` and are re-exported here. The I/O layer feeds a session and carries
out the actions it returns, in order:

- ``FixSession.acceptor(comp_id, open_store, logon_check)`` /
  ``FixSession.initiator(sender, target, store, logon_fields=...)``; ``config`` tunes both.
- ``connection_made(now_ns)`` (the initiator sends its Logon), ``on_bytes(data, now_ns)``,
  ``on_timer(now_ns)`` (call it at ``next_deadline_ns()`` or simply every few hundred ms),
  ``send(msg_type, body, now_ns, header=())`` for application messages,
  ``reject(message, reason, now_ns, tag=, text=)`` for a session-level Reject of a delivered
  message, ``logout(now_ns, text)`` and ``connection_lost(now_ns)``. ``now_ns`` is UTC wall
  clock (``time.time_ns()``); it stamps SendingTime and drives the timers.
- Each returns ``list[Action]``: ``Send(data)`` bytes to write; ``Deliver(message)`` an
  application message, in sequence order; ``Rejected(message)`` a session-level Reject
  (35=3) of one of our messages (45 = its MsgSeqNum; not to be answered);
  ``LoggedOn(message)`` with the counterparty's Logon; ``LoggedOut(reason)`` once when
  a logged-on session ends; ``Disconnect(reason)`` close the transport after writing the
  preceding ``Send``s. After ``Disconnect`` the session ignores its input.

The FIX 4.4 session rules it follows are listed in ``gateway.fix_admin``.

Persistence: sequence numbers and sent application messages go to the ``SessionStore``; with
``autocommit`` (default) every call commits before returning, so the bytes it returns are
covered. With ``autocommit=False`` the I/O layer must call ``commit()`` before writing the
``Send``s of a batch. ``send`` while not logged on stores the message (its number is used)
so the counterparty gets it by resend after the next logon.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.fix_admin import (
    NS,
    Action,
    Deliver,
    Disconnect,
    LoggedOn,
    LoggedOut,
    LogonCheck,
    LogonFields,
    Rejected,
    Resequencer,
    Role,
    Send,
    SessionConfig,
    SessionRejectReason,
    State,
    header_problem,
    logon_problem,
    resend,
)
from gateway.fix_codec import (
    ADMIN_MSG_TYPES,
    Field,
    FixMessage,
    FixParser,
    Garbled,
    encode,
    format_utc_timestamp,
)
from gateway.fix_store import SessionStore, StoreOpener, is_valid_comp_id

__all__ = [
    "Action", "Deliver", "Disconnect", "FixSession", "LoggedOn", "LoggedOut", "LogonCheck",
    "LogonFields", "Rejected", "Role", "Send", "SessionConfig", "SessionRejectReason", "State",
]

class FixSession:
    """The session state machine of one connection (see the module docstring)."""

    def __init__(
        self,
        role: Role,
        sender_comp_id: str,
        *,
        target_comp_id: str | None = None,
        store: SessionStore | None = None,
        open_store: StoreOpener | None = None,
        logon_check: LogonCheck | None = None,
        logon_fields: LogonFields | None = None,
        config: SessionConfig | None = None,
    ) -> None:
        self.role = role
        self.sender_comp_id = sender_comp_id
        self.target_comp_id = target_comp_id
        self.store = store
        self.config = config or SessionConfig()
        self.state = State.NEW
        self.heartbeat_ns = self.config.heartbeat_s * NS
        self.garbled = 0
        self._open_store = open_store
        self._logon_check = logon_check
        self._logon_fields = logon_fields
        self._parser = FixParser()
        self._out: list[Action] = []
        self._now = 0
        self._state_since = 0
        self._last_sent = 0
        self._last_recv = 0
        self._test_request: str | None = None
        self._test_requests = 0
        self._ahead = Resequencer()
        self._logon: FixMessage | None = None
        self._logon_seq = 0  # MsgSeqNum of our own Logon

    @classmethod
    def acceptor(
        cls,
        comp_id: str,
        open_store: StoreOpener,
        logon_check: LogonCheck,
        config: SessionConfig | None = None,
    ) -> FixSession:
        """The exchange's side: the store is opened at logon, for the logon's SenderCompID."""
        return cls(Role.ACCEPTOR, comp_id, open_store=open_store, logon_check=logon_check,
                   config=config)

    @classmethod
    def initiator(
        cls,
        sender: str,
        target: str,
        store: SessionStore,
        logon_fields: LogonFields | None = None,
        config: SessionConfig | None = None,
    ) -> FixSession:
        """A client's side. ``logon_fields(sending_time, seq)`` adds body fields to the
        Logon (e.g. 553/554 signed over that Logon's header)."""
        return cls(Role.INITIATOR, sender, target_comp_id=target, store=store,
                   logon_fields=logon_fields, config=config)

    @property
    def closed(self) -> bool:
        """Whether the session has disconnected (it ignores further input)."""
        return self.state is State.CLOSED

    @property
    def logged_on(self) -> bool:
        """Whether the logon handshake completed and no Logout has been sent."""
        return self.state is State.ACTIVE

    # -- calls from the I/O layer --------------------------------------------------------

    def connection_made(self, now_ns: int) -> list[Action]:
        """The transport is up; an initiator sends its Logon."""
        self._begin(now_ns)
        self._enter(State.AWAITING_LOGON)
        self._last_recv = now_ns
        if self.role is Role.INITIATOR:
            store = self._require_store()
            if self.config.reset_on_logon:
                store.reset()
            seq = store.next_sender_seq()
            body: list[Field] = [(98, 0), (108, self.config.heartbeat_s)]
            if self.config.reset_on_logon:
                body.append((141, "Y"))
            if self._logon_fields is not None:
                body.extend(self._logon_fields(format_utc_timestamp(now_ns), seq))
            self._logon_seq = seq
            self._emit("A", body)
        return self._finish()

    def on_bytes(self, data: bytes, now_ns: int) -> list[Action]:
        """Bytes from the counterparty."""
        self._begin(now_ns)
        if self.state not in (State.NEW, State.CLOSED):
            for result in self._parser.feed(data):
                if self.closed:
                    break
                if isinstance(result, Garbled):
                    self.garbled += 1
                    continue
                self._last_recv = now_ns
                self._test_request = None  # any message shows the counterparty is alive
                self._on_message(result)
        return self._finish()

    def on_timer(self, now_ns: int) -> list[Action]:
        """Time passed: logon/logout timeouts, heartbeats, test requests, silence."""
        self._begin(now_ns)
        config = self.config
        if self.state is State.AWAITING_LOGON:
            if now_ns - self._state_since >= config.logon_timeout_s * NS:
                self._close("no Logon in time")
        elif self.state is State.LOGOUT_SENT and (
            now_ns - self._state_since >= config.logout_timeout_s * NS
        ):
            self._close("Logout not answered in time")
        if self.state in (State.ACTIVE, State.LOGOUT_SENT):
            silence = now_ns - self._last_recv
            if silence >= 2 * self.heartbeat_ns:
                self._close("no message from the counterparty in twice HeartBtInt")
            else:
                if silence >= self.heartbeat_ns * 6 // 5 and self._test_request is None:
                    self._test_requests += 1
                    self._test_request = f"TEST{self._test_requests}"
                    self._emit("1", [(112, self._test_request)])
                if now_ns - self._last_sent >= self.heartbeat_ns:
                    self._emit("0", [])
        return self._finish()

    def next_deadline_ns(self) -> int | None:
        """When ``on_timer`` next has something to do (None once closed)."""
        if self.state is State.AWAITING_LOGON:
            return self._state_since + self.config.logon_timeout_s * NS
        if self.state not in (State.ACTIVE, State.LOGOUT_SENT):
            return None
        deadlines = [self._last_recv + 2 * self.heartbeat_ns, self._last_sent + self.heartbeat_ns]
        if self._test_request is None:
            deadlines.append(self._last_recv + self.heartbeat_ns * 6 // 5)
        if self.state is State.LOGOUT_SENT:
            deadlines.append(self._state_since + self.config.logout_timeout_s * NS)
        return min(deadlines)

    def send(
        self, msg_type: str, body: Sequence[Field], now_ns: int, header: Sequence[Field] = ()
    ) -> list[Action]:
        """Send an application message (stored for resends; held for resend if not logged
        on). Raises RuntimeError for an acceptor that has no store yet (before logon)."""
        self._begin(now_ns)
        self._require_store()
        self._emit(msg_type, body, header, wire=self.state is State.ACTIVE)
        return self._finish()

    def reject(
        self,
        message: FixMessage,
        reason: int,
        now_ns: int,
        *,
        tag: int | None = None,
        text: str | None = None,
    ) -> list[Action]:
        """A session-level Reject of a delivered message (its number is already used)."""
        self._begin(now_ns)
        if self.state is State.ACTIVE:
            self._reject(message, reason, tag, text)
        return self._finish()

    def logout(self, now_ns: int, text: str | None = None) -> list[Action]:
        """Start the Logout handshake (or just disconnect if not logged on)."""
        self._begin(now_ns)
        if self.state is State.ACTIVE:
            self._emit("5", [(58, text)] if text else [])
            self._enter(State.LOGOUT_SENT)
        elif self.state is not State.CLOSED:
            self._close(text or "logout before logon")
        return self._finish()

    def connection_lost(self, now_ns: int) -> list[Action]:
        """The transport closed under us."""
        self._begin(now_ns)
        if self.state is not State.CLOSED:
            if self.state in (State.ACTIVE, State.LOGOUT_SENT):
                self._out.append(LoggedOut("connection lost"))
            self._enter(State.CLOSED)
        return self._finish()

    def commit(self) -> None:
        """Make the store durable (needed only with ``autocommit=False``)."""
        if self.store is not None:
            self.store.commit()

    # -- internals -----------------------------------------------------------------------

    def _begin(self, now_ns: int) -> None:
        self._now = now_ns

    def _finish(self) -> list[Action]:
        if self.config.autocommit:
            self.commit()
        out, self._out = self._out, []
        return out

    def _enter(self, state: State) -> None:
        self.state = state
        self._state_since = self._now

    def _require_store(self) -> SessionStore:
        if self.store is None:
            raise RuntimeError("the session has no store before logon")
        return self.store

    def _emit(
        self, msg_type: str, body: Sequence[Field], header: Sequence[Field] = (),
        *, wire: bool = True,
    ) -> None:
        """Send a message with the next MsgSeqNum (1 if refused before a store opens)."""
        store = self.store
        seq = store.next_sender_seq() if store is not None else 1
        raw = encode(msg_type, body, sender=self.sender_comp_id, target=self.target_comp_id or "",
                     seq=seq, sending_time=format_utc_timestamp(self._now), header=header)
        if store is not None:
            if msg_type not in ADMIN_MSG_TYPES:
                store.save_sent(seq, raw)
            store.set_next_sender_seq(seq + 1)
        if wire:
            self._write(raw)

    def _write(self, raw: bytes) -> None:
        self._out.append(Send(raw))
        self._last_sent = self._now

    def _close(self, reason: str) -> None:
        if self.state in (State.ACTIVE, State.LOGOUT_SENT):
            self._out.append(LoggedOut(reason))
        self._out.append(Disconnect(reason))
        self._enter(State.CLOSED)

    def _logout_and_close(self, text: str) -> None:
        if self.target_comp_id is not None:
            self._emit("5", [(58, text)])
        self._close(text)

    def _reject(self, message: FixMessage, reason: int, tag: int | None, text: str | None
                ) -> None:
        body: list[Field] = [(45, message.get_int(34) or 0)]
        if tag is not None:
            body.append((371, tag))
        if message.msg_type:
            body.append((372, message.msg_type))
        body.append((373, int(reason)))
        if text:
            body.append((58, text))
        self._emit("3", body)

    def _advance(self) -> None:
        store = self._require_store()
        store.set_next_target_seq(store.next_target_seq() + 1)

    # -- inbound ---------------------------------------------------------------------------

    def _on_message(self, message: FixMessage) -> None:
        if self.state is State.AWAITING_LOGON:
            if message.msg_type == "A":
                self._on_logon(message)
            elif message.msg_type == "5":
                self._close(f"Logout during logon: {message.get(58) or 'no reason given'}")
            else:
                self._close(f"first message was MsgType {message.msg_type}, not a Logon")
            return
        store = self._require_store()
        seq = message.get_int(34)
        if seq is None:
            self._logout_and_close("MsgSeqNum missing or not a number")
            return
        if message.msg_type == "4" and message.get(123) != "Y":
            self._sequence_reset(message)
            return
        expected = store.next_target_seq()
        if seq > expected:
            if message.msg_type == "5":
                self._on_logout(message)
                return
            if message.msg_type == "2":
                self._on_resend_request(message)
                self._ahead.answered.add(seq)
            self._enqueue(seq, message)
        elif seq < expected:
            if message.get(43) != "Y":
                self._logout_and_close(
                    f"MsgSeqNum too low, expecting {expected} but received {seq}"
                )
        else:
            self._process(message)
            self._drain()

    def _enqueue(self, seq: int, message: FixMessage) -> None:
        if len(self._ahead) >= self.config.max_queued:
            self._logout_and_close("too many messages waiting for a resend")
        elif self._ahead.hold(seq, message):
            self._request_resend(seq)

    def _request_resend(self, up_to: int) -> None:
        self._ahead.awaited = up_to
        self._emit("2", [(7, self._require_store().next_target_seq()), (16, 0)])

    def _drain(self) -> None:
        """Process held messages whose turn has come."""
        store = self._require_store()
        while self.state in (State.ACTIVE, State.LOGOUT_SENT):
            message = self._ahead.take(store.next_target_seq())
            if message is None:
                break
            self._process(message)
        up_to = self._ahead.settle(store.next_target_seq())
        if up_to is not None and self.state is State.ACTIVE:
            self._request_resend(up_to)

    def _process(self, message: FixMessage) -> None:
        """Handle the message carrying the expected MsgSeqNum."""
        problem = header_problem(message, sender=self.sender_comp_id,
                                 target=self.target_comp_id, now_ns=self._now,
                                 config=self.config)
        if problem is not None:
            reason, tag, text = problem
            self._reject(message, reason, tag, text)
            self._advance()
            if reason in (SessionRejectReason.COMPID_PROBLEM,
                          SessionRejectReason.SENDING_TIME_ACCURACY):
                self._logout_and_close(text)
            return
        msg_type = message.msg_type
        seq = message.get_int(34) or 0
        if msg_type == "4":
            self._gap_fill(message)
            return
        if msg_type == "5":
            self._advance()
            self._on_logout(message)
            return
        self._advance()
        if msg_type == "1":
            test_id = message.get(112)
            if test_id is None:
                self._reject(message, SessionRejectReason.REQUIRED_TAG_MISSING, 112,
                             "tag 112 missing")
            else:
                self._emit("0", [(112, test_id)])
        elif msg_type == "2":
            if seq not in self._ahead.answered:
                self._on_resend_request(message)
        elif msg_type == "A":
            if message is not self._logon:
                self._logout_and_close("Logon while logged on")
        elif msg_type == "3":
            self._out.append(Rejected(message))
        elif msg_type != "0":  # a Heartbeat has done its work by arriving
            self._out.append(Deliver(message))

    def _on_logon(self, message: FixMessage) -> None:
        refusal = self._logon_refusal(message)
        if refusal is not None:
            self._logout_and_close(refusal)
            return
        store = self._require_store()
        seq = message.get_int(34) or 0
        reset = message.get(141) == "Y"
        if reset and self.role is Role.ACCEPTOR:
            store.reset()
        expected = store.next_target_seq()
        if seq < expected:
            self._logout_and_close(f"MsgSeqNum too low, expecting {expected} but received {seq}")
            return
        self._logon = message
        if self.role is Role.ACCEPTOR:
            self.heartbeat_ns = (message.get_int(108) or 0) * NS
            body: list[Field] = [(98, 0), (108, message.get_int(108) or 0)]
            if reset:
                body.append((141, "Y"))
            self._logon_seq = store.next_sender_seq()
            self._emit("A", body)
        self._enter(State.ACTIVE)
        self._out.append(LoggedOn(message))
        if store.next_sender_seq() > self._logon_seq + 1:
            self._emit("0", [])  # shows the counterparty what we stored while logging on
        if seq == expected:
            self._advance()
        else:
            self._enqueue(seq, message)

    def _logon_refusal(self, message: FixMessage) -> str | None:
        """Why a Logon is refused (None: accepted, and the store is open)."""
        sender, target = message.get(49), message.get(56)
        if self.role is Role.ACCEPTOR:
            if sender is None or not is_valid_comp_id(sender):
                return "SenderCompID missing or not usable"
            self.target_comp_id = sender
        if sender != self.target_comp_id or target != self.sender_comp_id:
            return "CompID problem"
        problem = logon_problem(message, acceptor=self.role is Role.ACCEPTOR, now_ns=self._now,
                                config=self.config)
        if problem is not None:
            return problem
        if self.role is Role.ACCEPTOR and sender is not None:
            assert self._logon_check is not None and self._open_store is not None
            refusal = self._logon_check(message)
            if refusal is not None:
                return refusal
            try:
                self.store = self._open_store(self.sender_comp_id, sender)
            except (OSError, ValueError) as exc:
                return f"session store unavailable: {exc}"
        return None

    def _on_logout(self, message: FixMessage) -> None:
        reason = message.get(58) or "Logout"
        if self.state is State.ACTIVE:
            self._emit("5", [])
        self._close(reason)

    def _gap_fill(self, message: FixMessage) -> None:
        new_seq = message.get_int(36)
        expected = self._require_store().next_target_seq()
        if new_seq is None:
            self._reject(message, SessionRejectReason.REQUIRED_TAG_MISSING, 36,
                         "NewSeqNo missing or not a number")
            self._advance()
        elif new_seq <= expected:
            self._reject(message, SessionRejectReason.VALUE_INCORRECT, 36,
                         f"attempt to lower sequence number, invalid value NewSeqNo={new_seq}")
            self._advance()
        else:
            self._require_store().set_next_target_seq(new_seq)

    def _sequence_reset(self, message: FixMessage) -> None:
        """SequenceReset in reset mode: its MsgSeqNum does not matter."""
        new_seq = message.get_int(36)
        store = self._require_store()
        problem = header_problem(message, sender=self.sender_comp_id,
                                 target=self.target_comp_id, now_ns=self._now,
                                 config=self.config)
        if problem is not None:
            self._reject(message, *problem)
        elif new_seq is None:
            self._reject(message, SessionRejectReason.REQUIRED_TAG_MISSING, 36,
                         "NewSeqNo missing or not a number")
        elif new_seq < store.next_target_seq():
            self._reject(message, SessionRejectReason.VALUE_INCORRECT, 36,
                         f"attempt to lower sequence number, invalid value NewSeqNo={new_seq}")
        else:
            store.set_next_target_seq(new_seq)
            self._drain()

    def _on_resend_request(self, message: FixMessage) -> None:
        begin, end = message.get_int(7), message.get_int(16)
        if begin is None or end is None or begin < 1:
            self._reject(message, SessionRejectReason.INCORRECT_DATA_FORMAT,
                         7 if begin is None or begin < 1 else 16,
                         "BeginSeqNo and EndSeqNo must be numbers")
            return
        last = self._require_store().next_sender_seq() - 1
        for raw in resend(self._require_store(), begin, last if end == 0 else min(end, last),
                          sender=self.sender_comp_id, target=self.target_comp_id or "",
                          now_ns=self._now):
            self._write(raw)
