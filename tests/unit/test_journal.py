"""The file journal: round trips, fsync policies, torn tails cut off, corruption refused."""

from __future__ import annotations

import logging
import os
import struct
import tempfile
import threading
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.journal import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    FileJournal,
    FsyncPolicy,
    Journal,
    JournalCorrupt,
    JournalError,
    read_records,
    scan,
)

MS = 1_000_000
PAYLOADS = [f"command {i}".encode() * (i % 5 + 1) for i in range(1, 11)]


class FakeClock:
    """Monotonic nanoseconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


class FsyncCounter:
    """Stands in for ``os.fsync`` and counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1


def frame(seq: int, payload: bytes) -> bytes:
    """A record as the file format specifies it, built independently of the journal."""
    seq_bytes = struct.pack("<Q", seq)
    return struct.pack("<II", len(payload), zlib.crc32(seq_bytes + payload)) + seq_bytes + payload


def write(path: Path, payloads: list[bytes]) -> list[int]:
    """Journal ``payloads`` to ``path``; return the byte offset where each record starts."""
    with FileJournal(path, FsyncPolicy.NONE) as journal:
        for payload in payloads:
            journal.append(payload)
    starts = [0]
    for payload in payloads:
        starts.append(starts[-1] + HEADER_SIZE + len(payload))
    assert path.stat().st_size == starts.pop()
    return starts


def reopen(path: Path) -> list[bytes]:
    """Open the journal as a writer would and return its payloads."""
    with FileJournal(path, FsyncPolicy.NONE) as journal:
        return [payload for _, payload in journal.read()]


def flip(path: Path, offset: int, mask: int = 0xFF) -> None:
    """XOR the byte at ``offset`` with ``mask``."""
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# --- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("policy", list(FsyncPolicy))
def test_round_trip_under_each_policy(tmp_path: Path, policy: FsyncPolicy) -> None:
    journal: Journal = FileJournal(tmp_path / "j", policy)
    assert (journal.last_seq, journal.durable_seq) == (0, 0)
    assert [journal.append(p) for p in PAYLOADS] == list(range(1, 11))
    assert journal.sync() == journal.durable_seq == journal.last_seq == 10
    assert list(journal.read()) == list(enumerate(PAYLOADS, 1))
    assert list(journal.read(from_seq=8)) == [(8, PAYLOADS[7]), (9, PAYLOADS[8]), (10, PAYLOADS[9])]
    assert list(journal.read(from_seq=11)) == []
    journal.close()
    journal.close()


def test_the_file_holds_exactly_the_documented_frames(tmp_path: Path) -> None:
    write(tmp_path / "j", PAYLOADS)
    assert (tmp_path / "j").read_bytes() == b"".join(
        frame(seq, p) for seq, p in enumerate(PAYLOADS, 1)
    )


def test_seq_continues_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "j"
    write(path, PAYLOADS[:3])
    with FileJournal(path, FsyncPolicy.ALWAYS) as journal:
        assert journal.last_seq == journal.durable_seq == 3
        assert journal.append(b"four") == 4
    with FileJournal(path, FsyncPolicy.GROUP) as journal:
        assert journal.append(b"five") == 5
        assert list(journal.read()) == [*enumerate(PAYLOADS[:3], 1), (4, b"four"), (5, b"five")]


def test_read_sees_appends_not_yet_committed_and_stops_where_it_was_called(
    tmp_path: Path,
) -> None:
    with FileJournal(tmp_path / "j", FsyncPolicy.GROUP, clock=FakeClock()) as journal:
        journal.append(b"a")
        records = journal.read()
        journal.append(b"b")
        assert journal.durable_seq == 0
        assert list(records) == [(1, b"a")]
        assert list(journal.read(2)) == [(2, b"b")]


def test_empty_large_and_chunk_straddling_payloads(tmp_path: Path) -> None:
    payloads = [b"", b"x" * (3 << 20), b"", bytes(range(256)) * (20 << 10), b"y"]
    write(tmp_path / "j", payloads)
    assert reopen(tmp_path / "j") == payloads
    assert [p for _, p in read_records(tmp_path / "j", from_seq=4)] == payloads[3:]


def test_many_small_records_across_read_chunks(tmp_path: Path) -> None:
    payloads = [i.to_bytes(4, "little") * 25 for i in range(60_000)]  # about 7 MiB
    write(tmp_path / "j", payloads)
    assert reopen(tmp_path / "j") == payloads
    assert scan(tmp_path / "j").last_seq == 60_000


