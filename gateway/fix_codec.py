"""FIX 4.4 tag=value codec: message building, an incremental parser, groups and timestamps.

Sans-I/O and stateless apart from the parser's buffer.

- ``encode(msg_type, body, sender=, target=, seq=, sending_time=, header=())`` builds one
  message: ``8=FIX.4.4``, ``9`` BodyLength, ``35``, ``49``, ``56``, ``34``, ``52``, the extra
  header fields (e.g. 43 PossDupFlag, 122 OrigSendingTime), the body, and ``10`` CheckSum.
  BodyLength counts the bytes after ``9=n<SOH>`` up to and including the SOH before ``10=``;
  CheckSum is the sum of the bytes from ``8=`` to that SOH, mod 256, as three digits.
  Field values are ``str`` (UTF-8), ``int`` or ``bytes``; they may not contain SOH or be empty.
- ``group_fields(count_tag, entries)`` flattens a repeating group for ``encode``;
  ``encode_fields``, ``frame`` and ``checksum_of`` are the pieces ``encode`` is made of.
  ``HEADER_TAGS``, ``FIX44_MSG_TYPES`` and ``ADMIN_MSG_TYPES`` are the stock sets.
- ``FixParser().feed(data)`` takes bytes in arbitrary chunks and returns, in stream order,
  ``FixMessage`` for each well-formed message and ``Garbled(reason, raw)`` for each stretch
  of bytes it dropped (wrong BeginString, bad BodyLength, wrong CheckSum, MsgType not the
  third field, a malformed field, a message over ``max_message_size``, bytes between
  messages). It never raises on its input, resynchronises on the next ``8=FIX``, and holds at
  most about ``max_message_size`` bytes. Every fed byte ends up in exactly one result's
  ``raw`` or is still buffered. Raw data fields (95/96...) holding SOH are not supported.
- ``decode(data)`` parses exactly one whole message (``FixMessage`` or ``Garbled``).
- ``possdup_parts(raw)`` takes a sent message apart for a PossDup resend.
- ``FixMessage``: ``fields`` (tag, str value) in wire order, ``raw``, ``msg_type``,
  ``get(tag)`` (first occurrence), ``get_int(tag)``, ``get_all(tag)``, and
  ``groups(count_tag, tags)`` returning one ``FieldGroup`` (same accessors) per group entry;
  nested groups are read with ``entry.groups(...)``. Malformed groups raise ``GroupError``.
- ``format_utc_timestamp(ns)`` -> ``YYYYMMDD-HH:MM:SS.sss``; ``parse_utc_timestamp(text)``
  -> ns since the epoch or None, with or without fractional seconds (3, 6 or 9 digits).
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

SOH = b"\x01"
BEGIN_STRING = "FIX.4.4"
MAX_MESSAGE_SIZE = 64 * 1024

FieldValue = str | int | bytes
Field = tuple[int, FieldValue]

_BEGIN = b"8=FIX.4.4\x01"
_RESYNC = b"8=FIX"
# A begin string right after a field separator inside a frame means the frame is broken
# (a valid message never carries tag 8 in its body).
_EMBEDDED_BEGIN = b"\x018=FIX.4.4\x01"
_BODY_LENGTH_DIGITS = 6
_TRAILER_SIZE = 7  # "10=nnn<SOH>"

# Standard header tags of FIX 4.4 (besides 8, 9, 35), in the order this codec writes them
# when they are passed as extra header fields.
HEADER_TAGS = frozenset({
    49, 56, 115, 128, 90, 91, 50, 142, 57, 143, 116, 144, 129, 145, 34, 43, 97, 52, 122,
    212, 213, 347, 369, 627, 628, 629, 630,
})

# Every MsgType of the FIX 4.4 specification.
FIX44_MSG_TYPES = frozenset((
    *"0123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    *(f"A{letter}" for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    *(f"B{letter}" for letter in "ABCDEFGH"),
))
ADMIN_MSG_TYPES = frozenset({"0", "1", "2", "3", "4", "5", "A"})


class GroupError(ValueError):
    """A repeating group whose NumInGroup is not a count or disagrees with its entries."""

    def __init__(self, count_tag: int, text: str) -> None:
        super().__init__(text)
        self.count_tag = count_tag


class FieldGroup:
    """An ordered run of fields (a message body or one repeating-group entry)."""

    __slots__ = ("_first", "fields")

    def __init__(self, fields: tuple[tuple[int, str], ...]) -> None:
        self.fields = fields
        self._first = dict(reversed(fields))  # the first occurrence of a tag wins

    def get(self, tag: int) -> str | None:
        """The first value of ``tag``, or None."""
        return self._first.get(tag)

    def get_int(self, tag: int) -> int | None:
        """The first value of ``tag`` as a plain decimal integer (up to 18 digits), or None
        if absent or not one."""
        value = self._first.get(tag)
        if value is None or not _is_int(value):
            return None
        return int(value)

    def get_all(self, tag: int) -> list[str]:
        """Every value of ``tag`` in order."""
        return [value for field_tag, value in self.fields if field_tag == tag]

    def groups(self, count_tag: int, tags: Sequence[int]) -> list[FieldGroup]:
        """The entries of the repeating group counted by ``count_tag``.

        ``tags`` lists every tag an entry may hold, the delimiter (first field of each
        entry) first and the tags of nested groups included. An entry runs until the next
        delimiter or the first tag not in ``tags``. No ``count_tag`` means no entries.
        Raises ``GroupError`` when the count is not a number or does not match.
        """
        members = set(tags)
        delimiter = tags[0]
        index = next((i for i, (tag, _) in enumerate(self.fields) if tag == count_tag), -1)
        if index < 0:
            return []
        value = self.fields[index][1]
        if not _is_int(value):
            raise GroupError(count_tag, f"NumInGroup {count_tag}={value!r} is not a count")
        count = int(value)
        entries: list[FieldGroup] = []
        position = index + 1
        while position < len(self.fields) and self.fields[position][0] == delimiter:
            end = position + 1
            while (end < len(self.fields) and self.fields[end][0] in members
                   and self.fields[end][0] != delimiter):
                end += 1
            entries.append(FieldGroup(self.fields[position:end]))
            position = end
        if len(entries) != count:
            raise GroupError(
                count_tag, f"NumInGroup {count_tag}={count} but {len(entries)} entries follow"
            )
        return entries


class FixMessage(FieldGroup):
    """A parsed message: its fields from 8 to 10 in wire order, and its bytes."""

    __slots__ = ("raw",)

    def __init__(self, fields: tuple[tuple[int, str], ...], raw: bytes) -> None:
        super().__init__(fields)
        self.raw = raw

    @property
    def msg_type(self) -> str:
        """MsgType (35); the parser guarantees it is present."""
        return self._first.get(35, "")

    def __repr__(self) -> str:
        return f"FixMessage({self.raw.replace(SOH, b'|')!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FixMessage) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)


@dataclass(frozen=True, slots=True)
class Garbled:
    """Bytes the parser dropped, and why. FIX says a garbled message is ignored."""

    reason: str
    raw: bytes


ParseResult = FixMessage | Garbled


def _is_int(text: str) -> bool:
    # At most 18 digits: FIX numbers are far smaller, and Python refuses to convert
    # strings of thousands of digits.
    return len(text) <= 18 and text.isascii() and text.isdigit()


def _text(value: FieldValue) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def encode_fields(fields: Iterable[Field]) -> bytes:
    """Tag=value<SOH> for each field, no framing."""
    parts = [f"{tag}={_text(value)}\x01" for tag, value in fields]
    text = "".join(parts)
    # One SOH per field and no "tag=<SOH>": no value held SOH or was empty.
    if text.count("\x01") != len(parts) or (
        "=\x01" in text and any(part.endswith("=\x01") and part.count("=") == 1
                                for part in parts)
    ):
        raise ValueError(f"a FIX field value may not be empty or hold SOH: {text!r}")
    return text.encode("utf-8", "surrogateescape")


def frame(body: bytes) -> bytes:
    """Wrap the fields from 35 on (``body``, ending in SOH) with 8, 9 and 10."""
    message = b"8=FIX.4.4\x019=%d\x01%s" % (len(body), body)
    return b"%s10=%03d\x01" % (message, checksum_of(message))


def encode(
    msg_type: str,
    body: Iterable[Field],
    *,
    sender: str,
    target: str,
    seq: int,
    sending_time: str,
    header: Iterable[Field] = (),
) -> bytes:
    """One complete message; ``header`` fields go after 52 and before the body."""
    start = encode_fields(
        ((35, msg_type), (49, sender), (56, target), (34, seq), (52, sending_time))
    )
    return frame(start + encode_fields(header) + encode_fields(body))


def group_fields(count_tag: int, entries: Sequence[Sequence[Field]]) -> list[Field]:
    """A repeating group as flat fields: the count, then each entry's fields."""
    fields: list[Field] = [(count_tag, len(entries))]
    for entry in entries:
        fields.extend(entry)
    return fields


