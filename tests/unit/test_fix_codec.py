"""FIX codec: framing arithmetic, parsing in any chunking, garbled input, groups, timestamps."""

from __future__ import annotations

import pytest

from gateway.fix_codec import (
    FixMessage,
    FixParser,
    Garbled,
    GroupError,
    decode,
    encode,
    format_utc_timestamp,
    group_fields,
    parse_utc_timestamp,
    possdup_parts,
)

T0 = 1_800_000_000_000_000_000  # 2027-01-15 08:00:00 UTC
STAMP = "20270115-08:00:00.000"


def order(seq: int = 7) -> bytes:
    body = [(11, "ORD-1"), (55, "GPU.H100.SPOT"), (54, "1"), (38, "10"), (40, "2"),
            (44, "2.500")]
    return encode("D", body, sender="MM1", target="CMX", seq=seq, sending_time=STAMP)


def test_body_length_and_checksum_follow_the_rules() -> None:
    raw = order()
    head, _, rest = raw.partition(b"\x019=")
    length_text, _, after_length = rest.partition(b"\x01")
    checksum_at = raw.rindex(b"10=")
    assert head == b"8=FIX.4.4"
    assert int(length_text) == len(after_length) - len(raw[checksum_at:])
    assert raw[checksum_at - 1:checksum_at] == b"\x01"
    assert raw[checksum_at:] == b"10=%03d\x01" % (sum(raw[:checksum_at]) % 256)


def test_known_heartbeat_bytes() -> None:
    raw = encode("0", [], sender="A", target="B", seq=1, sending_time="20200101-00:00:00")
    body = b"35=0\x0149=A\x0156=B\x0134=1\x0152=20200101-00:00:00\x01"
    head = b"8=FIX.4.4\x019=%d\x01" % len(body)
    assert raw == head + body + b"10=%03d\x01" % (sum(head + body) % 256)


def test_round_trip_of_a_new_order() -> None:
    message = decode(order())
    assert isinstance(message, FixMessage)
    assert message.msg_type == "D"
    assert [tag for tag, _ in message.fields] == [8, 9, 35, 49, 56, 34, 52, 11, 55, 54, 38, 40,
                                                  44, 10]
    assert message.get(55) == "GPU.H100.SPOT"
    assert message.get_int(34) == 7
    assert message.get(9999) is None
    assert message.raw == order()


def test_fields_after_header_and_their_values() -> None:
    raw = encode("D", [(11, "A"), (58, "héllo wörld"), (11, "B")], sender="MM1", target="CMX",
                 seq=3, sending_time=STAMP, header=[(43, "Y"), (122, STAMP)])
    message = decode(raw)
    assert isinstance(message, FixMessage)
    assert [tag for tag, _ in message.fields] == [8, 9, 35, 49, 56, 34, 52, 43, 122, 11, 58,
                                                  11, 10]
    assert message.get(58) == "héllo wörld"
    assert message.get(11) == "A"
    assert message.get_all(11) == ["A", "B"]


def test_any_body_order_is_accepted() -> None:
    body = [(44, "2.500"), (55, "GPU.H100.SPOT"), (11, "X"), (54, "2")]
    message = decode(encode("D", body, sender="MM1", target="CMX", seq=1, sending_time=STAMP))
    assert isinstance(message, FixMessage)
    assert [field for field in message.fields if field[0] in (44, 55, 11, 54)] == body


def test_values_with_soh_or_empty_are_refused_when_encoding() -> None:
    with pytest.raises(ValueError, match="SOH"):
        encode("D", [(58, "a\x01b")], sender="A", target="B", seq=1, sending_time=STAMP)
    with pytest.raises(ValueError, match="empty"):
        encode("D", [(58, "")], sender="A", target="B", seq=1, sending_time=STAMP)


def test_int_and_bytes_values() -> None:
    message = decode(encode("D", [(38, 25), (58, b"raw")], sender="A", target="B", seq=1,
                            sending_time=STAMP))
    assert isinstance(message, FixMessage)
    assert message.get(38) == "25"
    assert message.get(58) == "raw"


def test_byte_by_byte_feeding_parses_every_message() -> None:
    stream = order(seq=1) + order(seq=2) + order(seq=3)
    parser = FixParser()
    results = [result for index in range(len(stream))
               for result in parser.feed(stream[index:index + 1])]
    assert [result.get_int(34) for result in results if isinstance(result, FixMessage)] == [
        1, 2, 3]
    assert parser.buffered == 0


