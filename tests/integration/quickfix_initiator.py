"""A stock QuickFIX initiator for interoperability tests.

PyPI ``quickfix`` (the C++ engine) with the FIX44.xml it ships as its data dictionary and
its default validation, so every message the exchange sends is checked by an engine we did
not write. The only thing added is what CMX's Logon asks of any engine: 553 Username = the
account address and 554 Password = the account's EIP-191 signature over
``SendingTime|MsgSeqNum|SenderCompID|TargetCompID`` of that Logon, read from the header
QuickFIX is about to send.

QuickFIX calls the application from its own threads; everything it sends and receives is
kept, thread-safely, as `Traffic` that the asyncio test polls.
"""

from __future__ import annotations

import asyncio
import sysconfig
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import quickfix as fix

from gateway.auth import address_of, sign_text

SOH = "\x01"
BEGIN_STRING = "FIX.4.4"
EXCHANGE_COMP_ID = "CMX"
LOGON_SIGNED_TAGS = (52, 34, 49, 56)  # SendingTime, MsgSeqNum, SenderCompID, TargetCompID
USERNAME, PASSWORD = 553, 554
REJECT_TYPES = frozenset({"3", "j"})  # session Reject, BusinessMessageReject


def stock_fix44_xml() -> Path:
    """The FIX44.xml the quickfix package installs unchanged (its data_files,
    ``share/quickfix`` under the environment's prefix)."""
    path = Path(sysconfig.get_path("data")) / "share" / "quickfix" / "FIX44.xml"
    if not path.is_file():
        raise FileNotFoundError(f"quickfix's stock dictionary is not installed at {path}")
    return path


def utc_timestamp() -> str:
    """Now as a FIX UTCTimestamp with milliseconds."""
    return datetime.now(UTC).strftime("%Y%m%d-%H:%M:%S.%f")[:-3]


@dataclass(frozen=True)
class FixMessage:
    """One message as QuickFIX sent or received it, in wire order."""

    fields: tuple[tuple[int, str], ...]

    @classmethod
    def parse(cls, raw: str) -> FixMessage:
        """Split QuickFIX's string form (``tag=value`` separated by SOH)."""
        pairs = []
        for field in raw.split(SOH):
            if field:
                tag, _, value = field.partition("=")
                pairs.append((int(tag), value))
        return cls(tuple(pairs))

    @property
    def msg_type(self) -> str:
        """Tag 35."""
        return self.get(35) or ""

    def get(self, tag: int) -> str | None:
        """The first value of ``tag``, or None."""
        return next((value for t, value in self.fields if t == tag), None)

    def matches(self, msg_type: str, tags: dict[int, str]) -> bool:
        """Whether this is a ``msg_type`` carrying each of ``tags`` with that value."""
        return self.msg_type == msg_type and all(self.get(t) == v for t, v in tags.items())

    def __str__(self) -> str:
        return "|".join(f"{tag}={value}" for tag, value in self.fields)


@dataclass(frozen=True)
class Traffic:
    """One message through QuickFIX: ``outbound`` (it sent it) or inbound, admin or
    application, and the session's SenderCompID."""

    sender: str
    outbound: bool
    admin: bool
    message: FixMessage


