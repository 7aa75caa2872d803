"""The exchange's whole state as one canonical value: the snapshot and the state hash."""

from __future__ import annotations

import hashlib

import msgspec

from engine.book import BookState
from engine.clearing import ClearingState
from engine.delivery import Delivery
from engine.instruments import Instrument
from engine.ledger import Balances
from engine.market import LiveOrder
from engine.positions import Position
from engine.uptime import UptimeState


class ExchangeState(msgspec.Struct, frozen=True, array_like=True):
    """Everything the exchange knows, canonically ordered: a snapshot and the hash input."""

    last_seq: int
    last_ts: int
    next_order_id: int
    next_delivery_id: int
    cuts: int
    instruments: list[Instrument]
    account_ids: list[str]
    balances: list[tuple[str, Balances]]
    deposited: int
    withdrawn: int
    orders: list[LiveOrder]
    positions: list[tuple[str, str, Position]]
    markets: list[tuple[str, bool, bool, int, BookState]]
    deliveries: list[Delivery]
    capacity: list[tuple[str, str, int]]
    sold: list[tuple[str, str, int, int]]
    open_sells: list[tuple[str, str, int]]
    deposits_seen: list[int]
    withdrawals_seen: list[int]
    fixes: list[tuple[str, int, int]]
    clearing: ClearingState
    uptime: UptimeState


_state_encoder = msgspec.msgpack.Encoder()


def encode_state(state: ExchangeState) -> bytes:
    """The snapshot bytes of a state (msgpack)."""
    return _state_encoder.encode(state)


def state_digest(encoded: bytes) -> str:
    """The state hash of `encode_state` bytes."""
    return hashlib.blake2b(encoded, digest_size=16).hexdigest()


def decode_state(data: bytes) -> ExchangeState:
    """A state from `encode_state` bytes."""
    return msgspec.msgpack.decode(data, type=ExchangeState)