def test_garbage_between_messages_is_reported_and_skipped() -> None:
    results = FixParser().feed(b"hello" + order(seq=1) + b"\r\n junk 8=FI" + order(seq=2))
    assert [type(result) for result in results] == [Garbled, FixMessage, Garbled, FixMessage]
    assert results[0].raw == b"hello"
    assert results[2].raw == b"\r\n junk 8=FI"


def test_wrong_checksum_is_garbled_and_the_next_message_parses() -> None:
    bad = bytearray(order(seq=1))
    bad[-2] = ord("0") + (bad[-2] - ord("0") + 1) % 10
    results = FixParser().feed(bytes(bad) + order(seq=2))
    assert isinstance(results[0], Garbled)
    assert results[0].reason == "CheckSum mismatch"
    assert isinstance(results[1], FixMessage)
    assert results[1].get_int(34) == 2


@pytest.mark.parametrize("delta", [-5, -1, 1, 30])
def test_wrong_body_length_is_garbled_and_the_next_message_parses(delta: int) -> None:
    good = order(seq=1)
    length = int(good.split(b"\x01")[1][2:])
    bad = good.replace(b"9=%d\x01" % length, b"9=%d\x01" % (length + delta), 1)
    parser = FixParser()
    results = parser.feed(bad) + parser.feed(order(seq=2))
    assert any(isinstance(result, Garbled) for result in results)
    assert [result.get_int(34) for result in results if isinstance(result, FixMessage)] == [2]


def test_truncated_message_followed_by_a_good_one() -> None:
    good = order(seq=2)
    results = FixParser().feed(order(seq=1)[:40] + good)
    assert results[-1] == decode(good)
    assert b"".join(result.raw for result in results) == order(seq=1)[:40] + good


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"8=FIX.4.2\x019=5\x0135=0\x0110=000\x01", "BeginString is not FIX.4.4"),
        (b"8=FIX.4.4\x0135=0\x01", "BodyLength is not the second field"),
        (b"8=FIX.4.4\x019=x5\x01", "BodyLength not a number"),
        (b"8=FIX.4.4\x019=12345678", "BodyLength too long"),
    ],
)
def test_malformed_starts_are_garbled(raw: bytes, reason: str) -> None:
    results = FixParser().feed(raw)
    assert results[0] == Garbled(reason, results[0].raw)


def test_msg_type_must_be_the_third_field() -> None:
    body = b"49=A\x0135=0\x01"
    head = b"8=FIX.4.4\x019=%d\x01" % len(body)
    raw = head + body + b"10=%03d\x01" % (sum(head + body) % 256)
    assert FixParser().feed(raw) == [Garbled("MsgType is not the third field", raw)]


def test_malformed_field_is_garbled() -> None:
    body = b"35=0\x01abc\x01"
    head = b"8=FIX.4.4\x019=%d\x01" % len(body)
    raw = head + body + b"10=%03d\x01" % (sum(head + body) % 256)
    assert FixParser().feed(raw) == [Garbled("malformed field", raw)]


def test_empty_values_parse_for_the_session_to_reject() -> None:
    body = b"35=0\x01112=\x01"
    head = b"8=FIX.4.4\x019=%d\x01" % len(body)
    message = decode(head + body + b"10=%03d\x01" % (sum(head + body) % 256))
    assert isinstance(message, FixMessage)
    assert message.get(112) == ""


def test_oversized_message_is_dropped_without_buffering_it() -> None:
    parser = FixParser(max_message_size=1024)
    raw = b"8=FIX.4.4\x019=5000\x0135=D\x01"
    assert parser.feed(raw) == [Garbled("message over the size limit", raw)]
    assert parser.buffered == 0


def test_buffer_stays_bounded_under_endless_garbage() -> None:
    parser = FixParser()
    for _ in range(100):
        parser.feed(b"x" * 10_000)
        assert parser.buffered < 8


MD_ENTRIES = (269, 270, 271, 272, 273, 290)


def md_snapshot() -> FixMessage:
    body = [(262, "req-1"), (55, "GPU.H100.SPOT"),
            *group_fields(268, [[(269, "0"), (270, "2.499"), (271, 10)],
                                [(269, "1"), (270, "2.501"), (271, 4), (290, 1)]]),
            (58, "after")]
    message = decode(encode("W", body, sender="CMX", target="MM1", seq=4, sending_time=STAMP))
    assert isinstance(message, FixMessage)
    return message


def test_groups_split_entries_at_the_delimiter() -> None:
    entries = md_snapshot().groups(268, MD_ENTRIES)
    assert [entry.fields for entry in entries] == [
        ((269, "0"), (270, "2.499"), (271, "10")),
        ((269, "1"), (270, "2.501"), (271, "4"), (290, "1")),
    ]
    assert entries[1].get_int(290) == 1


