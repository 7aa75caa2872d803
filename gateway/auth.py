"""Login: EIP-191 signatures over single-use nonces, by an account key or a delegated API key.

The server stores no secrets. A connection gets a nonce (in its welcome message, or on
``challenge``); its login signs `login_text` for that nonce, which is then spent. An account
may let an API key trade for it by signing `delegation_text` once; the key then logs in by
signing the login text itself and presenting the account's signed delegation, which holds
until its ``expires`` time. Addresses are compared in lower case.
"""

from __future__ import annotations

import secrets
from functools import cache
from typing import Any

NONCE_TTL_NS = 60 * 1_000_000_000


def login_text(account: str, nonce: str) -> str:
    """What a login signs (EIP-191 personal message)."""
    return f"CMX login\naccount: {account.lower()}\nnonce: {nonce}"


def delegation_text(account: str, key: str, expires: int) -> str:
    """What an account signs to let ``key`` trade for it until ``expires`` (Unix seconds)."""
    return f"CMX API key\naccount: {account.lower()}\nkey: {key.lower()}\nexpires: {expires}"


@cache
def _eth_account() -> tuple[Any, Any]:
    """eth-account's Account and encode_defunct, imported on first use: the import takes
    about a second, which every `cmx` command would otherwise pay at start."""
    from eth_account import Account  # noqa: PLC0415
    from eth_account.messages import encode_defunct  # noqa: PLC0415

    return Account, encode_defunct


def recover_signer(text: str, signature: str) -> str | None:
    """The lower-case address that signed ``text`` (EIP-191), or None if it cannot be
    recovered."""
    account_type, encode_defunct = _eth_account()
    try:
        address: str = account_type.recover_message(encode_defunct(text=text), signature=signature)
    except Exception:  # any malformed signature is just "no signer"
        return None
    return address.lower()


def sign_text(private_key: str | bytes, text: str) -> str:
    """An EIP-191 signature of ``text`` as 0x-prefixed hex (for clients and tests)."""
    account_type, encode_defunct = _eth_account()
    signed = account_type.sign_message(encode_defunct(text=text), private_key=private_key)
    return "0x" + bytes(signed.signature).hex()


def address_of(private_key: str | bytes) -> str:
    """The lower-case address of a private key."""
    account_type, _ = _eth_account()
    return str(account_type.from_key(private_key).address).lower()


class Nonce:
    """One single-use login nonce with its expiry."""

    __slots__ = ("expires_ns", "spent", "value")

    def __init__(self, now_ns: int) -> None:
        self.value = secrets.token_hex(16)
        self.expires_ns = now_ns + NONCE_TTL_NS
        self.spent = False

    def take(self, value: str, now_ns: int) -> bool:
        """Spend the nonce if ``value`` is it and it has not expired or been spent."""
        if self.spent or now_ns > self.expires_ns or not secrets.compare_digest(value,
                                                                               self.value):
            return False
        self.spent = True
        return True


class LoginError(ValueError):
    """Why a login was refused (the message is safe to send to the client)."""


def verify_login(account: str, signature: str, nonce: str, *, delegated_key: str | None,
                 expires: int | None, delegation_signature: str | None, now_ns: int) -> str:
    """Check a login's signatures; return the key that signed it (the account or API key).

    The nonce itself is checked by the caller (`Nonce.take`)."""
    account = account.lower()
    signer = recover_signer(login_text(account, nonce), signature)
    if signer is None:
        raise LoginError("signature does not recover")
    if delegated_key is None:
        if signer != account:
            raise LoginError("signature is not by the account")
        return signer
    key = delegated_key.lower()
    if signer != key:
        raise LoginError("signature is not by the delegated key")
    assert expires is not None and delegation_signature is not None
    if expires * 1_000_000_000 <= now_ns:
        raise LoginError("delegation has expired")
    grantor = recover_signer(delegation_text(account, key, expires), delegation_signature)
    if grantor != account:
        raise LoginError("delegation is not signed by the account")
    return key