class _Recorder(fix.Application):  # type: ignore[misc]  # quickfix has no type hints
    """The QuickFIX application: signs Logons and records every message both ways."""

    def __init__(self, keys: dict[str, str]) -> None:
        super().__init__()
        self._keys = keys
        # derived now: the first signature imports eth-account, which must not delay the
        # Logon after QuickFIX has stamped its SendingTime
        self._accounts = {sender: address_of(key) for sender, key in keys.items()}
        self._lock = threading.Lock()
        self.traffic: list[Traffic] = []
        self.logged_on: set[str] = set()
        self.errors: list[str] = []

    def _record(self, session_id: fix.SessionID, message: fix.Message, *, outbound: bool,
                admin: bool) -> None:
        entry = Traffic(session_id.getSenderCompID().getValue(), outbound, admin,
                        FixMessage.parse(message.toString()))
        with self._lock:
            self.traffic.append(entry)

    def _guarded(self, action: Callable[[], None]) -> None:
        # an exception escaping into QuickFIX's thread would be lost (or abort the engine):
        # keep it for the test to report
        try:
            action()
        except Exception:
            with self._lock:
                self.errors.append(traceback.format_exc())

    def _sign_logon(self, message: fix.Message) -> None:
        header = message.getHeader()
        if header.getField(35) != "A":
            return
        sender = header.getField(49)
        text = "|".join(header.getField(tag) for tag in LOGON_SIGNED_TAGS)
        message.setField(USERNAME, self._accounts[sender])
        message.setField(PASSWORD, sign_text(self._keys[sender], text))

    def onCreate(self, session_id: fix.SessionID) -> None:  # noqa: N802 (QuickFIX's name)
        """Nothing to set up per session."""

    def onLogon(self, session_id: fix.SessionID) -> None:  # noqa: N802
        """Note the session as logged on."""
        with self._lock:
            self.logged_on.add(session_id.getSenderCompID().getValue())

    def onLogout(self, session_id: fix.SessionID) -> None:  # noqa: N802
        """Note the session as logged out."""
        with self._lock:
            self.logged_on.discard(session_id.getSenderCompID().getValue())

    def toAdmin(self, message: fix.Message, session_id: fix.SessionID) -> None:  # noqa: N802
        """Sign a Logon, then record the admin message as QuickFIX sends it."""
        def sign_and_record() -> None:
            self._sign_logon(message)
            self._record(session_id, message, outbound=True, admin=True)

        self._guarded(sign_and_record)

    def fromAdmin(self, message: fix.Message, session_id: fix.SessionID) -> None:  # noqa: N802
        """Record an admin message that passed QuickFIX's checks."""
        self._guarded(lambda: self._record(session_id, message, outbound=False, admin=True))

    def toApp(self, message: fix.Message, session_id: fix.SessionID) -> None:  # noqa: N802
        """Record an application message QuickFIX sends (BusinessMessageReject included)."""
        self._guarded(lambda: self._record(session_id, message, outbound=True, admin=False))

    def fromApp(self, message: fix.Message, session_id: fix.SessionID) -> None:  # noqa: N802
        """Record an application message that passed QuickFIX's validation."""
        self._guarded(lambda: self._record(session_id, message, outbound=False, admin=False))

    def snapshot(self) -> tuple[list[Traffic], set[str], list[str]]:
        """Copies of the traffic, the logged-on SenderCompIDs and the callback errors."""
        with self._lock:
            return list(self.traffic), set(self.logged_on), list(self.errors)


def session_settings(directory: Path, port: int, sender_comp_ids: Iterable[str]) -> str:
    """A SocketInitiator configuration: one FIX.4.4 session to CMX per SenderCompID, the
    stock FIX44.xml as data dictionary and QuickFIX's default validation left on."""
    default = f"""[DEFAULT]
ConnectionType=initiator
BeginString={BEGIN_STRING}
TargetCompID={EXCHANGE_COMP_ID}
SocketConnectHost=127.0.0.1
SocketConnectPort={port}
HeartBtInt=5
ReconnectInterval=1
StartTime=00:00:00
EndTime=00:00:00
UseDataDictionary=Y
DataDictionary={stock_fix44_xml()}
ResetOnLogon=Y
FileStorePath={directory / "store"}
FileLogPath={directory / "log"}
"""
    sessions = "".join(f"[SESSION]\nSenderCompID={sender}\n" for sender in sender_comp_ids)
    return default + sessions