def test_absent_group_has_no_entries() -> None:
    assert md_snapshot().groups(146, (55, 48)) == []


def test_nested_quote_sets_and_entries() -> None:
    body = [(117, "Q1"),
            *group_fields(296, [
                [(302, "S1"), (304, 2),
                 *group_fields(295, [[(299, "E1"), (55, "GPU.H100.SPOT"), (132, "2.4")],
                                     [(299, "E2"), (55, "GPU.H200.SPOT"), (133, "3.6")]])],
                [(302, "S2"), (304, 1),
                 *group_fields(295, [[(299, "E3"), (55, "RACK.KW.SPOT"), (132, "5.00")]])],
            ])]
    message = decode(encode("i", body, sender="MM1", target="CMX", seq=9, sending_time=STAMP))
    assert isinstance(message, FixMessage)
    quote_entry = (299, 55, 132, 133, 134, 135)
    sets = message.groups(296, (302, 304, 295, *quote_entry))
    assert [quote_set.get(302) for quote_set in sets] == ["S1", "S2"]
    assert [[entry.get(299) for entry in quote_set.groups(295, quote_entry)]
            for quote_set in sets] == [["E1", "E2"], ["E3"]]
    assert sets[0].groups(295, quote_entry)[1].get(133) == "3.6"


@pytest.mark.parametrize(
    ("count_tag", "tags", "entries"),
    [
        (146, (55, 48, 22), [[(55, "GPU.H100.SPOT")], [(55, "GPU.H200.SPOT"), (48, "X")]]),
        (267, (269,), [[(269, "0")], [(269, "1")], [(269, "2")]]),
        (453, (448, 447, 452), [[(448, "0xabc"), (447, "D"), (452, 3)]]),
    ],
)
def test_other_stock_groups(count_tag: int, tags: tuple[int, ...],
                            entries: list[list[tuple[int, str | int]]]) -> None:
    raw = encode("V", [(262, "r"), *group_fields(count_tag, entries)], sender="MM1",
                 target="CMX", seq=2, sending_time=STAMP)
    message = decode(raw)
    assert isinstance(message, FixMessage)
    found = message.groups(count_tag, tags)
    assert [[(tag, str(value)) for tag, value in entry] for entry in entries] == [
        list(entry.fields) for entry in found]


def test_group_count_mismatch_and_bad_count_raise() -> None:
    raw = encode("V", [(146, 3), (55, "A"), (55, "B")], sender="MM1", target="CMX", seq=2,
                 sending_time=STAMP)
    message = decode(raw)
    assert isinstance(message, FixMessage)
    with pytest.raises(GroupError) as caught:
        message.groups(146, (55,))
    assert caught.value.count_tag == 146
    bad = decode(encode("V", [(146, "two"), (55, "A")], sender="MM1", target="CMX", seq=2,
                        sending_time=STAMP))
    assert isinstance(bad, FixMessage)
    with pytest.raises(GroupError):
        bad.groups(146, (55,))


def test_timestamps_with_and_without_fractions() -> None:
    assert format_utc_timestamp(T0 + 123_456_789) == "20270115-08:00:00.123"
    assert parse_utc_timestamp("20270115-08:00:00") == T0
    assert parse_utc_timestamp("20270115-08:00:00.123") == T0 + 123_000_000
    assert parse_utc_timestamp("20270115-08:00:00.123456") == T0 + 123_456_000
    assert parse_utc_timestamp("20270115-08:00:00.123456789") == T0 + 123_456_789
    leap_second = parse_utc_timestamp("20261231-23:59:60")
    assert leap_second is not None
    assert leap_second == parse_utc_timestamp("20270101-00:00:00")
    for bad in ("20270115-08:00", "20271315-08:00:00", "20270115-08:00:00.12", "now", "",
                "20270115-24:00:00", "20270115-08:60:00", "20270115-08:00:61",
                "20270115 08:00:00", "20270115-08:00:00,123", "\uff120270115-08:00:00"):
        assert parse_utc_timestamp(bad) is None


def test_possdup_parts_keep_header_extras_apart_from_the_body() -> None:
    raw = encode("8", [(37, "O1"), (150, "0")], sender="CMX", target="MM1", seq=12,
                 sending_time=STAMP, header=[(50, "desk")])
    parts = possdup_parts(raw)
    assert parts == ("8", [(43, "Y"), (122, STAMP), (50, "desk")], [(37, "O1"), (150, "0")])
    assert possdup_parts(raw[:-1]) is None
