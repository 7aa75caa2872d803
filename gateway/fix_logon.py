"""Logon authentication of the FIX acceptor.

A Logon must carry 553 Username = the account's address and 554 Password = an EIP-191
signature (0x hex) over ``SendingTime|MsgSeqNum|SenderCompID|TargetCompID`` of that Logon, by
the account's key, or by an API key the account delegated: then 96 RawData holds
``key,expires,delegation signature`` (see `gateway.auth.delegation_text`). A Logon more than
`LOGON_TOLERANCE_NS` from the server's clock, or not later than the last one accepted for its
SenderCompID, is refused. The first logon binds a SenderCompID to its account.
"""

from __future__ import annotations

from gateway.auth import delegation_text, recover_signer
from gateway.fix_codec import FixMessage, parse_utc_timestamp

LOGON_TOLERANCE_NS = 30 * 1_000_000_000


def check_logon(logon: FixMessage, now_ns: int, bindings: dict[str, str],
                last_logon_ns: dict[str, int]) -> str | None:
    """None if ``logon`` is accepted (its SenderCompID is then bound to its account in
    ``bindings`` and its SendingTime kept in ``last_logon_ns``), else why it is refused."""
    sender, account = logon.get(49) or "", (logon.get(553) or "").lower()
    sending_time = parse_utc_timestamp(logon.get(52) or "")
    if not account or not logon.get(554):
        return "Logon needs 553 (account address) and 554 (signature)"
    if sending_time is None or abs(sending_time - now_ns) > LOGON_TOLERANCE_NS:
        return "stale Logon: SendingTime too far from the exchange's clock"
    if sending_time <= last_logon_ns.get(sender, 0):
        return "replayed Logon: SendingTime not after the last accepted Logon"
    bound = bindings.get(sender)
    if bound is not None and bound != account:
        return f"SenderCompID {sender} is bound to another account"
    text = f"{logon.get(52)}|{logon.get(34)}|{sender}|{logon.get(56)}"
    signer = recover_signer(text, logon.get(554) or "")
    raw = logon.get(96)
    if raw:
        key, _, rest = raw.partition(",")
        expires, _, grant = rest.partition(",")
        if signer != key.lower():
            return "Logon refused: signature is not by the delegated key in 96"
        if not expires.isdigit() or int(expires) * 1_000_000_000 <= now_ns:
            return "Logon refused: delegation has expired"
        if recover_signer(delegation_text(account, key, int(expires)), grant) != account:
            return "Logon refused: delegation is not signed by the account"
    elif signer != account:
        return "Logon refused: signature is not by the account"
    bindings[sender] = account
    last_logon_ns[sender] = sending_time
    return None