def checksum_of(data: bytes) -> int:
    """FIX CheckSum of the bytes before ``10=``: their sum mod 256. Adler-32's first half
    is 1 + the byte sum, exact for chunks of up to 256 bytes, and runs in C."""
    total = 0
    for start in range(0, len(data), 256):
        total += (zlib.adler32(data[start:start + 256]) & 0xFFFF) - 1
    return total % 256


# A field starts at an SOH (the body is given a leading one); its value runs to the next SOH.
_FIELD = re.compile(r"\x01([1-9][0-9]{0,8})=([^\x01]*)")


def _split_fields(data: bytes) -> tuple[tuple[int, str], ...] | None:
    """Fields of ``data`` (which ends in SOH), or None if one is not ``tag=value``."""
    text = "\x01" + data.decode("utf-8", "surrogateescape")
    pairs = _FIELD.findall(text)
    if len(pairs) != text.count("\x01") - 1:
        return None
    return tuple([(int(tag), value) for tag, value in pairs])


class FixParser:
    """Incremental parser: ``feed`` bytes as they arrive, get messages and garbled runs."""

    __slots__ = ("_buffer", "max_message_size")

    def __init__(self, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self._buffer = bytearray()
        self.max_message_size = max_message_size

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[ParseResult]:
        """Parse as much as ``data`` completes; never raises."""
        self._buffer += data
        results: list[ParseResult] = []
        while self._buffer:
            result = self._next()
            if result is None:
                break
            results.append(result)
        return results

    def _drop(self, reason: str) -> Garbled:
        """Drop up to the next possible message start (a later ``8=FIX``)."""
        buffer = self._buffer
        cut = buffer.find(_RESYNC, 1)
        if cut < 0:
            # Keep a tail that may be the start of a begin string still arriving.
            cut = len(buffer)
            for keep in range(min(len(_RESYNC) - 1, len(buffer) - 1), 0, -1):
                if _RESYNC.startswith(buffer[-keep:]):
                    cut = len(buffer) - keep
                    break
        raw = bytes(buffer[:cut])
        del buffer[:cut]
        return Garbled(reason, raw)

    def _next(self) -> ParseResult | None:
        buffer = self._buffer
        if not buffer.startswith(_BEGIN):
            if len(buffer) < len(_BEGIN) and _BEGIN.startswith(buffer):
                return None
            if buffer.startswith(_RESYNC):
                return self._drop("BeginString is not FIX.4.4")
            return self._drop("bytes outside a message")
        start = len(_BEGIN)
        if len(buffer) < start + 2:
            return None
        if buffer[start:start + 2] != b"9=":
            return self._drop("BodyLength is not the second field")
        digits_start = start + 2
        soh = buffer.find(SOH, digits_start, digits_start + _BODY_LENGTH_DIGITS + 1)
        if soh < 0:
            if len(buffer) > digits_start + _BODY_LENGTH_DIGITS:
                return self._drop("BodyLength too long")
            if not bytes(buffer[digits_start:]).isdigit() and len(buffer) > digits_start:
                return self._drop("BodyLength not a number")
            return None
        digits = bytes(buffer[digits_start:soh])
        if not digits.isdigit():
            return self._drop("BodyLength not a number")
        body_start = soh + 1
        body_end = body_start + int(digits)
        total = body_end + _TRAILER_SIZE
        if total > self.max_message_size:
            return self._drop("message over the size limit")
        if buffer.find(_EMBEDDED_BEGIN, body_start - 1, min(total, len(buffer))) >= 0:
            return self._drop("BodyLength disagrees with the message")
        if len(buffer) < total:
            return None
        if (buffer[body_end - 1] != 1 or buffer[body_end:body_end + 3] != b"10="
                or buffer[total - 1] != 1):
            return self._drop("BodyLength disagrees with the message")
        checksum = bytes(buffer[body_end + 3:total - 1])
        if not checksum.isdigit() or int(checksum) != checksum_of(bytes(buffer[:body_end])):
            return self._drop("CheckSum mismatch")
        body = bytes(buffer[body_start:body_end])
        if not body.startswith(b"35="):
            return self._drop("MsgType is not the third field")
        fields = _split_fields(body)
        if fields is None:
            return self._drop("malformed field")
        raw = bytes(buffer[:total])
        del buffer[:total]
        return FixMessage(
            ((8, BEGIN_STRING), (9, digits.decode()), *fields, (10, checksum.decode())), raw
        )


def decode(data: bytes) -> ParseResult:
    """One whole message (e.g. a stored one); anything else is ``Garbled``."""
    parser = FixParser(max(len(data), MAX_MESSAGE_SIZE))
    results = parser.feed(data)
    if len(results) == 1 and parser.buffered == 0:
        return results[0]
    return Garbled("not exactly one message", data)


_NOT_REPLAYED = frozenset({8, 9, 10, 35, 49, 56, 34, 52, 43, 97, 122})


def possdup_parts(raw: bytes) -> tuple[str, list[Field], list[Field]] | None:
    """A sent message taken apart for a resend: (MsgType, extra header with 43=Y and
    122 = its SendingTime, body). None if ``raw`` is not one message."""
    message = decode(raw)
    if isinstance(message, Garbled) or message.get(52) is None:
        return None
    header: list[Field] = [(43, "Y"), (122, message.get(52) or "")]
    body: list[Field] = []
    for tag, value in message.fields:
        if tag not in _NOT_REPLAYED:
            (header if tag in HEADER_TAGS else body).append((tag, value))
    return message.msg_type, header, body


_SECOND = re.compile(r"([0-9]{8})-([0-9]{2}):([0-9]{2}):([0-9]{2})")
_NS = 1_000_000_000


@functools.lru_cache(maxsize=8)
def _second_text(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y%m%d-%H:%M:%S")


@functools.lru_cache(maxsize=256)
def _second_ns(text: str) -> int | None:
    """``YYYYMMDD-HH:MM:SS`` as ns since the epoch (seconds may be 60, a leap second)."""
    match = _SECOND.fullmatch(text)
    if match is None:
        return None
    date, hour, minute, second = match.groups()
    try:
        day = datetime.strptime(date, "%Y%m%d").replace(tzinfo=UTC)
    except ValueError:
        return None
    hours, minutes, seconds = int(hour), int(minute), int(second)
    if hours > 23 or minutes > 59 or seconds > 60:
        return None
    return (int(day.timestamp()) + (hours * 60 + minutes) * 60 + seconds) * _NS


def format_utc_timestamp(ns: int) -> str:
    """UTCTimestamp with milliseconds, e.g. ``20270105-14:03:07.123``."""
    seconds, rest = divmod(ns, _NS)
    return f"{_second_text(seconds)}.{rest // 1_000_000:03d}"


def parse_utc_timestamp(text: str) -> int | None:
    """Nanoseconds since the epoch of a UTCTimestamp, or None if it is not one; with no
    fraction or with 3, 6 or 9 digits of it."""
    if len(text) not in (17, 21, 24, 27):
        return None
    second_ns = _second_ns(text[:17])
    if second_ns is None or len(text) == 17:
        return second_ns
    fraction = text[18:]
    if text[17] != "." or not (fraction.isascii() and fraction.isdigit()):
        return None
    return second_ns + int(fraction.ljust(9, "0"))