def test_oversized_payload_is_refused(tmp_path: Path) -> None:
    with FileJournal(tmp_path / "j", FsyncPolicy.NONE) as journal:
        with pytest.raises(ValueError, match="exceeds"):
            journal.append(bytes(MAX_PAYLOAD + 1))
        assert journal.last_seq == 0


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    with (
        FileJournal(tmp_path / "j", FsyncPolicy.NONE),
        pytest.raises(JournalError, match="already open for writing"),
    ):
        FileJournal(tmp_path / "j", FsyncPolicy.NONE)
    FileJournal(tmp_path / "j", FsyncPolicy.NONE).close()


# --- fsync policies -----------------------------------------------------------------------


def test_always_fsyncs_before_each_append_returns(tmp_path: Path) -> None:
    fsync = FsyncCounter()
    with FileJournal(tmp_path / "j", FsyncPolicy.ALWAYS, fsync=fsync) as journal:
        opened = fsync.calls  # the new file and its directory entry
        for seq, payload in enumerate(PAYLOADS, 1):
            journal.append(payload)
            assert journal.durable_seq == seq
            assert fsync.calls == opened + seq
        journal.sync()
        assert fsync.calls == opened + 10


def test_group_fsyncs_once_the_window_has_passed_and_on_sync(tmp_path: Path) -> None:
    clock, fsync = FakeClock(), FsyncCounter()
    journal = FileJournal(tmp_path / "j", FsyncPolicy.GROUP, 2, clock=clock, fsync=fsync)
    opened = fsync.calls
    journal.append(b"1")
    clock.now = 1 * MS
    journal.append(b"2")
    clock.now = 2 * MS - 1
    journal.append(b"3")
    assert (fsync.calls - opened, journal.durable_seq) == (0, 0)
    clock.now = 2 * MS
    journal.append(b"4")  # 2 ms since the journal opened: this append commits
    assert (fsync.calls - opened, journal.durable_seq) == (1, 4)
    clock.now = 3 * MS
    journal.append(b"5")  # the window restarts at the last fsync
    assert (fsync.calls - opened, journal.durable_seq) == (1, 4)
    assert journal.sync() == 5
    assert fsync.calls - opened == 2
    clock.now = 4 * MS
    journal.append(b"6")  # 1 ms since sync()
    assert journal.sync() == 6
    assert journal.sync() == 6  # nothing new: no fsync
    assert fsync.calls - opened == 3
    clock.now = 100 * MS
    journal.append(b"7")  # after a quiet spell the first append commits at once
    assert (fsync.calls - opened, journal.durable_seq) == (4, 7)
    journal.append(b"8")
    journal.close()
    assert fsync.calls - opened == 5
    assert reopen(tmp_path / "j") == [str(i).encode() for i in range(1, 9)]


def test_background_group_commit_fsyncs_off_the_appending_thread(tmp_path: Path) -> None:
    clock = FakeClock()
    fsynced = threading.Event()
    release = threading.Event()
    threads: list[str] = []

    def slow_fsync(fd: int) -> None:
        if threading.current_thread() is not threading.main_thread():
            threads.append(threading.current_thread().name)
            fsynced.set()
            assert release.wait(10)
        os.fsync(fd)

    journal = FileJournal(tmp_path / "j", FsyncPolicy.GROUP, 2, clock=clock, fsync=slow_fsync,
                          background_fsync=True)
    journal.append(b"1")
    clock.now = 2 * MS
    journal.append(b"2")  # the window passed: hands the commit to the syncer and returns
    assert fsynced.wait(10)
    journal.append(b"3")  # appends go on while the syncer's fsync is still in the disk
    assert journal.durable_seq == 0
    release.set()
    deadline = time.monotonic() + 10
    while journal.durable_seq < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert journal.durable_seq == 2
    assert threads and all(name.startswith("fsync") for name in threads)
    assert journal.sync() == 3  # an explicit sync is immediate, in the caller
    journal.close()
    assert reopen(tmp_path / "j") == [b"1", b"2", b"3"]


