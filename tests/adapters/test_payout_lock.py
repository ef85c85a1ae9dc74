"""The payout lock on a real Redis (the session stack's: 127.0.0.1:6379 when one answers), one
key per test: one holder at a time, renewed while held, a dead holder on this host taken over at
once, a live or remote one waited for and named when the wait runs out."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from streams.adapters.payout_lock import Holder, LockLost, LockTimeout, PayoutLock, pid_alive

pytestmark = pytest.mark.integration


@pytest.fixture
def key(stack: Any) -> Iterator[str]:
    name = f"rs:test:{uuid.uuid4().hex}:payouts:lock"
    yield name
    redis.Redis.from_url(stack.redis_url).delete(name)


@pytest.fixture
def new_lock(stack: Any, key: str) -> Iterator[Callable[..., PayoutLock]]:
    made: list[PayoutLock] = []

    def make(**kw: Any) -> PayoutLock:
        lock = PayoutLock(stack.redis_url, key, **kw)
        made.append(lock)
        return lock

    yield make
    for lock in made:
        lock.release()
        lock.close()


def test_one_holder_at_a_time(new_lock: Callable[..., PayoutLock]) -> None:
    first, second = new_lock(), new_lock()
    first.acquire(wait_s=0)
    holder = second.try_acquire()
    assert holder is not None and (holder.host, holder.pid) == (socket.gethostname(), os.getpid())
    first.release()
    assert second.try_acquire() is None
    assert first.try_acquire() is not None


def test_threads_never_overlap(new_lock: Callable[..., PayoutLock]) -> None:
    inside, overlaps, done = [0], [0], []

    def job() -> None:
        with new_lock().hold(wait_s=30):
            inside[0] += 1
            if inside[0] > 1:
                overlaps[0] += 1
            time.sleep(0.05)
            inside[0] -= 1
            done.append(1)

    threads = [threading.Thread(target=job) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(done), overlaps[0]) == (6, 0)


def test_renewed_while_held_and_expires_when_not(stack: Any, key: str, new_lock: Callable[..., PayoutLock]) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    held = new_lock(ttl_s=1.0, renew_s=0.2)
    with held.hold(wait_s=0):
        time.sleep(2.5)  # 2.5 TTLs: only renewal keeps it
        assert client.pttl(key) > 500
        assert new_lock().try_acquire() is not None
        held.check()
    assert client.get(key) is None

    stalled = new_lock(ttl_s=1.0, renew_s=0.5)
    assert stalled.try_acquire() is None  # taken without the renewal thread: like a job that hangs
    time.sleep(1.3)
    assert new_lock().try_acquire() is None
    with pytest.raises(LockLost, match="was lost"):
        stalled.check()
    stalled.release()  # compare-and-delete: the new holder keeps its lock
    assert client.get(key) is not None


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def zombie_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    proc.kill()
    time.sleep(0.3)  # not reaped: a zombie until the test process waits for it
    return proc.pid


HERE = socket.gethostname()
# (holder: host, pid; taken over at once?)
HOLDER_CASES: list[tuple[str, Callable[[], str], Callable[[], int], bool]] = [
    ("dead-here", lambda: HERE, dead_pid, True),
    ("zombie-here", lambda: HERE, zombie_pid, True),
    ("alive-here", lambda: HERE, os.getpid, False),
    ("dead-elsewhere", lambda: "another-host", dead_pid, False),
]


@pytest.mark.parametrize("name,host,pid,taken", HOLDER_CASES, ids=[c[0] for c in HOLDER_CASES])
def test_a_dead_holder_on_this_host_is_taken_over(stack: Any, key: str, new_lock: Callable[..., PayoutLock],
                                                   name: str, host: Callable[[], str], pid: Callable[[], int],
                                                   taken: bool) -> None:
    value = json.dumps({"token": "t", "host": host(), "pid": pid(), "since": time.time(), "what": name})
    redis.Redis.from_url(stack.redis_url).set(key, value, px=60_000)
    lock = new_lock()
    started = time.monotonic()
    if taken:
        lock.acquire(wait_s=10)
        assert time.monotonic() - started < 2
        lock.check()
    else:
        with pytest.raises(LockTimeout):
            lock.acquire(wait_s=0.5)


def test_a_killed_job_does_not_block_the_next(stack: Any, key: str, new_lock: Callable[..., PayoutLock]) -> None:
    code = ("import sys, time; from streams.adapters.payout_lock import PayoutLock; "
            "PayoutLock(sys.argv[1], sys.argv[2], ttl_s=60).acquire(0); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, stack.redis_url, key], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        assert new_lock().try_acquire() is not None
        proc.kill()
        proc.wait()
        started = time.monotonic()
        new_lock().acquire(wait_s=10)
        assert time.monotonic() - started < 2  # not the 60 s TTL
    finally:
        proc.kill()
        proc.wait()


def test_a_timeout_names_the_holder(new_lock: Callable[..., PayoutLock]) -> None:
    holder = new_lock(what="payouts run --through 2026-11-30")
    holder.acquire(wait_s=0)
    told: list[Holder] = []
    started = time.monotonic()
    with pytest.raises(LockTimeout) as err:
        new_lock().acquire(wait_s=0.6, on_wait=told.append)
    assert 0.6 <= time.monotonic() - started < 3
    message = str(err.value)
    assert f"pid {os.getpid()} on {HERE}" in message and "payouts run --through 2026-11-30" in message
    assert "waited 0.6 s" in message
    assert [(h.pid, h.what) for h in told] == [(os.getpid(), "payouts run --through 2026-11-30")]


def test_pid_alive() -> None:
    assert pid_alive(os.getpid())
    assert not pid_alive(dead_pid())
    assert not pid_alive(0)
