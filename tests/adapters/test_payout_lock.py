"""The payout lock on a real Redis (the session stack's: 127.0.0.1:6379 when one answers), one
key per test: one holder at a time, renewed while held, a dead holder on this host and in this pid
namespace taken over at once, a live, remote or other-namespace one waited for and named when the
wait runs out; the takeover decision as a pure function; no password in any message."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from streams.adapters.payout_lock import (
    Holder,
    LockError,
    LockLost,
    LockTimeout,
    PayoutLock,
    Proc,
    may_take_over,
    pid_alive,
    pid_namespace,
    probe,
    redact,
    start_time,
    this_host,
)

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
    assert holder is not None and (holder.host, holder.pid) == (this_host(), os.getpid())
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


_ZOMBIES: list[subprocess.Popen[bytes]] = []  # their Popen kept: a dropped Popen reaps its process


def zombie_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    proc.kill()
    time.sleep(0.3)  # not reaped: a zombie until the test process waits for it
    _ZOMBIES.append(proc)
    assert probe(proc.pid).zombie
    return proc.pid


HERE = this_host()
NS = pid_namespace()
OTHER_NS = "pid:[1]"


def me() -> int:
    return os.getpid()


# (holder: host, pid namespace, pid, its recorded start time (None: not recorded); taken over at once?)
HOLDER_CASES: list[tuple[str, Callable[[], str], str, Callable[[], int], Callable[[int], int | None], bool]] = [
    ("dead-here", lambda: HERE, NS, dead_pid, lambda pid: 12345, True),
    ("zombie-here", lambda: HERE, NS, zombie_pid, start_time, True),
    ("pid-reused-here", lambda: HERE, NS, me, lambda pid: (start_time(pid) or 0) + 1, True),
    ("alive-here", lambda: HERE, NS, me, start_time, False),
    ("alive-here-start-unrecorded", lambda: HERE, NS, me, lambda pid: None, False),
    ("dead-elsewhere", lambda: "another-host", NS, dead_pid, lambda pid: 12345, False),
    ("dead-in-another-container", lambda: HERE, OTHER_NS, dead_pid, lambda pid: 12345, False),
    ("dead-namespace-unrecorded", lambda: HERE, "", dead_pid, lambda pid: 12345, False),
]


@pytest.mark.parametrize("name,host,ns,pid,start,taken", HOLDER_CASES, ids=[c[0] for c in HOLDER_CASES])
def test_a_dead_holder_on_this_host_is_taken_over(stack: Any, key: str, new_lock: Callable[..., PayoutLock],
                                                   name: str, host: Callable[[], str], ns: str,
                                                   pid: Callable[[], int], start: Callable[[int], int | None],
                                                   taken: bool) -> None:
    holder_pid = pid()
    doc = {"token": "t", "host": host(), "pid": holder_pid, "since": time.time(), "what": name,
           "start": start(holder_pid)}
    if ns:
        doc["pidns"] = ns
    redis.Redis.from_url(stack.redis_url).set(key, json.dumps(doc), px=60_000)
    lock = new_lock()
    started = time.monotonic()
    if taken:
        lock.acquire(wait_s=10)
        assert time.monotonic() - started < 2
        lock.check()
    else:
        with pytest.raises(LockTimeout):
            lock.acquire(wait_s=0.5)


def holder(host: str = "h1", pidns: str = "pid:[7]", start: int | None = 100) -> Holder:
    return Holder(host, 4242, 0.0, "payouts run", pidns, start)


# (the holder, our host, our namespace, what /proc says about its pid here, take over?)
DECISIONS: list[tuple[str, Holder, str, str, Proc, bool]] = [
    ("same host+ns, pid gone", holder(), "h1", "pid:[7]", Proc(exists=False), True),
    ("same host+ns, zombie", holder(), "h1", "pid:[7]", Proc(exists=True, zombie=True, start=100), True),
    ("same host+ns, pid reused", holder(), "h1", "pid:[7]", Proc(exists=True, start=999), True),
    ("same host+ns, alive", holder(), "h1", "pid:[7]", Proc(exists=True, start=100), False),
    ("same host+ns, alive, start unreadable", holder(), "h1", "pid:[7]", Proc(exists=True), False),
    ("same host+ns, alive, start unrecorded", holder(start=None), "h1", "pid:[7]", Proc(exists=True, start=5), False),
    ("same host+ns, gone, start unrecorded", holder(start=None), "h1", "pid:[7]", Proc(exists=False), True),
    ("another host", holder(), "h2", "pid:[7]", Proc(exists=False), False),
    ("same hostname, another container", holder(), "h1", "pid:[8]", Proc(exists=False), False),
    ("holder's namespace unrecorded", holder(pidns=""), "h1", "pid:[7]", Proc(exists=False), False),
    ("our namespace unknown", holder(pidns=""), "h1", "", Proc(exists=False), False),
    ("no hostname", holder(host=""), "", "pid:[7]", Proc(exists=False), False),
]


@pytest.mark.parametrize("name,who,host,pidns,proc,taken", DECISIONS, ids=[d[0] for d in DECISIONS])
def test_may_take_over(name: str, who: Holder, host: str, pidns: str, proc: Proc, taken: bool) -> None:
    assert may_take_over(who, host, pidns, proc) is taken


def test_the_lock_value_names_namespace_and_start_time(new_lock: Callable[..., PayoutLock]) -> None:
    lock = new_lock(what="payouts run")
    doc = json.loads(lock.value)
    assert (doc["host"], doc["pid"], doc["pidns"]) == (HERE, os.getpid(), NS) and NS.startswith("pid:[")
    assert doc["start"] == start_time(os.getpid()) and isinstance(doc["start"], int)
    parsed = Holder.parse(lock.value)
    assert parsed is not None and (parsed.pidns, parsed.start) == (NS, doc["start"])
    old = Holder.parse(json.dumps({"host": HERE, "pid": 1, "since": 0}))  # a value from before
    assert old is not None and (old.pidns, old.start) == ("", None)


def test_probe() -> None:
    here = probe(os.getpid())
    assert here.exists and not here.zombie and here.start == start_time(os.getpid())
    assert probe(dead_pid()) == Proc(exists=False) and probe(0) == Proc(exists=False)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        proc.kill()
        time.sleep(0.3)  # not reaped (we hold the Popen): a zombie until we wait for it
        z = probe(proc.pid)
        assert z.exists and z.zombie and not pid_alive(proc.pid)
    finally:
        proc.wait()


# (Redis URL, as shown in messages)
URLS = [
    ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("redis://app:s3cret@127.0.0.1/2", "redis://app:***@127.0.0.1/2"),
    ("rediss://127.0.0.1:6380/0?password=s3cret&ssl_cert_reqs=none", "rediss://127.0.0.1:6380/0?password=***&ssl_cert_reqs=none"),
    ("unix:///run/redis.sock?db=1&password=s3cret", "unix:///run/redis.sock?db=1&password=***"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://app@127.0.0.1/0", "redis://app@127.0.0.1/0"),
]


@pytest.mark.parametrize("url,shown", URLS, ids=[u for u, _ in URLS])
def test_redact(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_no_password_in_lock_errors() -> None:
    url = "redis://:s3cret@127.0.0.1:1/0"  # nothing listens on port 1
    lock = PayoutLock(url, "rs:test:nowhere:payouts:lock")
    try:
        with pytest.raises(LockError) as err:
            lock.acquire(wait_s=0)
    finally:
        lock.close()
    assert "s3cret" not in str(err.value) and "redis://:***@127.0.0.1:1/0" in str(err.value)

    class Failing:
        def eval(self, *args: Any) -> Any:
            raise RedisConnectionError("Error connecting with password s3cret")

    stalled = PayoutLock(url, "rs:test:nowhere:payouts:lock", client=Failing())
    with pytest.raises(LockLost) as lost:
        stalled.check()
    assert "s3cret" not in str(lost.value) and "redis://:***@127.0.0.1:1/0" in str(lost.value)
    assert "password ***" in str(lost.value)


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
