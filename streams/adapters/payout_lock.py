"""One payout job at a time per deployment: a Redis lock (docs/payouts.md, "No line is paid twice").

SET NX PX with a value that names the holder (a random token, host, pid namespace, pid, the
process's start time, when it took the lock), renewed by a background thread while the job
lives and released by compare-and-delete, so a job only ever renews or releases its own lock.
A holder that died on this host and in this pid namespace (SIGKILL, OOM) is taken over at once
instead of blocking for the TTL (`may_take_over`: the pid is gone, a zombie, or now another
process, by its start time); any other holder is waited for up to `wait_s`. A pid means
nothing across pid namespaces: containers that share a hostname never take over each other's
lock, they wait for its TTL. If a renewal finds the lock gone (the job stalled past the TTL),
`check` raises `LockLost` before the job commits anything. Messages show the Redis URL without
its password.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# ARGV: value; 1 if this value held the lock and it was deleted
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# ARGV: value, ttl ms; 1 if this value holds the lock (its TTL renewed)
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# ARGV: the dead holder's value, ours, ttl ms; 1 if the dead holder's value was replaced by ours
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


#: a `password=` query parameter of a Redis URL
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


class LockError(Exception):
    """The lock could not be taken or was lost; the message says what to do."""


class LockTimeout(LockError):
    pass


class LockLost(LockError):
    pass


def redact(url: str) -> str:
    """`url` with its password (`redis://user:PASSWORD@host`, `?password=`) replaced by ***,
    for messages and logs (as `sinks.clickhouse.redact` does for ClickHouse DSNs)."""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return "<unreadable Redis URL>"
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            url = url.replace(netloc, f"{userinfo.split(':', 1)[0]}:***@{hostport}", 1)
    return _QUERY_PASSWORD.sub(r"\1***", url)


def _password(url: str) -> str:
    try:
        return urlsplit(url).password or ""
    except ValueError:
        return ""


@dataclass(frozen=True)
class Holder:
    """Who holds the lock, as its value says (`pidns`, `start` empty / None in values written
    before they were recorded: such a holder is never taken over, its lock expires)."""

    host: str
    pid: int
    since: float  # epoch seconds
    what: str
    pidns: str = ""  # the holder's pid namespace, e.g. "pid:[4026531836]"
    start: int | None = None  # the holder process's start time (/proc/<pid>/stat field 22, clock ticks)

    @classmethod
    def parse(cls, value: bytes | str) -> Holder | None:
        try:
            doc = json.loads(value)
            start = doc.get("start")
            return cls(str(doc["host"]), int(doc["pid"]), float(doc["since"]), str(doc.get("what", "")),
                       str(doc.get("pidns") or ""), None if start is None else int(start))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return f"{self.what or 'a payout job'} (pid {self.pid} on {self.host}, since {since})"


@dataclass(frozen=True)
class Proc:
    """What /proc says about a pid in our namespace: gone, or running (zombie or not) since `start`."""

    exists: bool
    zombie: bool = False
    start: int | None = None  # None: unknown (unreadable)


def this_host() -> str:
    """The host name with this boot's id: two machines (or VMs cloned from one image) may share
    a host name and even a pid namespace inode, never a boot id."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f"{socket.gethostname()}/{f.read().strip()[:8]}"
    except OSError:
        return socket.gethostname()


def pid_namespace() -> str:
    """This process's pid namespace ("pid:[inode]"), '' where there is no /proc."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def probe(pid: int) -> Proc:
    """Process `pid` of this pid namespace, from /proc/<pid>/stat (state: field 3, start time:
    field 22; fields counted after the parenthesised command name, which may hold spaces)."""
    if pid <= 0:
        return Proc(exists=False)
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return Proc(exists=False)
    except (OSError, IndexError):
        return Proc(exists=True)  # there, but unreadable: assume alive
    try:
        return Proc(exists=True, zombie=fields[0] == "Z", start=int(fields[19]))
    except (IndexError, ValueError):
        return Proc(exists=True, zombie=fields[:1] == ["Z"])


def start_time(pid: int) -> int | None:
    """The start time of process `pid` (clock ticks after boot), None if unknown."""
    return probe(pid).start


def may_take_over(holder: Holder, host: str, pidns: str, proc: Proc) -> bool:
    """Whether `holder`'s lock may be taken at once by a job on `host` in pid namespace `pidns`,
    `proc` being what this namespace's /proc says about the holder's pid. Only a holder of
    this host and this pid namespace (both known) can be judged dead; it is dead if its pid is
    gone, a zombie, or a process started at another time than the holder (the pid was reused).
    Anything unknown means alive: the lock then expires by its TTL."""
    if not host or holder.host != host or not pidns or holder.pidns != pidns:
        return False
    if not proc.exists or proc.zombie:
        return True
    return holder.start is not None and proc.start is not None and proc.start != holder.start


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this pid namespace still runs (a zombie counts as dead)."""
    proc = probe(pid)
    return proc.exists and not proc.zombie


