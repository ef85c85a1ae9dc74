"""The pipeline over a secured Kafka: TLS, mutual TLS and SASL, end to end and at start-up.

Endpoints (tests/support/secured_kafka.py): Tansu 0.6 has no working TLS, so stunnel terminates
TLS in front of a Tansu of each test's own, which advertises stunnel's address (clients
reconnect to the advertised listener). Tansu's own SASL only ever rejects (its storage keeps no
SCRAM users): it is the real broker of the wrong-password case; logins that succeed go through
the tests' SASL front (PLAIN, SCRAM-SHA-256/512 server side, then a relay to Tansu).

What runs end to end (one `all` worker, the same traffic, the same `conversions_current` as the
plaintext run): mutual TLS (encrypted client key) and SASL_SSL with SCRAM-SHA-512 (password from a
`_FILE`): between them every client refstream creates meets TLS, a client certificate and a SASL
login. Server-only TLS, SASL_PLAINTEXT (PLAIN, SCRAM-SHA-256) and SASL_SSL with PLAIN are checked
per connection: the start-up check, topic creation and a produce/consume round trip.
"""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from streams.adapters.kafka import client_kwargs
from streams.adapters.kafka_check import KafkaSetupError, verify
from streams.adapters.topics import ensure_topics
from streams.config import Settings
from streams.dev.traffic import Traffic, TrafficSpec, generate
from tests import ROOT
from tests.support.pipeline import assert_same_conversions, settled_end_ms, undisturbed
from tests.support.secured_kafka import Pki, ScramServer, make_pki, secured_endpoint, stunnel_binary, tansu

pytestmark = pytest.mark.integration
USERS = {"refstream": "Sw0rdf1sh-and-chips"}
WRONG = "not-the-Sw0rdf1sh"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if not shutil.which("openssl"):
        pytest.skip("the openssl command line makes the test certificates: run `make stunnel`")
    return make_pki(tmp_path_factory.mktemp("pki"))


def need_stunnel() -> None:
    """The TLS endpoints are Debian's stunnel4 in front of a Tansu (`make test` installs it as root)."""
    if not stunnel_binary():
        pytest.skip("stunnel4 is missing: run `make stunnel` (or apt-get install stunnel4) for the TLS tests")


@pytest.fixture
def tls(pki: Pki) -> Pki:
    """The PKI, for tests that need stunnel."""
    need_stunnel()
    return pki


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    return generate(TrafficSpec(seed=15, promoters=8, visitors=400, days=3, end_ms=settled_end_ms(), malformed=1))


