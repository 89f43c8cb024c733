"""Tests of the durable, bounded SQLite FIFO in common/spool.py: order, acks, the bound, durability."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from common.spool import Spool

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "sub" / "spool.db"  # the parent does not exist yet: the spool creates it


def bodies(spool: Spool) -> list[bytes]:
    return [body for _, body in spool.peek(10_000)]


def test_items_come_back_in_append_order(spool_path: Path) -> None:
    spool = Spool(spool_path, max_items=100)
    for i in range(5):
        spool.append(f"item-{i}".encode())
    items = spool.peek(10)
    assert [body for _, body in items] == [f"item-{i}".encode() for i in range(5)]
    ids = [item_id for item_id, _ in items]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert spool.depth == 5


def test_peek_respects_limit_and_does_not_remove(spool_path: Path) -> None:
    spool = Spool(spool_path, max_items=100)
    spool.extend([b"a", b"b", b"c"])
    assert [body for _, body in spool.peek(2)] == [b"a", b"b"]
    assert [body for _, body in spool.peek(2)] == [b"a", b"b"]
    assert spool.depth == 3


def test_ack_removes_only_the_given_items(spool_path: Path) -> None:
    spool = Spool(spool_path, max_items=100)
    spool.extend([b"a", b"b", b"c", b"d"])
    ids = [item_id for item_id, _ in spool.peek(10)]
    spool.ack([ids[0], ids[2]])
    assert bodies(spool) == [b"b", b"d"]
    assert spool.depth == 2


def test_ack_of_unknown_or_repeated_ids_is_ignored(spool_path: Path) -> None:
    spool = Spool(spool_path, max_items=100)
    spool.extend([b"a", b"b"])
    first_id = spool.peek(1)[0][0]
    spool.ack([first_id])
    spool.ack([first_id, 9_999, -1])
    spool.ack([])
    assert bodies(spool) == [b"b"]
    assert spool.depth == 1


def test_peek_after_id_skips_items_already_handed_out(spool_path: Path) -> None:
    spool = Spool(spool_path, max_items=100)
    spool.extend([b"a", b"b", b"c", b"d"])
    first_two = spool.peek(2)
    rest = spool.peek(10, after_id=first_two[-1][0])
    assert [body for _, body in rest] == [b"c", b"d"]
    assert spool.peek(10, after_id=rest[-1][0]) == []


def test_items_survive_close_and_reopen(spool_path: Path) -> None:
    spool = Spool(spool_path, max_items=100)
    spool.extend([b"a", b"b", b"c"])
    spool.ack([spool.peek(1)[0][0]])
    last_id = spool.peek(10)[-1][0]
    spool.close()

    reopened = Spool(spool_path, max_items=100)
    assert bodies(reopened) == [b"b", b"c"]
    assert reopened.depth == 2
    reopened.append(b"d")
    assert reopened.peek(10)[-1][0] > last_id  # ids keep growing across restarts, so peek(after_id) stays right


def test_bound_keeps_the_newest_and_counts_the_dropped(spool_path: Path) -> None:
    spool = Spool(spool_path, max_items=5)
    for i in range(8):
        spool.append(bytes([i]))
    assert spool.depth == 5
    assert bodies(spool) == [bytes([i]) for i in range(3, 8)]
    assert spool.dropped == 3
    spool.close()

    reopened = Spool(spool_path, max_items=5)
    assert reopened.dropped == 3
    assert reopened.depth == 5
    assert bodies(reopened) == [bytes([i]) for i in range(3, 8)]


def test_extend_beyond_the_bound_in_one_go(spool_path: Path) -> None:
    spool = Spool(spool_path, max_items=5)
    spool.extend([b"old"])
    spool.extend([bytes([i]) for i in range(12)])
    assert bodies(spool) == [bytes([i]) for i in range(7, 12)]
    assert spool.depth == 5
    assert spool.dropped == 8


def test_acked_items_make_room_before_anything_is_dropped(spool_path: Path) -> None:
    spool = Spool(spool_path, max_items=3)
    spool.extend([b"a", b"b", b"c"])
    spool.ack([item_id for item_id, _ in spool.peek(2)])
    spool.extend([b"d", b"e"])
    assert bodies(spool) == [b"c", b"d", b"e"]
    assert spool.dropped == 0


@pytest.mark.parametrize("max_items", [0, -1])
def test_max_items_must_be_positive(spool_path: Path, max_items: int) -> None:
    with pytest.raises(ValueError, match="max_items"):
        Spool(spool_path, max_items=max_items)


# --- property: the spool behaves like a bounded list -------------------------------------------------------


class SpoolMatchesBoundedList(RuleBasedStateMachine):
    """Model: a list of bodies; appends add at the end, the oldest fall off beyond max_items, acks remove."""

    MAX_ITEMS = 4

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.TemporaryDirectory()
        self.path = Path(self.directory.name) / "spool.db"
        self.spool = Spool(self.path, self.MAX_ITEMS)
        self.model: list[bytes] = []
        self.dropped = 0
        self.counter = 0

    def _new_bodies(self, count: int) -> list[bytes]:
        made = [f"body-{self.counter + i}".encode() for i in range(count)]
        self.counter += count
        return made

    def _model_add(self, added: list[bytes]) -> None:
        self.model += added
        excess = len(self.model) - self.MAX_ITEMS
        if excess > 0:
            del self.model[:excess]
            self.dropped += excess

    @rule()
    def append(self) -> None:
        body = self._new_bodies(1)
        self.spool.append(body[0])
        self._model_add(body)

    @rule(count=st.integers(min_value=0, max_value=2 * MAX_ITEMS + 1))
    def extend(self, count: int) -> None:
        added = self._new_bodies(count)
        self.spool.extend(added)
        self._model_add(added)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def ack_some(self, data: st.DataObject) -> None:
        items = self.spool.peek(100)
        chosen = data.draw(st.lists(st.sampled_from(items), unique=True))
        unknown = data.draw(st.lists(st.integers(min_value=10_000, max_value=20_000), max_size=2))
        self.spool.ack([item_id for item_id, _ in chosen] + unknown)
        for _, body in chosen:
            self.model.remove(body)

    @rule()
    def reopen(self) -> None:
        self.spool.close()
        self.spool = Spool(self.path, self.MAX_ITEMS)

    @invariant()
    def content_matches_model(self) -> None:
        assert bodies(self.spool) == self.model
        assert self.spool.depth == len(self.model)
        assert self.spool.dropped == self.dropped

    def teardown(self) -> None:
        self.spool.close()
        self.directory.cleanup()


SpoolMatchesBoundedList.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
test_spool_matches_a_bounded_list = SpoolMatchesBoundedList.TestCase


# --- durability against SIGKILL ----------------------------------------------------------------------------

_CHILD = """
import sys, time
from common.spool import Spool
spool = Spool(sys.argv[1], max_items=1000)
count = int(sys.argv[2])
for i in range(count // 2):
    spool.append(f"item-{i}".encode())
spool.extend([f"item-{i}".encode() for i in range(count // 2, count)])
print("appended", count, flush=True)
time.sleep(60)
"""


def test_items_appended_before_sigkill_are_all_there(spool_path: Path) -> None:
    count = 50
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(spool_path), str(count)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        line = child.stdout.readline()
        assert line.strip() == f"appended {count}"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()

    spool = Spool(spool_path, max_items=1000)
    assert bodies(spool) == [f"item-{i}".encode() for i in range(count)]
    assert spool.depth == count
