"""The start-up check of the Kafka settings: connect once as the clients will, and turn a
failure into one message naming the setting to fix (`KafkaSetupError`).

The CLI runs `check_connection` before a command that talks to Kafka, so that a wrong
certificate, password or protocol gives one clear error and a non-zero exit instead of a
client retrying forever. When a connection simply drops, the listener is asked whether it
speaks TLS or plaintext Kafka, so the message can say which protocol to set. No message
built here contains a secret.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from streams.adapters.kafka import client_kwargs, error_text, var
from streams.config import PREFIX, SASL_PROTOCOLS, TLS_PROTOCOLS, ConfigError, Settings

#: OpenSSL's verify codes that mean "this certificate is not for that host" and "expired"
X509_HOSTNAME_MISMATCH, X509_IP_MISMATCH, X509_CERT_HAS_EXPIRED = 62, 64, 10
CHECK_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 3.0  # each of the questions asked of a listener after a failure
ADVERTISED_CHECKS = 5  # at most this many advertised brokers are tried at start-up


class KafkaSetupError(ConfigError):
    """Kafka cannot be used with these settings; the message names the setting to fix."""


class FirstRequestFailed(Exception):
    """The connection (TLS, SASL) was made, but the first request after it failed (its cause)."""


@dataclass(frozen=True)
class Probe:
    """What a listener turned out to speak, asked only when a connection failed: whether it
    completes a TLS handshake, and whether it answers a plaintext Kafka request."""

    tls: bool = False
    plaintext_kafka: bool = False


def check_connection(settings: Settings, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """Connect once as the clients will (TLS, SASL, a metadata request, then one of the brokers
    the cluster advertises); raise KafkaSetupError saying what to fix when that fails."""
    quiet = logging.getLogger("aiokafka")  # the check reports its failures itself, in one message
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        asyncio.run(verify(settings, timeout_s))
    finally:
        quiet.setLevel(level)


async def verify(settings: Settings, timeout_s: float = CHECK_TIMEOUT_S) -> list[tuple[str, int]]:
    """`check_connection` in a running event loop; the advertised brokers (host, port)."""
    kwargs = client_kwargs(settings)  # bad certificate or key files raise ConfigError here
    failures: list[tuple[str, int, BaseException]] = []
    for host, port in _hosts(settings):
        try:
            brokers = await _metadata(host, port, kwargs, timeout_s)
        except Exception as exc:  # classified below: every failure becomes a message
            failures.append((host, port, exc))
            continue
        await _check_advertised(settings, (host, port), brokers, kwargs, timeout_s)
        return brokers
    # one broker down (refused, no answer) must not hide a certificate, password or protocol
    # that is wrong for all: report the most telling failure
    host, port, error = min(failures, key=lambda f: _unreachable(f[2]))
    probe = await _probe(host, port, timeout_s) if _needs_probe(error) else Probe()
    raise KafkaSetupError(describe_failure(settings, host, port, error, probe))


def _unreachable(exc: BaseException) -> bool:
    """Nothing answered at all: says the least about the settings."""
    return any(isinstance(e, TimeoutError) or (isinstance(e, OSError) and not isinstance(e, ssl.SSLError)
                                                and _refused(e)) for e in _chain(exc))


async def _check_advertised(settings: Settings, bootstrap: tuple[str, int], brokers: list[tuple[str, int]],
                            kwargs: dict[str, Any], timeout_s: float) -> None:
    """Clients go on to the brokers' advertised listeners: one of them must work too."""
    if not brokers or _same(bootstrap, brokers):
        return
    candidates = brokers[:ADVERTISED_CHECKS]
    results = await asyncio.gather(*(_metadata(h, p, kwargs, timeout_s) for h, p in candidates),
                                   return_exceptions=True)
    if any(not isinstance(r, BaseException) for r in results):
        return
    (host, port), exc = candidates[0], results[0]
    assert isinstance(exc, BaseException)
    probe = await _probe(host, port, timeout_s) if _needs_probe(exc) else Probe()
    listed = ", ".join(f"{h}:{p}" for h, p in brokers)
    raise KafkaSetupError(
        f"{bootstrap[0]}:{bootstrap[1]} answers, but the brokers it advertises ({listed}) do not: "
        f"{describe_failure(settings, host, port, exc, probe)}. Clients connect to the advertised "
        "listeners: the brokers' advertised.listeners must be reachable from here, with the same protocol")


