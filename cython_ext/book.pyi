"""Type stub of the Cython matching core (cython_ext/book.pyx)."""

from typing_extensions import Buffer

RestingOrder = tuple[int, int, int, int, int, int, int, int, int, int, bool]
PendingStop = tuple[int, int, int, int, int, int, int, int, int, int]

COMMAND_WORDS: int
EVENT_WORDS: int
COMMAND_KINDS: dict[str, int]
EVENT_KINDS: dict[str, int]
ENUMS: dict[str, dict[str, int]]
MAX_QTY: int
MAX_LEVELS: int

class MatchingCore:
    min_price: int
    max_price: int
    last_price: int
    next_trade_id: int
    def __init__(self, min_price: int, max_price: int) -> None: ...
    def new_order(
        self,
        ts: int,
        order_id: int,
        account: int,
        side: int,
        price: int,
        qty: int,
        order_type: int = 0,
        tif: int = 0,
        post_only: int = 0,
        display_qty: int = 0,
        stop_price: int = 0,
        expire_ts: int = 0,
        stp: int = 0,
    ) -> int: ...
    def cancel(self, ts: int, order_id: int, account: int) -> int: ...
    def amend(self, ts: int, order_id: int, account: int, price: int, qty: int) -> int: ...
    def mass_cancel(self, ts: int, account: int, side: int = -1) -> int: ...
    def expire_orders(self, ts: int) -> int: ...
    def events(self) -> list[tuple[int, ...]]: ...
    def apply_batch(self, commands: Buffer) -> int: ...
    def command_ends(self) -> list[int]: ...
    def event_words(self) -> bytes: ...
    def paced_latencies(
        self, commands: Buffer, interval_ns: int, out: Buffer, service: Buffer | None = None
    ) -> None: ...
    def restore_resting(
        self,
        order_id: int,
        account: int,
        side: int,
        price: int,
        remaining: int,
        shown: int,
        display_qty: int,
        tif: int,
        expire_ts: int,
        stp: int,
        post_only: bool,
    ) -> None: ...
    def restore_stop(
        self,
        order_id: int,
        account: int,
        side: int,
        order_type: int,
        price: int,
        stop_price: int,
        qty: int,
        tif: int,
        expire_ts: int,
        stp: int,
    ) -> None: ...
    def restore_trading(self, last_price: int, next_trade_id: int) -> None: ...
    def best_bid(self) -> int | None: ...
    def best_ask(self) -> int | None: ...
    def depth(self, side: int, levels: int) -> list[tuple[int, int]]: ...
    def resting_orders(self) -> list[RestingOrder]: ...
    def pending_stops(self) -> list[PendingStop]: ...
    def __contains__(self, order_id: int) -> bool: ...
    def __len__(self) -> int: ...
