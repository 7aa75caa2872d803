"""FIX codec properties: round trips of arbitrary fields, any chunking, hostile bytes, and a
cross-check against simplefix, an independent implementation."""

from __future__ import annotations

import simplefix
from hypothesis import given, settings
from hypothesis import strategies as st
from simplefix.data import RAW_DATA

from gateway.fix_codec import (
    Field,
    FieldValue,
    FixMessage,
    FixParser,
    Garbled,
    ParseResult,
    checksum_of,
    decode,
    encode,
    encode_fields,
    format_utc_timestamp,
    frame,
)
from gateway.fix_session import Disconnect
from tests.unit.test_fix_session import ACC, T0, client_message, logged_on_link

RAW_TAGS = {tag for pair in RAW_DATA for tag in pair}
STAMP = "20270115-08:00:00.000"

body_tags = st.integers(1, 99_999).filter(lambda tag: tag not in (8, 9, 10))
text_values = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x01"), min_size=1,
    max_size=24,
)
byte_values = st.binary(min_size=1, max_size=16).filter(lambda value: b"\x01" not in value)
values = st.one_of(text_values, st.integers(0, 10**15), byte_values)
bodies = st.lists(st.tuples(body_tags, values), max_size=25)
msg_types = st.text(st.characters(min_codepoint=0x30, max_codepoint=0x7A,
                                  exclude_characters="="), min_size=1, max_size=2)
comp_ids = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=10)
# Plain values for stream tests: no "=", so no value can look like the start of a message.
PLAIN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .-"
plain_bodies = st.lists(
    st.tuples(body_tags, st.text(PLAIN, min_size=1, max_size=12)),
    max_size=12,
)


@st.composite
def plain_messages(draw: st.DrawFn) -> bytes:
    return encode(draw(msg_types), draw(plain_bodies), sender=draw(comp_ids),
                  target=draw(comp_ids), seq=draw(st.integers(1, 10**9)), sending_time=STAMP)


def as_bytes(value: FieldValue) -> bytes:
    return encode_fields([(1, value)])[2:-1]


def accounted(data: bytes, results: list[ParseResult], parser: FixParser) -> None:
    """Every input byte is in exactly one result or still buffered."""
    consumed = b"".join(result.raw for result in results)
    assert consumed == data[:len(data) - parser.buffered]


def feed_in_chunks(data: bytes, cuts: list[int]) -> tuple[list[ParseResult], FixParser]:
    parser = FixParser()
    results: list[ParseResult] = []
    start = 0
    for cut in [*sorted({min(cut, len(data)) for cut in cuts}), len(data)]:
        results += parser.feed(data[start:cut])
        start = cut
    return results, parser


@given(msg_types, bodies, comp_ids, comp_ids, st.integers(1, 2**31))
def test_arbitrary_fields_round_trip(msg_type: str, body: list[Field], sender: str,
                                     target: str, seq: int) -> None:
    raw = encode(msg_type, body, sender=sender, target=target, seq=seq, sending_time=STAMP)
    message = decode(raw)
    assert isinstance(message, FixMessage)
    assert message.raw == raw
    assert (message.msg_type, message.get(49), message.get(56), message.get_int(34)) == (
        msg_type, sender, target, seq)
    parsed_body = message.fields[7:-1]
    assert [tag for tag, _ in parsed_body] == [tag for tag, _ in body]
    assert [as_bytes(value) for _, value in parsed_body] == [as_bytes(value) for _, value in body]


@given(st.binary(max_size=3000))
def test_checksum_is_the_byte_sum_mod_256(data: bytes) -> None:
    assert checksum_of(data) == sum(data) % 256


@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=8))
def test_random_bytes_never_raise_and_are_all_accounted_for(data: bytes, cuts: list[int]
                                                            ) -> None:
    results, parser = feed_in_chunks(data, cuts)
    accounted(data, results, parser)
    assert parser.buffered <= len(data)


@given(st.lists(st.one_of(plain_messages(), st.binary(max_size=30)), max_size=6),
       st.lists(st.integers(0, 2000), max_size=12))
def test_chunked_feeding_equals_whole_feeding(parts: list[bytes], cuts: list[int]) -> None:
    data = b"".join(parts)
    whole_parser = FixParser()
    whole = whole_parser.feed(data)
    chunked, chunked_parser = feed_in_chunks(data, cuts)
    assert [r for r in chunked if isinstance(r, FixMessage)] == [
        r for r in whole if isinstance(r, FixMessage)]
    assert chunked_parser.buffered == whole_parser.buffered
    accounted(data, chunked, chunked_parser)


@given(st.lists(plain_messages(), min_size=1, max_size=5))
def test_messages_separated_by_nothing_all_parse(raws: list[bytes]) -> None:
    parser = FixParser()
    assert [result.raw for result in parser.feed(b"".join(raws))] == raws


@given(plain_messages(), st.data())
def test_truncated_message_is_dropped_and_what_follows_parses(raw: bytes, data: st.DataObject
                                                              ) -> None:
    cut = data.draw(st.integers(1, len(raw) - 1))
    parser = FixParser()
    results = parser.feed(raw[:cut] + raw + raw)
    assert [r.raw for r in results if isinstance(r, FixMessage)] == [raw, raw]
    assert b"".join(r.raw for r in results if isinstance(r, Garbled)) == raw[:cut]


@given(plain_messages(), st.integers(1, 9))
def test_wrong_checksum_is_garbled(raw: bytes, delta: int) -> None:
    checksum = int(raw[-4:-1])
    bad = raw[:-4] + b"%03d\x01" % ((checksum + delta) % 256)
    parser = FixParser()
    results = parser.feed(bad + raw)
    assert isinstance(results[0], Garbled)
    assert [r.raw for r in results if isinstance(r, FixMessage)] == [raw]