def _same(address: tuple[str, int], brokers: list[tuple[str, int]]) -> bool:
    return any(address[0].lower() == h.lower() and address[1] == p for h, p in brokers)


def _hosts(settings: Settings) -> Iterator[tuple[str, int]]:
    for server in settings.bootstrap_servers:
        host, _, port = server.rpartition(":")
        if not host:  # no port: Kafka's default
            host, port = server, "9092"
        yield host.strip("[]"), int(port)


async def _metadata(host: str, port: int, kwargs: dict[str, Any], timeout_s: float) -> list[tuple[str, int]]:
    """Connect (TCP, TLS, ApiVersions, SASL) and ask for the brokers; their (host, port)."""
    from aiokafka.cluster import ClusterMetadata
    from aiokafka.conn import create_conn
    from aiokafka.protocol.metadata import MetadataRequest

    conn = await asyncio.wait_for(
        create_conn(host, port, client_id="refstream-check", request_timeout_ms=int(timeout_s * 1000), **kwargs),
        timeout_s)
    try:
        response = await asyncio.wait_for(conn.send(MetadataRequest([])), timeout_s)
    except Exception as exc:
        raise FirstRequestFailed(f"{host}:{port}") from exc
    finally:
        conn.close()
    cluster = ClusterMetadata()
    cluster.update_metadata(response)
    return sorted((b.host, b.port) for b in cluster.brokers())


def _needs_probe(exc: BaseException) -> bool:
    """Failures that a wrong protocol for the listener also causes."""
    from aiokafka.errors import KafkaConnectionError

    if isinstance(exc, FirstRequestFailed) or _find(exc, ssl.SSLCertVerificationError) or _sasl_rejection(exc):
        return False
    return isinstance(exc, (KafkaConnectionError, TimeoutError, ssl.SSLError, ConnectionError, EOFError))


async def _probe(host: str, port: int, timeout_s: float) -> Probe:
    # plaintext first: a TLS listener drops a plaintext request at once, while a plaintext
    # broker may wait a long time for the rest of what it takes for a huge request (a TLS hello)
    timeout_s = min(timeout_s, PROBE_TIMEOUT_S)
    if await _speaks_plaintext_kafka(host, port, timeout_s):
        return Probe(plaintext_kafka=True)
    return Probe(tls=await _speaks_tls(host, port, timeout_s))


