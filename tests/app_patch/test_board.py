"""The pause board across real forked processes: a child SIGKILLed while it writes (as
Celery kills a child at its hard time limit) must not block anyone nor tear the data."""

import multiprocessing
import os
import select
import signal
import threading
import time

import pytest

from blipguard.app_patch.pause import board
from blipguard.localstack.procs import BackgroundThread

pytestmark = pytest.mark.pause

fork = multiprocessing.get_context("fork")
DEADLINE = 3.0


def _signal_and_block(fd: int):
    os.write(fd, b"x")
    time.sleep(3600)


def _wait_for(fd: int) -> None:
    ready, _, _ = select.select([fd], [], [], 10)
    assert ready, "the child never reached its critical section"
    os.read(fd, 1)


def _within(seconds: float, fn):
    """fn() in a thread; fails the test (instead of hanging it) if it takes longer."""
    t = BackgroundThread(lambda: setattr(t, "result", fn()), "board-call")
    t.start()
    t.join(seconds)  # re-raises what fn raised
    assert not t.is_alive(), f"still blocked after {seconds}s"
    return t.result


def _child_update(b: board.Board, key: str) -> None:
    b.update(lambda d: {**d, key: True})
    assert b.read()[key] is True


def _run_child(target, *args) -> int:
    p = fork.Process(target=target, args=args)
    p.start()
    p.join(DEADLINE)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail(f"a child running {target.__name__} was still blocked after {DEADLINE}s")
    return p.exitcode


def _kill(p) -> None:
    os.kill(p.pid, signal.SIGKILL)
    p.join(5)
    assert p.exitcode == -signal.SIGKILL


def test_a_child_killed_holding_the_write_lock_blocks_nobody():
    b = board.Board()
    b.write({"leases": {"redis": {"until": 1e12, "reason": "before"}}})
    r, w = os.pipe()

    def hold_inside_update():
        b.update(lambda d: _signal_and_block(w))

    holder = fork.Process(target=hold_inside_update)
    holder.start()
    _wait_for(r)  # the child holds the write lock now
    _kill(holder)

    _within(DEADLINE, lambda: b.update(lambda d: {**d, "parent": True}))
    assert _run_child(_child_update, b, "sibling") == 0
    data = _within(DEADLINE, b.read)
    assert data == {"leases": {"redis": {"until": 1e12, "reason": "before"}}, "parent": True, "sibling": True}


def test_a_child_killed_before_its_write_is_published_leaves_the_old_data():
    b = board.Board()
    before = {"leases": {"redis": {"until": 1e12, "reason": "kept"}}, "failures": {"redis": 2}}
    b.write(before)
    r, w = os.pipe()

    def write_then_block_before_commit():
        b._commit = lambda gen: _signal_and_block(w)
        b.write({"leases": {}, "filler": "y" * 6000})

    writer = fork.Process(target=write_then_block_before_commit)
    writer.start()
    _wait_for(r)  # the child has filled the spare slot, not yet published it
    _kill(writer)

    assert _within(DEADLINE, b.read) == before
    _within(DEADLINE, lambda: b.update(lambda d: {**d, "after": 1}))
    assert b.read() == {**before, "after": 1}


def test_a_stuck_live_writer_makes_others_fail_after_a_bounded_wait(monkeypatch):
    monkeypatch.setattr(board, "LOCK_TIMEOUT", 0.3)
    b = board.Board()
    r, w = os.pipe()
    holder = fork.Process(target=lambda: b.update(lambda d: _signal_and_block(w)))
    holder.start()
    try:
        _wait_for(r)
        started = time.monotonic()
        with pytest.raises(board.BoardBusy):
            _within(DEADLINE, lambda: b.update(lambda d: d))
        assert time.monotonic() - started < 1.5
        assert _within(DEADLINE, b.read) == {}  # readers never wait
    finally:
        _kill(holder)


def _add(b: board.Board, n: int) -> None:
    for _ in range(n):
        b.update(lambda d: {**d, "count": d.get("count", 0) + 1})


def test_writers_in_several_processes_and_threads_never_lose_an_update():
    b = board.Board()
    children = [fork.Process(target=_add, args=(b, 200)) for _ in range(3)]
    for p in children:
        p.start()
    threads = [threading.Thread(target=_add, args=(b, 200)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for p in children:
        p.join(30)
        assert p.exitcode == 0
    assert b.read()["count"] == 5 * 200


def test_a_read_overtaken_by_writers_is_retried_not_torn():
    b = board.Board()
    b.write({"v": "a"})
    final = {"v": "c" * 300}
    copy = b._copy

    def overtaken(at, n):  # the reader has the slot's length; two writes land before it copies
        b._copy = copy
        assert _run_child(lambda: (b.write({"v": "b" * 300}), b.write(final))) == 0
        return copy(at, n)

    b._copy = overtaken
    assert b.read() == final


def _scribble(b: board.Board, rounds: int) -> None:
    for i in range(rounds):
        size = 100 if i % 2 else 7000
        b.write({"i": i, "pad": "z" * size, "size": size})


def test_lock_free_readers_never_see_a_torn_write():
    b = board.Board()
    b.write({"i": -1, "pad": "", "size": 0})
    writer = fork.Process(target=_scribble, args=(b, 3000))
    writer.start()
    seen = set()
    while writer.is_alive() or not seen:
        data = b.read()
        assert len(data["pad"]) == data["size"]
        seen.add(data["i"])
    writer.join(30)
    assert writer.exitcode == 0 and len(seen) > 1


def test_a_read_is_cached_until_the_board_changes():
    b = board.Board()
    b.write({"a": 1})
    first = b.read()
    assert b.read() is first
    b.update(lambda d: {**d, "b": 2})
    assert b.read() == {"a": 1, "b": 2}


def test_overflow_is_refused_and_leaves_the_board_alone():
    b = board.Board()
    b.write({"a": 1})
    with pytest.raises(ValueError, match="overflow"):
        b.write({"pad": "x" * board.SIZE})
    assert b.read() == {"a": 1}


def test_paused_for_names_the_longest_active_lease(monkeypatch):
    b = board.Board()
    monkeypatch.setattr(board, "_board", b)
    b.write({"leases": {"redis": {"until": 110, "reason": "r"}, "nats": {"until": 90, "reason": "n"}}})
    assert board.paused_for(now=100) == {"dependency": "redis", "reason": "r", "until": 110}
    assert board.paused_for(now=120) is None