def test_none_never_fsyncs_but_hands_records_to_the_os_on_the_window_and_sync(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j"
    clock, fsync = FakeClock(), FsyncCounter()
    with FileJournal(path, FsyncPolicy.NONE, 2, clock=clock, fsync=fsync) as journal:
        journal.append(b"a")
        assert journal.durable_seq == 0
        assert path.stat().st_size == 0  # still in the journal's buffer
        clock.now = 2 * MS
        journal.append(b"b")
        assert journal.durable_seq == 2
        assert [p for _, p in read_records(path)] == [b"a", b"b"]
        journal.append(b"c")
        assert journal.sync() == 3
        assert [p for _, p in read_records(path)] == [b"a", b"b", b"c"]
    assert fsync.calls == 0


def test_a_failed_fsync_stops_the_journal(tmp_path: Path) -> None:
    failing = [False]

    def fsync(fd: int) -> None:
        if failing[0]:
            raise OSError(5, "Input/output error")

    journal = FileJournal(tmp_path / "j", FsyncPolicy.ALWAYS, fsync=fsync)
    journal.append(b"a")
    failing[0] = True
    with pytest.raises(OSError, match="Input/output"):
        journal.append(b"b")
    failing[0] = False  # a retried fsync could report success for lost pages
    with pytest.raises(JournalError, match="records after seq 1 may not be on disk"):
        journal.append(b"c")
    with pytest.raises(JournalError):
        journal.sync()
    assert journal.durable_seq == 1
    journal.close()


def test_commit_soon_reports_durability_and_a_failed_background_fsync(tmp_path: Path) -> None:
    failing = [False]
    reported: list[int] = []

    def fsync(fd: int) -> None:
        if failing[0]:
            raise OSError(5, "Input/output error")

    journal = FileJournal(tmp_path / "j", FsyncPolicy.GROUP, group_commit_ms=10_000,
                          fsync=fsync, background_fsync=True)
    journal.on_durable = reported.append
    journal.append(b"a")
    assert journal.commit_soon() is False  # the fsync thread commits and reports
    deadline = time.monotonic() + 5
    while not reported and time.monotonic() < deadline:
        time.sleep(0.001)
    assert reported == [1] and journal.durable_seq == 1
    assert journal.commit_soon() is True  # nothing left to commit
    failing[0] = True
    journal.append(b"b")
    journal.commit_soon()
    while journal._failure is None and time.monotonic() < deadline:
        time.sleep(0.001)
    with pytest.raises(JournalError, match="records after seq 1 may not be on disk"):
        journal.commit_soon()  # said out loud, not a reply that never comes
    assert reported == [1]
    journal.close()


# --- torn tails ---------------------------------------------------------------------------


def test_every_cut_inside_the_last_record_keeps_exactly_the_whole_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "j"
    starts = write(path, PAYLOADS)
    whole = path.read_bytes()
    last = starts[-1]
    for cut in range(last + 1, len(whole)):
        path.write_bytes(whole[:cut])
        caplog.clear()
        with (
            caplog.at_level(logging.WARNING, logger="engine.journal"),
            FileJournal(path, FsyncPolicy.NONE) as journal,
        ):
            assert journal.last_seq == 9
            assert [p for _, p in journal.read()] == PAYLOADS[:9]
        assert path.stat().st_size == last
        (message,) = warnings_of(caplog)
        assert str(path) in message
        assert f"byte offset {last}" in message
        assert "up to seq 9" in message
        assert f"truncating {cut - last} bytes" in message


def test_a_cut_on_a_record_boundary_is_no_tear(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "j"
    starts = write(path, PAYLOADS)
    with open(path, "r+b") as file:
        file.truncate(starts[4])
    assert reopen(path) == PAYLOADS[:4]
    assert warnings_of(caplog) == []


@pytest.mark.parametrize("where", ["crc", "seq", "payload start", "payload end"])
def test_a_damaged_last_record_is_cut_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    path = tmp_path / "j"
    last = write(path, PAYLOADS)[-1]
    at = {"crc": 5, "seq": 9, "payload start": 16, "payload end": len(PAYLOADS[-1]) + 15}[where]
    flip(path, last + at)
    assert reopen(path) == PAYLOADS[:9]
    (message,) = warnings_of(caplog)
    assert "fails its CRC check" in message
    assert f"byte offset {last}" in message


def test_a_lengthened_last_record_is_an_incomplete_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "j"
    last = write(path, PAYLOADS)[-1]
    flip(path, last + 1)  # the length's second byte: 256 or more bytes too long
    assert reopen(path) == PAYLOADS[:9]
    assert "incomplete last record" in warnings_of(caplog)[0]


def test_a_zero_filled_end_is_cut_off(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "j"
    size = write(path, PAYLOADS)[-1] + HEADER_SIZE + len(PAYLOADS[-1])
    with open(path, "ab") as file:
        file.write(bytes(8192))
    assert reopen(path) == PAYLOADS
    assert path.stat().st_size == size
    assert "zero-filled" in warnings_of(caplog)[0]


def test_appending_after_recovery_continues_from_the_last_whole_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "j"
    write(path, PAYLOADS)
    with open(path, "r+b") as file:
        file.truncate(path.stat().st_size - 3)
    with FileJournal(path, FsyncPolicy.ALWAYS) as journal:
        assert journal.append(b"after") == 10
    caplog.clear()
    assert reopen(path) == [*PAYLOADS[:9], b"after"]
    assert warnings_of(caplog) == []


def test_scan_and_read_records_leave_a_torn_file_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "j"
    last = write(path, PAYLOADS)[-1]
    with open(path, "r+b") as file:
        file.truncate(last + 20)
    extent = scan(path)
    assert (extent.last_seq, extent.valid_bytes, extent.file_bytes) == (9, last, last + 20)
    assert extent.tail == "incomplete last record"
    assert [p for _, p in read_records(path)] == PAYLOADS[:9]
    assert path.stat().st_size == last + 20
    (message,) = warnings_of(caplog)
    assert "ignoring 20 bytes" in message
    assert str(path) in message


# --- corruption ---------------------------------------------------------------------------


def assert_refused(path: Path, offset: int, reason: str) -> None:
    """Opening, scanning and reading all raise JournalCorrupt; nothing is truncated."""
    before = path.read_bytes()
    for attempt in (
        lambda: FileJournal(path, FsyncPolicy.NONE),
        lambda: scan(path),
        lambda: list(read_records(path)),
    ):
        with pytest.raises(JournalCorrupt, match=reason) as info:
            attempt()
        assert info.value.offset == offset
        assert info.value.path == path
        assert f"{path} is corrupt at byte offset {offset}" in str(info.value)
    assert path.read_bytes() == before


@pytest.mark.parametrize("at", [5, 9, 20])
def test_a_damaged_middle_record_is_refused(tmp_path: Path, at: int) -> None:
    path = tmp_path / "j"
    starts = write(path, PAYLOADS)
    flip(path, starts[4] + at)
    assert_refused(path, starts[4], "fails its CRC check and .* more bytes follow")


def test_an_absurd_length_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j"
    starts = write(path, PAYLOADS)
    flip(path, starts[6] + 3)
    assert_refused(path, starts[6], "absurd record length")


def test_an_absurd_length_in_the_last_record_is_refused_too(tmp_path: Path) -> None:
    path = tmp_path / "j"
    starts = write(path, PAYLOADS)
    flip(path, starts[-1] + 3)
    assert_refused(path, starts[-1], "absurd record length")


def test_a_shortened_length_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j"
    starts = write(path, PAYLOADS)
    assert len(PAYLOADS[2]) & 0x04
    flip(path, starts[2], 0x04)  # 4 bytes shorter
    assert_refused(path, starts[2], "fails its CRC check")


def test_a_length_reaching_past_the_end_is_refused_when_records_follow(tmp_path: Path) -> None:
    path = tmp_path / "j"
    starts = write(path, PAYLOADS)
    flip(path, starts[3] + 1, 0x10)  # 4 KiB longer: past the end of this small file
    assert_refused(path, starts[3], f"record seq 5 follows at byte offset {starts[4]}")


def test_a_seq_that_skips_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j"
    path.write_bytes(frame(1, b"a") + frame(2, b"b") + frame(4, b"d") + frame(5, b"e"))
    assert_refused(path, 2 * (HEADER_SIZE + 1), "record seq 4 does not follow seq 2")


def test_a_seq_that_skips_in_the_last_record_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j"
    path.write_bytes(frame(1, b"a") + frame(3, b"c"))
    assert_refused(path, HEADER_SIZE + 1, "record seq 3 does not follow seq 1")


def test_a_journal_must_start_at_seq_1(tmp_path: Path) -> None:
    path = tmp_path / "j"
    path.write_bytes(frame(2, b"b"))
    assert_refused(path, 0, "record seq 2 does not follow seq 0")


# --- properties ---------------------------------------------------------------------------

payload_lists = st.lists(st.binary(max_size=40), max_size=12)


@given(payloads=payload_lists, data=st.data())
def test_any_truncation_reopens_to_a_prefix(payloads: list[bytes], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "j"
        starts = write(path, payloads)
        cut = data.draw(st.integers(min_value=0, max_value=path.stat().st_size), label="cut")
        with open(path, "r+b") as file:
            file.truncate(cut)
        whole = sum(
            1
            for start, p in zip(starts, payloads, strict=True)
            if start + HEADER_SIZE + len(p) <= cut
        )
        assert reopen(path) == payloads[:whole]
        with FileJournal(path, FsyncPolicy.NONE) as journal:
            assert journal.append(b"next") == whole + 1


@given(payloads=payload_lists.filter(bool), data=st.data())
def test_a_flipped_byte_never_yields_altered_records(
    payloads: list[bytes], data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "j"
        write(path, payloads)
        offset = data.draw(st.integers(0, path.stat().st_size - 1), label="offset")
        flip(path, offset, data.draw(st.integers(1, 255), label="mask"))
        try:
            records = reopen(path)
        except JournalCorrupt:
            return
        assert records == payloads[: len(records)]
