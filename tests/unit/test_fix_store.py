"""FIX session stores: the shared contract, and the file store's crash behaviour."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.fix_store import (
    FileStore,
    MemoryStore,
    SessionStore,
    file_stores,
    is_valid_comp_id,
)

MESSAGES = {2: b"8=FIX.4.4\x019=5\x0135=D\x0110=000\x01", 5: b"line\nbreaks\n", 7: b"x" * 3000}


def exercise_store(open_store: Callable[[], SessionStore]) -> None:
    """What every store must do; ``open_store`` opens the same store again each call."""
    store = open_store()
    assert (store.next_sender_seq(), store.next_target_seq()) == (1, 1)
    assert store.sent(1, 100) == []
    for seq, raw in MESSAGES.items():
        store.save_sent(seq, raw)
    store.set_next_sender_seq(8)
    store.set_next_target_seq(4)
    store.close()

    store = open_store()
    assert (store.next_sender_seq(), store.next_target_seq()) == (8, 4)
    assert store.sent(1, 100) == sorted(MESSAGES.items())
    assert store.sent(3, 6) == [(5, MESSAGES[5])]
    assert store.sent(7, 7) == [(7, MESSAGES[7])]
    assert store.sent(8, 20) == []
    store.reset()
    assert (store.next_sender_seq(), store.next_target_seq()) == (1, 1)
    store.save_sent(1, b"after reset")
    store.set_next_sender_seq(2)
    store.close()

    store = open_store()
    assert (store.next_sender_seq(), store.next_target_seq()) == (2, 1)
    assert store.sent(1, 100) == [(1, b"after reset")]
    store.close()


def test_memory_store_contract() -> None:
    store = MemoryStore()
    exercise_store(lambda: store)


def test_file_store_contract(tmp_path: Path) -> None:
    exercise_store(lambda: FileStore(tmp_path / "s", fsync=True))


def test_file_store_without_fsync_keeps_the_same_contract(tmp_path: Path) -> None:
    exercise_store(lambda: FileStore(tmp_path / "s", fsync=False))


def test_torn_tail_is_cut_and_appending_continues(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.save_sent(1, b"first")
    store.save_sent(2, b"second")
    store.close()
    with open(tmp_path / "messages", "ab") as file:
        file.write(b"3 100\npartial")
    store = FileStore(tmp_path)
    assert store.sent(1, 10) == [(1, b"first"), (2, b"second")]
    store.save_sent(3, b"third")
    store.close()
    assert FileStore(tmp_path).sent(1, 10) == [(1, b"first"), (2, b"second"), (3, b"third")]


@pytest.mark.parametrize("tail", [b"3", b"3 1", b"3 5\nabcde", b"3 x\n", b"garbage\n\n"])
def test_any_torn_record_is_ignored(tmp_path: Path, tail: bytes) -> None:
    store = FileStore(tmp_path)
    store.save_sent(1, b"first")
    store.close()
    with open(tmp_path / "messages", "ab") as file:
        file.write(tail)
    assert FileStore(tmp_path).sent(1, 10) == [(1, b"first")]
    assert (tmp_path / "messages").read_bytes() == b"1 5\nfirst\n"


def test_crash_before_commit_still_knows_the_numbers_it_sent(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.set_next_sender_seq(5)
    store.commit()
    store.save_sent(5, b"sent just before the crash")
    store.set_next_sender_seq(6)
    # no commit, no close: the process dies here
    reopened = FileStore(tmp_path)
    assert reopened.next_sender_seq() == 6
    assert reopened.sent(5, 5) == [(5, b"sent just before the crash")]


def on_disk(directory: Path) -> tuple[int, int]:
    store = FileStore(directory)
    return store.next_sender_seq(), store.next_target_seq()


def test_seqnums_change_on_disk_only_at_commit(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.set_next_sender_seq(3)
    store.set_next_target_seq(9)
    assert on_disk(tmp_path) == (1, 1)
    store.commit()
    assert on_disk(tmp_path) == (3, 9)
    store.set_next_target_seq(10)
    assert on_disk(tmp_path) == (3, 9)
    store.commit()
    assert on_disk(tmp_path) == (3, 10)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["messages", "seqnums"]
    assert (tmp_path / "seqnums").stat().st_size == 128


@pytest.mark.parametrize("damage", [b"\x00" * 64, b"3 12 40 00000000".ljust(63) + b"\n",
                                    b"3 12 4", b""])
def test_torn_seqnums_slot_falls_back_to_the_other(tmp_path: Path, damage: bytes) -> None:
    store = FileStore(tmp_path)
    for sender in (5, 6, 7):  # generations 1, 2, 3: slot 1 holds 7, slot 0 holds 6
        store.set_next_sender_seq(sender)
        store.commit()
    store.close()
    assert on_disk(tmp_path) == (7, 1)
    with open(tmp_path / "seqnums", "r+b") as file:
        file.seek(64)
        file.write(damage.ljust(64, b"\x00") if damage else b"")
        if not damage:
            file.truncate(64)
    assert on_disk(tmp_path) == (6, 1)


def test_messages_must_be_saved_in_order(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.save_sent(4, b"a")
    with pytest.raises(ValueError):
        store.save_sent(4, b"b")


def test_opener_uses_a_directory_per_pair_and_refuses_unsafe_comp_ids(tmp_path: Path) -> None:
    open_store = file_stores(tmp_path)
    store = open_store("CMX", "MM-1")
    store.set_next_target_seq(7)
    store.close()
    assert on_disk(tmp_path / "CMX-MM-1") == (1, 7)
    with pytest.raises(ValueError):
        open_store("CMX", "../../etc")


def test_opener_shares_one_store_per_pair_until_it_is_closed(tmp_path: Path) -> None:
    open_store = file_stores(tmp_path)
    store = open_store("CMX", "MM1")
    assert open_store("CMX", "MM1") is store
    assert open_store("CMX", "MM2") is not store
    store.set_next_sender_seq(5)
    store.close()
    reopened = open_store("CMX", "MM1")
    assert reopened is not store
    assert reopened.next_sender_seq() == 5


@pytest.mark.parametrize(
    ("comp_id", "valid"),
    [("MM1", True), ("desk_7.a-b", True), ("", False), (".hidden", False), ("a/b", False),
     ("x" * 64, True), ("x" * 65, False), ("naïve", False)],
)
def test_comp_id_rule(comp_id: str, valid: bool) -> None:
    assert is_valid_comp_id(comp_id) is valid