async def _speaks_tls(host: str, port: int, timeout_s: float) -> bool:
    """Whether host:port completes a TLS handshake (any certificate: this only asks what it speaks)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=context), timeout_s)
    except ssl.SSLError as exc:  # an alert is a TLS server's answer (e.g. "certificate required")
        return "ALERT" in (exc.reason or "").upper()
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def _speaks_plaintext_kafka(host: str, port: int, timeout_s: float) -> bool:
    """Whether host:port answers a plaintext Kafka ApiVersions request."""
    correlation_id, client = 0x5EF1, b"refstream-check"
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client)) + client
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(struct.pack(">i", len(body)) + body)
        reply = await asyncio.wait_for(reader.readexactly(8), timeout_s)
        return struct.unpack(">i", reply[4:8])[0] == correlation_id
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()


# Messages ------------------------------------------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _find(exc: BaseException, kind: type[BaseException] | tuple[type[BaseException], ...]) -> Any:
    return next((e for e in _chain(exc) if isinstance(e, kind)), None)


def _sasl_rejection(exc: BaseException) -> BaseException | None:
    from aiokafka import errors

    kinds = (errors.SaslAuthenticationFailed, errors.AuthenticationFailedError, errors.IllegalSaslStateError,
             errors.UnsupportedSaslMechanismError)
    return _find(exc, kinds)


def describe_failure(settings: Settings, host: str, port: int, exc: BaseException, probe: Probe) -> str:
    """What went wrong connecting to host:port and which setting to change; never a secret."""
    where = f"{host}:{port}"
    protocol = settings.kafka_security_protocol
    uses_tls, uses_sasl = protocol in TLS_PROTOCOLS, protocol in SASL_PROTOCOLS
    now = f"{var('SECURITY_PROTOCOL')}={protocol}"
    if isinstance(exc, ConfigError):
        return str(exc)
    verify = _find(exc, ssl.SSLCertVerificationError)
    if verify is not None:
        return _certificate_message(settings, where, host, verify)
    rejection = _sasl_rejection(exc)
    if rejection is not None or (uses_sasl and isinstance(exc, (KeyError, ValueError))):
        return _sasl_message(settings, where, rejection)
    if isinstance(exc, FirstRequestFailed):
        return _first_request_message(settings, where, exc)
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and _refused(exc):
        return (f"nothing accepts connections at {where} ({error_text(exc)}): check {PREFIX}KAFKA_URL "
                f"({settings.kafka_url}) and that the brokers are up")
    if uses_tls and probe.plaintext_kafka:
        return (f"{where} is a plaintext Kafka listener, but {now} starts with a TLS handshake: set "
                f"{var('SECURITY_PROTOCOL')}={'SASL_PLAINTEXT' if uses_sasl else 'PLAINTEXT'}, or put the "
                f"brokers' TLS port in {PREFIX}KAFKA_URL")
    if not uses_tls and probe.tls:
        return (f"{where} is a TLS listener, but {now} talks plaintext (the broker drops such connections): set "
                f"{var('SECURITY_PROTOCOL')}={'SASL_SSL' if uses_sasl else 'SSL'}, and "
                f"{var('SSL_CAFILE')} unless the system's CAs trust the brokers")
    if probe.plaintext_kafka:  # a plaintext Kafka that ended a plaintext connection: a SASL matter
        if uses_sasl:
            return (f"{where} ended the connection during the SASL {settings.kafka_sasl_mechanism} login: check that "
                    f"the listener offers {var('SASL_MECHANISM')}={settings.kafka_sasl_mechanism}, and "
                    f"{var('SASL_USERNAME')} and {var('SASL_PASSWORD')}")
        return _needs_sasl_message(where, "SASL_PLAINTEXT")
    alert = _find(exc, ssl.SSLError)
    if uses_tls and (probe.tls or alert is not None):
        return _after_handshake_message(settings, where, alert)
    if isinstance(exc, TimeoutError) or _find(exc, TimeoutError):
        return (f"no answer from {where} in time: check {PREFIX}KAFKA_URL "
                f"({settings.kafka_url}), the firewall, and that {now} is what that listener speaks")
    return (f"connecting to {where} failed ({error_text(exc)}): check {PREFIX}KAFKA_URL and that {now} is what "
            "that listener speaks")


def _needs_sasl_message(where: str, protocol: str) -> str:
    return (f"{where} took the connection but ended it at the first request: the listener most likely requires "
            f"a SASL login: set {var('SECURITY_PROTOCOL')}={protocol} with {var('SASL_MECHANISM')}, "
            f"{var('SASL_USERNAME')} and {var('SASL_PASSWORD')}")


def _first_request_message(settings: Settings, where: str, exc: FirstRequestFailed) -> str:
    cause = exc.__cause__ or exc
    if settings.kafka_security_protocol not in SASL_PROTOCOLS:
        return _needs_sasl_message(where, "SASL_SSL" if settings.kafka_security_protocol == "SSL" else "SASL_PLAINTEXT")
    return (f"{where} accepted the login of {settings.kafka_sasl_username!r} but not its metadata request "
            f"({error_text(cause)}): the user needs the Describe permission on the cluster and its topics")


def _refused(exc: OSError) -> bool:
    import socket

    return isinstance(exc, (ConnectionRefusedError, socket.gaierror)) or "connect call failed" in str(exc).lower()


def _certificate_message(settings: Settings, where: str, host: str, exc: ssl.SSLCertVerificationError) -> str:
    reason = error_text(exc)
    if exc.verify_code in (X509_HOSTNAME_MISMATCH, X509_IP_MISMATCH):
        return (f"the certificate of {where} is not for {host!r} ({reason}): put a host name the certificate "
                f"names in {PREFIX}KAFKA_URL, or (only if you trust the network) set "
                f"{var('SSL_CHECK_HOSTNAME')}=false")
    if exc.verify_code == X509_CERT_HAS_EXPIRED:
        return f"the certificate of {where} has expired ({reason}): the broker needs a renewed certificate"
    trusted = settings.kafka_ssl_cafile or "the system's CA certificates"
    return (f"the certificate of {where} is not trusted ({reason}); it was checked against {trusted}: set "
            f"{var('SSL_CAFILE')} to the PEM file of the CA that signed the brokers' certificates")


def _sasl_message(settings: Settings, where: str, rejection: BaseException | None) -> str:
    from aiokafka import errors

    mechanism = settings.kafka_sasl_mechanism
    without = "SSL" if settings.kafka_security_protocol == "SASL_SSL" else "PLAINTEXT"
    if isinstance(rejection, errors.UnsupportedSaslMechanismError):
        offered = str(rejection).partition("Enabled mechanisms are: ")[2]
        return (f"{where} does not offer SASL mechanism {mechanism}{f' (it offers {offered})' if offered else ''}: "
                f"set {var('SASL_MECHANISM')} to one it offers; if the listener has no SASL at all, set "
                f"{var('SECURITY_PROTOCOL')}={without}")
    if isinstance(rejection, errors.IllegalSaslStateError):
        return (f"{where} does not expect a SASL login: if the listener has no SASL, set "
                f"{var('SECURITY_PROTOCOL')}={without}")
    # the broker's own words, when it sent any (Kafka's name no secret)
    said = str(rejection).partition(": ")[2] if rejection is not None else ""
    return (f"{where} rejected the SASL {mechanism} login of user {settings.kafka_sasl_username!r}"
            f"{f' ({said})' if said else ''}: check {var('SASL_USERNAME')}, {var('SASL_PASSWORD')} (or "
            f"{var('SASL_PASSWORD')}_FILE) and {var('SASL_MECHANISM')} (a SCRAM user exists per mechanism)")


def _after_handshake_message(settings: Settings, where: str, alert: ssl.SSLError | None) -> str:
    """A TLS listener that ended the connection: mutual TLS without (or with a refused) client
    certificate, or a SASL login it did not like."""
    seen = f" ({error_text(alert)})" if alert is not None else ""
    certificate = (f"set {var('SSL_CERTFILE')} and {var('SSL_KEYFILE')}" if not settings.kafka_ssl_certfile else
                   f"check that it accepts the client certificate in {var('SSL_CERTFILE')}="
                   f"{settings.kafka_ssl_certfile} (signed by a CA the broker trusts, not expired, for clients)")
    if alert is None and settings.kafka_security_protocol == "SASL_SSL":
        return (f"{where} ended the connection after the TLS handshake: check that the listener offers "
                f"{var('SASL_MECHANISM')}={settings.kafka_sasl_mechanism}, and {var('SASL_USERNAME')} and "
                f"{var('SASL_PASSWORD')}; if it requires a client certificate (mutual TLS), {certificate}")
    if alert is None and not settings.kafka_ssl_certfile:
        return (f"{where} ended the connection after the TLS handshake: it most likely requires a client certificate "
                f"(mutual TLS): {certificate}; or a SASL login: set {var('SECURITY_PROTOCOL')}=SASL_SSL")
    if not settings.kafka_ssl_certfile:
        return f"{where} ended the TLS connection{seen}: it requires a client certificate (mutual TLS): {certificate}"
    return f"{where} ended the TLS connection{seen}: it does not accept the client certificate: {certificate}"