@pytest.fixture(scope="module")
def reference(stack, traffic: Traffic, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """conversions_current of the plaintext run (the session's Tansu)."""
    return undisturbed(stack, traffic, tmp_path_factory.mktemp("plaintext"))


def secured(pki: Pki, **values: Any) -> dict[str, str]:
    """Settings (field names) with the PKI's files; `{name}` stands for pki.path(name)."""
    return {k: pki.path(v[1:-1]) if v.startswith("{") else v for k, v in values.items()}


MTLS = {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "{ca.crt}", "kafka_ssl_certfile": "{client.crt}",
        "kafka_ssl_keyfile": "{client-encrypted.key}", "kafka_ssl_key_password": "key-pass-0"}


def test_pipeline_over_mutual_tls_matches_plaintext(stack, tls: Pki, traffic: Traffic, reference: dict,
                                                    tmp_path: Path) -> None:
    with secured_endpoint(tmp_path / "kafka", tls, tls=True, mutual=True) as url:
        # bootstrap by name (checked against the DNS name in the certificate); the broker advertises 127.0.0.1
        result = undisturbed(stack, traffic, tmp_path / "run", kafka_url=url.replace("127.0.0.1", "localhost"),
                             **secured(tls, **MTLS))
    assert_same_conversions(result, reference)


def test_pipeline_over_sasl_ssl_scram_matches_plaintext(stack, tls: Pki, traffic: Traffic, reference: dict,
                                                        tmp_path: Path) -> None:
    password = tmp_path / "sasl-password"
    password.write_text(USERS["refstream"] + "\n")  # as a Kubernetes Secret mounts it (with a newline here)
    with secured_endpoint(tmp_path / "kafka", tls, tls=True, sasl=True, users=USERS) as url:
        result = undisturbed(stack, traffic, tmp_path / "run", kafka_url=url, kafka_security_protocol="SASL_SSL",
                             kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="refstream",
                             kafka_sasl_password_file=str(password), kafka_ssl_cafile=tls.ca)
    assert_same_conversions(result, reference)


SASL = {"kafka_sasl_username": "refstream", "kafka_sasl_password": USERS["refstream"]}
# (endpoint: tls, sasl; settings; host name in the URL)
CONNECTIONS = [
    ((True, False), {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "{ca.crt}"}, "localhost"),
    ((True, False), {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "{ca.crt}",
                     "kafka_ssl_check_hostname": "false"}, "127.0.0.1"),
    ((False, True), {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "PLAIN", **SASL}, "127.0.0.1"),
    ((False, True), {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "SCRAM-SHA-256", **SASL},
     "127.0.0.1"),
    ((True, True), {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN",
                    "kafka_ssl_cafile": "{ca.crt}", **SASL}, "127.0.0.1"),
]


@pytest.mark.parametrize("endpoint, values, host", CONNECTIONS,
                         ids=[f"{c[1]['kafka_security_protocol']}-{c[1].get('kafka_sasl_mechanism', '')}-{c[2]}"
                              for c in CONNECTIONS])
def test_secured_connections(pki: Pki, endpoint: tuple[bool, bool], values: dict, host: str, tmp_path: Path) -> None:
    with_tls, with_sasl = endpoint
    if with_tls:
        need_stunnel()
    with secured_endpoint(tmp_path, pki, tls=with_tls, sasl=with_sasl, users=USERS) as url:
        env = {f"REFSTREAM_{k.upper()}": v for k, v in secured(pki, **values).items()}
        settings = Settings.from_env({**env, "REFSTREAM_KAFKA_URL": url.replace("127.0.0.1", host),
                                      "REFSTREAM_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:6]}-"})
        assert asyncio.run(roundtrip(settings)) == [b"over a secured connection"]


async def roundtrip(settings: Settings) -> list[bytes]:
    """The start-up check, topic creation (admin client), a produce and a consume."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    assert await verify(settings, 10)
    await ensure_topics(settings, ["clicks"], 1)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, **client_kwargs(settings))
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic("clicks"), b"over a secured connection")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                **client_kwargs(settings))
    await consumer.start()
    try:
        tp = TopicPartition(settings.topic("clicks"), 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        batches = await consumer.getmany(timeout_ms=10_000)
        return [r.value for records in batches.values() for r in records]
    finally:
        await consumer.stop()


def run_worker(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`refstream worker` with these REFSTREAM_* variables only (no stack: it must stop before)."""
    base = {"PATH": "/usr/bin:/bin", "REFSTREAM_DATA_DIR": str(tmp_path), "REFSTREAM_REDIS_URL": "redis://127.0.0.1:1/0"}
    return subprocess.run([sys.executable, "-m", "streams.cli", "worker"], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=90)


# (endpoint: tls, mutual, sasl front, Tansu's own --authentication; settings; words of the one line)
START_FAILURES = [
    ((False, False, False, True), {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "SCRAM-SHA-512",
                                   "kafka_sasl_username": "refstream", "kafka_sasl_password": WRONG},
     ["rejected the SASL SCRAM-SHA-512 login of user 'refstream'", "REFSTREAM_KAFKA_SASL_PASSWORD"]),
    ((True, False, True, False), {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-256",
                                  "kafka_ssl_cafile": "{ca.crt}", "kafka_sasl_username": "refstream",
                                  "kafka_sasl_password": WRONG},
     ["rejected the SASL SCRAM-SHA-256 login", "invalid credentials", "REFSTREAM_KAFKA_SASL_PASSWORD"]),
    ((True, False, False, False), {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "{other-ca.crt}"},
     ["is not trusted", "REFSTREAM_KAFKA_SSL_CAFILE"]),
    ((True, False, False, False), {}, ["is a TLS listener", "REFSTREAM_KAFKA_SECURITY_PROTOCOL=SSL"]),
    ((True, True, False, False), {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "{ca.crt}"},
     ["requires a client certificate", "REFSTREAM_KAFKA_SSL_CERTFILE"]),
]


@pytest.mark.parametrize("endpoint, values, words", START_FAILURES,
                         ids=["wrong-password-tansu", "wrong-password-sasl-ssl", "untrusted-ca",
                              "plaintext-on-tls", "no-client-certificate"])
def test_worker_stops_at_start_with_one_clear_line(pki: Pki, endpoint: tuple[bool, bool, bool, bool], values: dict,
                                                   words: list[str], tmp_path: Path) -> None:
    with_tls, mutual, with_sasl, broker_authentication = endpoint
    if with_tls:
        need_stunnel()
    with secured_endpoint(tmp_path / "kafka", pki, tls=with_tls, mutual=mutual, sasl=with_sasl, users=USERS,
                          broker_authentication=broker_authentication) as url:
        env = {f"REFSTREAM_{k.upper()}": v for k, v in secured(pki, **values).items()}
        started = time.monotonic()
        out = run_worker({**env, "REFSTREAM_KAFKA_URL": url}, tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("refstream: kafka: "), out.stderr[-2000:]
    for word in words:
        assert word in lines[0]
    assert WRONG not in out.stderr + out.stdout
    assert time.monotonic() - started < 60  # no retrying


def test_tls_client_on_a_plaintext_listener(stack) -> None:
    settings = Settings(kafka_url=stack.kafka_url, kafka_security_protocol="SSL")
    with pytest.raises(KafkaSetupError, match="is a plaintext Kafka listener.*SECURITY_PROTOCOL=PLAINTEXT"):
        asyncio.run(verify(settings, 2))


def test_an_advertised_listener_clients_cannot_use_is_named(tls: Pki, tmp_path: Path) -> None:
    """stunnel in front of a Tansu that advertises its own plaintext port, not stunnel's."""
    from streams.dev.stack import free_port
    from tests.support.secured_kafka import stunnel

    with tansu(tmp_path) as broker, stunnel(tmp_path, tls, broker, free_port()) as front:
        settings = Settings(kafka_url=f"kafka://127.0.0.1:{front}", kafka_security_protocol="SSL",
                            kafka_ssl_cafile=tls.ca)
        with pytest.raises(KafkaSetupError, match=f"advertises \\(127.0.0.1:{broker}\\) do not: .*plaintext Kafka"):
            asyncio.run(verify(settings, 3))


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
@pytest.mark.parametrize("password, accepted", [(USERS["refstream"], True), (WRONG, False)])
def test_the_sasl_front_checks_scram_proofs(mechanism: str, password: str, accepted: bool) -> None:
    """The SCRAM server side of the tests' SASL front, against aiokafka's client side (no network)."""
    from aiokafka.conn import ScramAuthenticator

    client = ScramAuthenticator(loop=None, sasl_plain_username="refstream", sasl_plain_password=password,
                                sasl_mechanism=mechanism)
    server = ScramServer(mechanism, USERS)
    first, _ = client._step(None)
    final, _ = client._step(server.first(first))
    reply = server.final(final)
    assert (reply is not None) is accepted
    if accepted:
        assert client._step(reply) is None  # the client accepted the server's signature too
