"""``cmx serve --demo``: a live market on the development accounts. DEVELOPMENT ONLY.

The accounts are the first ten of the well-known development mnemonic
``test test test test test test test test test test test junk`` (paths m/44'/60'/0'/0/0..9),
the keys every Ethereum developer's local node funds. Their private keys are public: never
send anything of value to these addresses. In order:

====  ==========================================  ======
  #   address                                     role
====  ==========================================  ======
  0   0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266  maker
  1   0x70997970c51812dc3a010c7d01b50e0d17dc79c8  maker
  2   0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc  maker
  3   0x90f79bf6eb2c4f870365e785982e1f101e93b906  maker
  4   0x15d34aaf54267db7d7c367839aaf71a00a2c6a65  maker
  5   0x9965507d1a55bcc2695c58ba16fb37d819b0a4dc  maker
  6   0x976ea74026e726554db657fa54763abd0c3a0aa9  taker
  7   0x14dc79964da2c08b23698b3d3cc7ca32193d9955  taker
  8   0x23618e81e3f5cdf7f54c3d65f7fbc0abf5b21e8f  taker
  9   0xa0ee7a142d267c1f36714e4a8f75612f20a79720  taker
====  ==========================================  ======

`run_demo` funds them (once per data directory) and runs `gateway.demo_market.DemoMarket`
in the server's event loop; anyone may log in with one of the keys and trade against it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from engine.keys import dev_keys
from gateway.demo_market import FUNDING, MICRO, DemoMarket
from gateway.hub import Gateway

log = logging.getLogger("cmx.demo")

SUMMARY_EVERY_S = 300.0


def dev_accounts() -> list[str]:
    """The development accounts' addresses, account 0 first."""
    return [address for address, _ in dev_keys()]


async def run_demo(gateway: Gateway, pump: Callable[[], None], *, seed: int = 1,
                   interval_s: float = 0.05, fund: bool = True) -> None:
    """Fund the development accounts and trade on them every ``interval_s`` until cancelled.

    ``pump`` asks the server to commit what was submitted (`ExchangeServer.pump`). Without
    ``fund`` the accounts are funded elsewhere (by deposits on the chain) and trade once
    their money arrives.
    """
    market = DemoMarket(gateway.exchange, gateway.submit, random.Random(seed), dev_accounts())
    funded = market.open(gateway.clock(), fund=fund)
    pump()
    quoted = ", ".join(m.symbol for m, _ in market.quoted(gateway.clock()))
    log.info("demo market on %d development accounts (%s; %d funded now with %d USDC each), "
             "quoting %s", len(market.accounts), ", ".join(market.accounts), len(funded),
             FUNDING // MICRO, quoted)
    loop = asyncio.get_running_loop()
    next_summary = loop.time() + SUMMARY_EVERY_S
    try:
        while True:
            await asyncio.sleep(interval_s)
            market.step(gateway.clock())
            pump()
            if loop.time() >= next_summary:
                next_summary += SUMMARY_EVERY_S
                log.info("demo market: %d commands sent (%s)", sum(market.sent.values()),
                         ", ".join(f"{k} {v}" for k, v in sorted(market.sent.items())))
    except Exception:
        log.exception("demo market stopped")  # now, not when the server shuts down
        raise