class QuickFixInitiator:
    """A QuickFIX SocketInitiator with one signed session per key (SenderCompID -> private
    key), to be driven from an asyncio test whose loop serves the exchange meanwhile."""

    def __init__(self, directory: Path, port: int, keys: dict[str, str]) -> None:
        self.directory = directory
        self._application = _Recorder(keys)
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "initiator.cfg"
        config.write_text(session_settings(directory, port, keys))
        settings = fix.SessionSettings(str(config))
        self._initiator = fix.SocketInitiator(self._application, fix.FileStoreFactory(settings),
                                              settings, fix.FileLogFactory(settings))

    def start(self) -> None:
        """Start connecting (QuickFIX's threads)."""
        self._initiator.start()

    async def stop(self) -> None:
        """Log out and stop, off the event loop: QuickFIX waits for the exchange's Logout,
        which the loop has to serve."""
        await asyncio.to_thread(self._initiator.stop)

    @staticmethod
    def session_id(sender: str) -> fix.SessionID:
        """The session of ``sender``."""
        return fix.SessionID(BEGIN_STRING, sender, EXCHANGE_COMP_ID)

    def send(self, sender: str, msg_type: str, body: Iterable[tuple[int, str]]) -> None:
        """Send an application message; QuickFIX fills in the header and trailer."""
        message = fix.Message()
        message.getHeader().setField(35, msg_type)
        for tag, value in body:
            message.setField(tag, value)
        if not fix.Session.sendToTarget(message, self.session_id(sender)):
            raise RuntimeError(f"QuickFIX did not send {msg_type} for {sender}")

    def traffic(self) -> list[Traffic]:
        """Everything sent and received so far."""
        return self._application.snapshot()[0]

    def problems(self) -> list[str]:
        """What went wrong on QuickFIX's side: every Reject or BusinessMessageReject it sent
        (an exchange message failed its validation), a Logout it sent with a reason (its
        answer to a fatal session error), a Logout the exchange sent first, and any error in
        the callbacks."""
        traffic, _, errors = self._application.snapshot()
        found = []
        logging_out = False
        for t in traffic:
            kind = t.message.msg_type
            if t.outbound and (kind in REJECT_TYPES or (kind == "5" and t.message.get(58))):
                found.append(f"QuickFIX sent {t.message}")
            elif kind == "5" and not t.outbound and not logging_out:
                found.append(f"the exchange logged out: {t.message}")
            logging_out = logging_out or (kind == "5" and t.outbound)
        return found + errors

    def event_log(self) -> str:
        """QuickFIX's own event logs (its reasons for any reject), for failure reports."""
        return "\n".join(path.read_text(errors="replace")
                         for path in sorted((self.directory / "log").glob("*.event.current.log")))

    def _failure(self, what: str) -> AssertionError:
        traffic = "\n".join(f"{'>>' if t.outbound else '<<'} {t.message}"
                            for t in self.traffic())
        return AssertionError(f"{what}\nproblems: {self.problems()}\ntraffic:\n{traffic}\n"
                              f"QuickFIX event log:\n{self.event_log()}")

    async def _until(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.problems() or time.monotonic() > deadline:
                raise self._failure(what)
            await asyncio.sleep(0.01)

    async def logged_on(self, sender: str, timeout: float = 20) -> None:
        """Wait until ``sender``'s session is logged on."""
        await self._until(lambda: sender in self._application.snapshot()[1],
                          f"{sender} did not log on", timeout)

    async def received(self, sender: str, msg_type: str, tags: dict[int, str],
                       timeout: float = 20) -> FixMessage:
        """Wait for an application message ``msg_type`` with ``tags`` that reached
        ``sender``'s fromApp, that is, passed QuickFIX's validation."""
        def found() -> FixMessage | None:
            return next((t.message for t in self.traffic()
                         if t.sender == sender and not t.outbound and not t.admin
                         and t.message.matches(msg_type, tags)), None)

        await self._until(lambda: found() is not None,
                          f"{sender} received no valid {msg_type} with {tags}", timeout)
        message = found()
        assert message is not None
        return message