class PayoutLock:
    """The lock at `key` on `redis_url`. Use `hold()` as a context manager."""

    def __init__(self, redis_url: str, key: str, *, ttl_s: float = 30.0, renew_s: float = 5.0,
                 what: str = "payout job", client: Any = None) -> None:
        if renew_s >= ttl_s:
            raise ValueError("renew_s must be below ttl_s")
        self.redis_url = redact(redis_url)  # for messages only
        self._password = _password(redis_url)
        self.key = key
        self.ttl_ms = int(ttl_s * 1000)
        self.renew_s = renew_s
        self.host = this_host()
        self.pidns = pid_namespace()
        pid = os.getpid()
        self.value = json.dumps({"token": secrets.token_hex(16), "host": self.host, "pidns": self.pidns,
                                 "pid": pid, "start": start_time(pid), "since": round(time.time(), 3),
                                 "what": what})
        self.redis = client if client is not None else redis.Redis.from_url(redis_url, socket_timeout=5)
        self.lost = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # taking -------------------------------------------------------------------------------

    def try_acquire(self) -> Holder | None:
        """Take the lock if it is free or its holder died on this host and in this pid namespace
        (`may_take_over`); None when taken, else who holds it."""
        if self.redis.set(self.key, self.value, nx=True, px=self.ttl_ms):
            return None
        current = self.redis.get(self.key)
        if current is None:  # expired between the two calls
            return self.try_acquire()
        holder = Holder.parse(current)
        if holder is None:
            return Holder("?", 0, time.time(), f"an unreadable lock value {current!r}")
        if may_take_over(holder, self.host, self.pidns, probe(holder.pid)):
            if self.redis.eval(_TAKE_OVER, 1, self.key, current, self.value, self.ttl_ms):
                log.warning("payout lock taken over from a dead holder", extra={"holder": holder.describe()})
                return None
            return self.try_acquire()
        return holder

    def acquire(self, wait_s: float, on_wait: Callable[[Holder], None] | None = None,
                poll_s: float = 0.25) -> None:
        """Take the lock, waiting up to `wait_s` for its holder; `on_wait` is told who holds it
        (at the first wait, then every 10 s). Raises LockTimeout, or LockError if Redis fails."""
        deadline = time.monotonic() + wait_s
        told_at: float | None = None
        try:
            while True:
                holder = self.try_acquire()
                if holder is None:
                    break
                now = time.monotonic()
                if now >= deadline:
                    raise LockTimeout(
                        f"another payout job holds the lock {self.key}: {holder.describe()}; waited {wait_s:g} s. "
                        "Let it finish and run again (a longer --wait waits for it); a holder that died on "
                        f"another host or in another container frees the lock within {self.ttl_ms / 1000:g} s")
                if on_wait is not None and (told_at is None or now - told_at >= 10):
                    on_wait(holder)
                    told_at = now
                time.sleep(min(poll_s, max(0.0, deadline - now)))
        except RedisError as exc:
            raise LockError(f"cannot take the payout lock on Redis {self.redis_url}: {self._scrub(exc)}. "
                            "Start Redis or point REFSTREAM_REDIS_URL at it") from exc
        self.lost = False
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="payout-lock-renewal", daemon=True)
        self._renewer.start()

    # holding ------------------------------------------------------------------------------

    def renew(self) -> bool:
        """Extend the TTL if we still hold the lock; False (and `lost`) if we do not."""
        held = bool(self.redis.eval(_RENEW, 1, self.key, self.value, self.ttl_ms))
        if not held:
            self.lost = True
        return held

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                if not self.renew():
                    log.error("payout lock lost", extra={"key": self.key})
                    return
            except RedisError as exc:  # retried at the next tick; the TTL covers a few misses
                log.warning("payout lock renewal failed", extra={"key": self.key, "error": self._scrub(exc)})

    def check(self) -> None:
        """Raise LockLost unless we still hold the lock (call before committing)."""
        try:
            held = not self.lost and self.renew()
        except RedisError as exc:
            raise LockLost(f"cannot confirm the payout lock on Redis {self.redis_url}: {self._scrub(exc)}") from exc
        if not held:
            raise LockLost(f"the payout lock {self.key} was lost (this job stalled longer than "
                           f"{self.ttl_ms / 1000:g} s?); nothing was committed: run again")

    def _scrub(self, exc: BaseException) -> str:
        """`exc`'s text without the Redis password, should a client library ever echo it."""
        text = str(exc)
        return text.replace(self._password, "***") if self._password else text

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        try:
            self.redis.eval(_RELEASE, 1, self.key, self.value)
        except RedisError as exc:  # it expires by itself
            log.warning("payout lock release failed", extra={"key": self.key, "error": self._scrub(exc)})

    @contextmanager
    def hold(self, wait_s: float, on_wait: Callable[[Holder], None] | None = None) -> Iterator[PayoutLock]:
        self.acquire(wait_s, on_wait)
        try:
            yield self
        finally:
            self.release()

    def close(self) -> None:
        self.redis.close()


def lock_key(namespace: str) -> str:
    """The payout lock of one deployment (`Settings.redis_namespace`: app id and topic prefix)."""
    return f"{namespace}:payouts:lock"