@given(plain_messages(), st.integers(-40, 40).filter(lambda delta: delta != 0))
def test_wrong_body_length_is_garbled(raw: bytes, delta: int) -> None:
    head, _, rest = raw.partition(b"\x019=")
    length, _, after = rest.partition(b"\x01")
    bad = head + b"\x019=%d\x01" % max(0, int(length) + delta) + after
    parser = FixParser()
    results = parser.feed(bad + raw)
    assert [r.raw for r in results if isinstance(r, FixMessage)] == [raw]
    assert all(isinstance(r, Garbled) for r in results[:-1])


@given(plain_messages(), st.integers(0, 10_000), st.integers(0, 255))
def test_any_flipped_byte_never_yields_a_different_message(raw: bytes, position: int,
                                                           value: int) -> None:
    index = position % len(raw)
    if raw[index] == value:
        return
    bad = raw[:index] + bytes([value]) + raw[index + 1:]
    parser = FixParser()
    results = parser.feed(bad)
    accounted(bad, results, parser)
    assert not any(isinstance(result, FixMessage) for result in results)


# -- simplefix -----------------------------------------------------------------------------

cross_bodies = st.lists(
    st.tuples(body_tags.filter(lambda tag: tag not in RAW_TAGS and tag != 35),
              st.one_of(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                                min_size=1, max_size=16),
                        st.integers(0, 10**12))),
    max_size=20,
)


def simplefix_message(msg_type: str, body: list[tuple[int, str | int]], sender: str,
                      target: str, seq: int) -> simplefix.FixMessage:
    message = simplefix.FixMessage()
    for tag, value in ((8, "FIX.4.4"), (35, msg_type), (49, sender), (56, target), (34, seq),
                       (52, STAMP)):
        message.append_pair(tag, value, header=True)
    for tag, value in body:
        message.append_pair(tag, value)
    return message


@settings(max_examples=200)
@given(msg_types, cross_bodies, comp_ids, comp_ids, st.integers(1, 2**31))
def test_simplefix_builds_the_same_bytes_and_each_parses_the_other(
    msg_type: str, body: list[tuple[int, str | int]], sender: str, target: str, seq: int
) -> None:
    ours = encode(msg_type, body, sender=sender, target=target, seq=seq, sending_time=STAMP)
    theirs = simplefix_message(msg_type, body, sender, target, seq).encode()
    assert ours == theirs

    parser = simplefix.FixParser()
    parser.append_buffer(ours)
    parsed = parser.get_message()
    message = decode(theirs)
    assert isinstance(message, FixMessage)
    assert [(int(tag), bytes(value)) for tag, value in parsed.pairs] == [
        (tag, value.encode()) for tag, value in message.fields]


# -- a logged-on acceptor under hostile input ------------------------------------------------

HEADER_CHOICES = {
    49: st.sampled_from(["MM1", "MM1", "MM1", "XX"]),
    56: st.sampled_from(["CMX", "CMX", "CMX", "YY"]),
    52: st.sampled_from([format_utc_timestamp(T0), format_utc_timestamp(T0 - 10**12), "bad"]),
    43: st.sampled_from(["Y", "N"]),
    122: st.sampled_from([format_utc_timestamp(T0 - 10**9), format_utc_timestamp(T0 + 10**9)]),
}


@st.composite
def framed_messages(draw: st.DrawFn, expected: int) -> bytes:
    """Well-framed messages with any header and body: admin or application types, right or
    wrong CompIDs, numbers around the expected one, good or bad times, any fields."""
    msg_type = draw(st.sampled_from(["0", "1", "2", "3", "4", "5", "A", "D", "F", "ZZ"]))
    fields: list[Field] = [(35, msg_type)]
    for tag, choice in HEADER_CHOICES.items():
        if draw(st.booleans()):
            fields.append((tag, draw(choice)))
    if draw(st.integers(0, 9)) > 0:
        fields.append((34, draw(st.one_of(st.integers(max(1, expected - 2), expected + 3),
                                          st.sampled_from(["x", "-1", "9" * 5000])))))
    fields += draw(st.lists(st.tuples(st.sampled_from([7, 16, 36, 112, 123, 11, 55, 58]),
                                      st.sampled_from(["0", "1", "2", "5", "Y", "x", "9" * 5000])),
                            max_size=5))
    return frame(encode_fields(fields))


@settings(max_examples=300)
@given(st.data())
def test_acceptor_survives_hostile_input_and_keeps_its_numbers(data: st.DataObject) -> None:
    link = logged_on_link()
    store = link.stores["CMX", "MM1"]
    for _ in range(data.draw(st.integers(1, 8))):
        before = store.next_target_seq()
        kind = data.draw(st.sampled_from(["framed", "bytes", "mutated"]))
        if kind == "framed":
            chunk = data.draw(framed_messages(before))
        elif kind == "bytes":
            chunk = data.draw(st.binary(max_size=120))
        else:
            raw = client_message(before)
            index = data.draw(st.integers(0, len(raw) - 1))
            chunk = raw[:index] + bytes([(raw[index] + 1) % 256]) + raw[index + 1:]
        link.feed(ACC, chunk)
        if link.acceptor.closed:
            assert isinstance(link.events[ACC][-1], Disconnect)
            return
        assert store.next_target_seq() >= before
        if kind != "framed":
            assert store.next_target_seq() == before
    final = client_message(store.next_target_seq())
    link.feed(ACC, b"\x01" + final)  # the SOH ends any half message before it
    assert final in [message.raw for message in link.delivered(ACC)]
