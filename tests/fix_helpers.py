"""Builders shared by the FIX application tests: sans-I/O `FixConnection`s over a `Floor`, a
book rebuilt from W and X, and the stock FIX44 dictionary's verdict on what CMX sends.

A `FixLink` plays the counterparty of one `FixConnection`: it encodes messages with the
codec, feeds them, pumps the floor's gateway and returns every application message the
connection sent meanwhile (including those sent from gateway callbacks).
"""

from __future__ import annotations

import functools
import sysconfig
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import quickfix

from engine.exchange import Exchange
from engine.messages import Side
from gateway.auth import address_of, sign_text
from gateway.fix_app import EXCHANGE_COMP_ID, FixAcceptor, FixConnection
from gateway.fix_codec import (
    ADMIN_MSG_TYPES,
    Field,
    FixMessage,
    FixParser,
    encode,
    format_utc_timestamp,
)
from gateway.fix_session import Action, Disconnect, Send
from gateway.fix_store import MemoryStore, SessionStore
from gateway.rate_limit import RateLimit
from tests.ws_helpers import Floor

Book = dict[str, dict[Decimal, Decimal]]  # MDEntryType "0"/"1" -> price -> size


def fix_acceptor(floor: Floor, rate_limit: RateLimit | None = None) -> FixAcceptor:
    """An acceptor over the floor's gateway with in-memory session stores."""
    stores: dict[tuple[str, str], SessionStore] = {}

    def open_store(sender: str, target: str) -> SessionStore:
        return stores.setdefault((sender, target), MemoryStore())

    if rate_limit is None:
        return FixAcceptor(floor.gateway, open_store)
    return FixAcceptor(floor.gateway, open_store, rate_limit=rate_limit)


class FixLink:
    """A FIX counterparty, logged on with ``key`` as ``sender``, driving one connection."""

    def __init__(self, floor: Floor, acceptor: FixAcceptor, key: str, now_ns: int,
                 sender: str = "MM1", logon: Sequence[Field] = ()) -> None:
        self.floor = floor
        self.account = address_of(key)
        self.sender = sender
        self.now_ns = now_ns
        self.seq = 1
        self.disconnected = False
        self._parser = FixParser()
        self._pending: list[FixMessage] = []
        self.connection = FixConnection(acceptor, self._carry, now_ns)
        self._carry(self.connection.connection_made(now_ns))
        sending_time = format_utc_timestamp(now_ns)
        text = f"{sending_time}|1|{sender}|{EXCHANGE_COMP_ID}"
        answer = self.send("A", [(98, 0), (108, 30), (553, self.account),
                                 (554, sign_text(key, text)), *logon], admin=True)
        assert not self.disconnected, answer

    def _carry(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                for message in self._parser.feed(action.data):
                    assert isinstance(message, FixMessage), message
                    self._pending.append(message)
            elif isinstance(action, Disconnect):
                self.disconnected = True

    def send(self, msg_type: str, body: Sequence[Field], *, admin: bool = False,
             pump: bool = True) -> list[FixMessage]:
        """Send one message; the application messages that came back (every message with
        ``admin``), in order."""
        raw = encode(msg_type, body, sender=self.sender, target=EXCHANGE_COMP_ID,
                     seq=self.seq, sending_time=format_utc_timestamp(self.now_ns))
        self.seq += 1
        self._carry(self.connection.on_bytes(raw, self.now_ns))
        self.now_ns += 1_000_000
        if pump:
            self.floor.pump()
        return self.received(admin=admin)

    def received(self, *, admin: bool = False) -> list[FixMessage]:
        """What the connection sent since the last look."""
        out, self._pending = self._pending, []
        return out if admin else [m for m in out if m.msg_type not in ADMIN_MSG_TYPES]

    def close(self) -> None:
        """The transport drops."""
        self._carry(self.connection.connection_lost(self.now_ns))
        self.floor.pump()


def of_type(messages: Sequence[FixMessage], msg_type: str) -> list[FixMessage]:
    """The messages of ``msg_type``."""
    return [m for m in messages if m.msg_type == msg_type]


def apply_market_data(books: dict[str, Book], message: FixMessage) -> None:
    """Apply a W or X to per-symbol books kept as a FIX client keeps them, checking that each
    X action fits the book (new only for a level not held, change and delete only for one
    held)."""
    if message.msg_type == "W":
        book: Book = {"0": {}, "1": {}}
        for entry in message.groups(268, (269, 270, 271)):
            kind = entry.get(269) or ""
            if kind in book:
                book[kind][Decimal(entry.get(270) or "")] = Decimal(entry.get(271) or "")
        books[message.get(55) or ""] = book
        return
    assert message.msg_type == "X", message
    for entry in message.groups(268, (279, 269, 55, 270, 271)):
        kind = entry.get(269) or ""
        if kind == "2":
            continue
        levels = books[entry.get(55) or ""][kind]
        price, action = Decimal(entry.get(270) or ""), entry.get(279)
        assert (price in levels) == (action != "0"), (action, price, levels)
        if action == "2":
            del levels[price]
        else:
            levels[price] = Decimal(entry.get(271) or "")


def engine_book(exchange: Exchange, symbol: str, depth: int) -> Book:
    """The engine's top ``depth`` levels of ``symbol`` in the same shape."""
    market = exchange.markets[symbol]
    instrument = market.instrument
    return {
        kind: {Decimal(instrument.ticks_to_price(p)): Decimal(instrument.lots_to_qty(q))
               for p, q in market.book.depth(side, depth)}
        for kind, side in (("0", Side.BUY), ("1", Side.SELL))
    }


def stock_dictionary() -> Path:
    """The FIX44.xml the quickfix package installs (its data files)."""
    return Path(sysconfig.get_path("data")) / "share" / "quickfix" / "FIX44.xml"


@functools.cache
def _dictionary() -> quickfix.DataDictionary:
    return quickfix.DataDictionary(str(stock_dictionary()))


def stock_problem(message: FixMessage) -> str | None:
    """Why QuickFIX, validating with its stock FIX44.xml, refuses ``message`` (None: it
    accepts it)."""
    dictionary = _dictionary()
    try:
        parsed = quickfix.Message(message.raw.decode(), dictionary, True)
        dictionary.validate(parsed)
    except quickfix.FIXException as exc:  # every QuickFIX error derives from it
        return f"{type(exc).__name__}: {exc}"
    return None
