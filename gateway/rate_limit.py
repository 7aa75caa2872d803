"""Token-bucket rate limits (orders per second with a burst), driven by the caller's clock."""

from __future__ import annotations

import msgspec

NS = 1_000_000_000


class RateLimit(msgspec.Struct, frozen=True):
    """``rate`` requests per second on average, up to ``burst`` at once."""

    rate: int
    burst: int


class TokenBucket:
    """One bucket; `take` answers whether a request may go now. Integer arithmetic in
    nano-tokens, so no float drift."""

    __slots__ = ("_capacity", "_last_ns", "_nano_tokens", "_rate")

    def __init__(self, limit: RateLimit, now_ns: int) -> None:
        self._rate = limit.rate
        self._capacity = limit.burst * NS
        self._nano_tokens = self._capacity
        self._last_ns = now_ns

    def take(self, now_ns: int) -> bool:
        """Spend one token if there is one."""
        elapsed = now_ns - self._last_ns
        if elapsed > 0:
            self._nano_tokens = min(self._capacity, self._nano_tokens + elapsed * self._rate)
            self._last_ns = now_ns
        if self._nano_tokens >= NS:
            self._nano_tokens -= NS
            return True
        return False
