"""Private keys as the command line takes them, and the development accounts.

The development accounts are the first ten of the well-known mnemonic
``test test test test test test test test test test test junk`` (m/44'/60'/0'/0/0..9), the
accounts every local Ethereum node funds. Their keys are public: development only.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

DEV_MNEMONIC = "test test test test test test test test test test test junk"
DEV_ACCOUNTS = 10


def read_key(text: str) -> str:
    """A private key given as hex or as the path of a file holding it."""
    path = Path(text)
    return path.read_text().strip() if not text.startswith("0x") and path.is_file() else text


@cache
def dev_keys() -> tuple[tuple[str, str], ...]:
    """The development accounts as (lower-case address, 0x private key), derived once."""
    from eth_account import Account  # noqa: PLC0415 (a second to import: only when needed)
    from eth_account.hdaccount import key_from_seed, seed_from_mnemonic  # noqa: PLC0415

    seed = seed_from_mnemonic(DEV_MNEMONIC, passphrase="")
    keys = []
    for i in range(DEV_ACCOUNTS):
        key = key_from_seed(seed, f"m/44'/60'/0'/0/{i}")
        keys.append((str(Account.from_key(key).address).lower(), "0x" + key.hex()))
    return tuple(keys)
