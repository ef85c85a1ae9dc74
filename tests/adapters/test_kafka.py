"""Kafka security from settings: the aiokafka arguments of every client, the Faust app's credentials
(what Faust 0.15.3 makes of them for its consumer, producer and topic creation), the TLS context,
and the start-up check's messages: each names the setting to fix and never holds a secret.
Connections to real TLS and SASL endpoints are in tests/integration/test_secured_kafka.py."""
from __future__ import annotations

import shutil
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from aiokafka import errors

from streams.adapters.kafka import client_kwargs, ssl_context
from streams.adapters.kafka_check import FirstRequestFailed, Probe, _unreachable, describe_failure
from streams.config import ConfigError, Settings
from tests.support.secured_kafka import Pki, make_pki

PASSWORD = "hunter2-sasl-secret"  # must never show up in a message
RAW_PARTITIONS = {"clicks": 4, "signups": 4, "orders": 4}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if not shutil.which("openssl"):
        pytest.skip("the openssl command line makes the test certificates: apt-get install openssl")
    return make_pki(tmp_path_factory.mktemp("pki"))


def settings(pki: Pki, **values: Any) -> Settings:
    """Settings with `{ca}`, `{client.crt}`-style placeholders replaced by the PKI's files."""
    files = {"{ca}": pki.ca, "{other-ca}": pki.other_ca}
    files.update({f"{{{name}}}": pki.path(name) for name in
                  ("client.crt", "client.key", "client-encrypted.key", "server.crt", "server.key", "ca.key")})
    s = Settings(**{k: files.get(v, v) if isinstance(v, str) else v for k, v in values.items()})
    s.check()
    return s


SASL = {"kafka_sasl_username": "alice", "kafka_sasl_password": PASSWORD}
# (settings, expected aiokafka arguments besides ssl_context, TLS expected)
CLIENT_CASES = [
    ({}, {"security_protocol": "PLAINTEXT"}, False),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "{ca}"}, {"security_protocol": "SSL"}, True),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "{ca}", "kafka_ssl_certfile": "{client.crt}",
      "kafka_ssl_keyfile": "{client.key}"}, {"security_protocol": "SSL"}, True),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "{ca}", "kafka_ssl_certfile": "{client.crt}",
      "kafka_ssl_keyfile": "{client-encrypted.key}", "kafka_ssl_key_password": "key-pass-0"},
     {"security_protocol": "SSL"}, True),
    ({"kafka_security_protocol": "SSL"}, {"security_protocol": "SSL"}, True),  # the system's CAs
    ({"kafka_security_protocol": "SASL_PLAINTEXT", **SASL},
     {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_plain_username": "alice",
      "sasl_plain_password": PASSWORD}, False),
    ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "SCRAM-SHA-256", **SASL},
     {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256", "sasl_plain_username": "alice",
      "sasl_plain_password": PASSWORD}, False),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "SCRAM-SHA-512", "kafka_ssl_cafile": "{ca}",
      **SASL},
     {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "alice",
      "sasl_plain_password": PASSWORD}, True),
]


@pytest.mark.parametrize("values, expected, tls", CLIENT_CASES, ids=[str(c[0]) for c in CLIENT_CASES])
def test_client_kwargs_and_what_faust_makes_of_its_credentials(pki: Pki, values: dict, expected: dict, tls: bool,
                                                               tmp_path: Path) -> None:
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from streams.agents.app import broker_credentials, create_app

    s = settings(pki, data_dir=str(tmp_path), **values)
    kwargs = client_kwargs(s)
    context = kwargs.pop("ssl_context", None)
    assert kwargs == expected
    assert (context is not None) == tls
    # the app create_app builds: its consumer, producer and topic creation all use these arguments
    app = create_app(s, RAW_PARTITIONS)
    for faust_kwargs in (credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context),
                         app.producer._settings_auth()):
        faust_context = faust_kwargs.pop("ssl_context", None)
        assert faust_kwargs == expected
        assert (faust_context is not None) == tls
    assert PASSWORD not in repr(app.conf.broker_credentials)
    assert (broker_credentials(s) == {}) == (s.kafka_security_protocol == "PLAINTEXT")


@pytest.mark.parametrize("check_hostname", [True, False])
def test_the_tls_context_verifies_the_brokers(pki: Pki, check_hostname: bool) -> None:
    context = ssl_context(settings(pki, kafka_security_protocol="SSL", kafka_ssl_cafile="{ca}",
                                   kafka_ssl_check_hostname=check_hostname))
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED  # also without the host name check
    assert context.check_hostname is check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "refstream test ca"),),)]


UNLOADABLE = [
    ({"kafka_ssl_cafile": "{ca.key}"}, "REFSTREAM_KAFKA_SSL_CAFILE"),  # a key, not a certificate
    ({"kafka_ssl_certfile": "{client.crt}", "kafka_ssl_keyfile": "{server.key}"}, "REFSTREAM_KAFKA_SSL_KEYFILE"),
    ({"kafka_ssl_certfile": "{client.crt}", "kafka_ssl_keyfile": "{client-encrypted.key}"},
     "REFSTREAM_KAFKA_SSL_KEY_PASSWORD"),  # encrypted, no password: an error, not a terminal prompt
    ({"kafka_ssl_certfile": "{client.crt}", "kafka_ssl_keyfile": "{client-encrypted.key}",
      "kafka_ssl_key_password": "wrong"}, "REFSTREAM_KAFKA_SSL_KEY_PASSWORD"),
]


@pytest.mark.parametrize("values, names", UNLOADABLE, ids=[str(c[0]) for c in UNLOADABLE])
def test_unusable_certificate_files_name_their_setting(pki: Pki, values: dict, names: str) -> None:
    with pytest.raises(ConfigError, match=names) as failure:
        client_kwargs(settings(pki, kafka_security_protocol="SSL", **values))
    assert "wrong" not in str(failure.value) and "key-pass-0" not in str(failure.value)


def verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message}")
    exc.verify_code, exc.verify_message = code, message
    return exc


def alert(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()}")
    exc.reason = reason
    return exc


def closed_by(cause: BaseException) -> errors.KafkaConnectionError:
    exc = errors.KafkaConnectionError("Connection at 127.0.0.1:9093 closed")
    exc.__cause__ = cause
    return exc


def after_login(cause: BaseException) -> FirstRequestFailed:
    exc = FirstRequestFailed("127.0.0.1:9093")
    exc.__cause__ = cause
    return exc


TLS = {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "{ca}"}
MTLS = {**TLS, "kafka_ssl_certfile": "{client.crt}", "kafka_ssl_keyfile": "{client.key}"}
SASL_PLAIN = {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "SCRAM-SHA-256", **SASL}
SASL_TLS = {**SASL_PLAIN, "kafka_security_protocol": "SASL_SSL", "kafka_ssl_cafile": "{ca}"}
CLOSED = errors.KafkaConnectionError("Connection at 127.0.0.1:9093 closed")
# (settings, what failed, what the listener turned out to speak, words the message must have)
FAILURES = [
    (TLS, verify_error(20, "unable to get local issuer certificate"), Probe(),
     ["not trusted", "REFSTREAM_KAFKA_SSL_CAFILE"]),
    ({"kafka_security_protocol": "SSL"}, closed_by(verify_error(19, "self-signed certificate in certificate chain")),
     Probe(), ["the system's CA certificates", "REFSTREAM_KAFKA_SSL_CAFILE"]),
    (TLS, verify_error(62, "hostname mismatch"), Probe(), ["not for '127.0.0.1'", "REFSTREAM_KAFKA_SSL_CHECK_HOSTNAME"]),
    (TLS, verify_error(10, "certificate has expired"), Probe(), ["expired"]),
    ({}, CLOSED, Probe(tls=True), ["TLS listener", "REFSTREAM_KAFKA_SECURITY_PROTOCOL=SSL"]),
    ({}, TimeoutError(), Probe(tls=True), ["TLS listener", "REFSTREAM_KAFKA_SECURITY_PROTOCOL=SSL"]),
    (SASL_PLAIN, CLOSED, Probe(tls=True), ["REFSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_SSL"]),
    (TLS, alert("WRONG_VERSION_NUMBER"), Probe(plaintext_kafka=True),
     ["plaintext Kafka listener", "REFSTREAM_KAFKA_SECURITY_PROTOCOL=PLAINTEXT"]),
    (SASL_TLS, TimeoutError(), Probe(plaintext_kafka=True), ["REFSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT"]),
    (TLS, closed_by(alert("TLSV13_ALERT_CERTIFICATE_REQUIRED")), Probe(tls=True),
     ["requires a client certificate", "REFSTREAM_KAFKA_SSL_CERTFILE", "REFSTREAM_KAFKA_SSL_KEYFILE"]),
    (MTLS, alert("SSLV3_ALERT_BAD_CERTIFICATE"), Probe(tls=True),
     ["does not accept the client certificate", "REFSTREAM_KAFKA_SSL_CERTFILE="]),
    (TLS, CLOSED, Probe(tls=True), ["REFSTREAM_KAFKA_SSL_CERTFILE", "REFSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_SSL"]),
    (SASL_TLS, CLOSED, Probe(tls=True), ["REFSTREAM_KAFKA_SASL_MECHANISM=SCRAM-SHA-256"]),
    (SASL_PLAIN, errors.SaslAuthenticationFailed("Authentication failed due to invalid credentials"), Probe(),
     ["rejected the SASL SCRAM-SHA-256 login of user 'alice'", "invalid credentials",
      "REFSTREAM_KAFKA_SASL_USERNAME", "REFSTREAM_KAFKA_SASL_PASSWORD", "REFSTREAM_KAFKA_SASL_MECHANISM"]),
    (SASL_TLS, KeyError("v"), Probe(), ["rejected the SASL", "REFSTREAM_KAFKA_SASL_PASSWORD"]),  # aiokafka's SCRAM
    (SASL_PLAIN, errors.UnsupportedSaslMechanismError(
        "Kafka broker does not support SCRAM-SHA-256 sasl mechanism. Enabled mechanisms are: ['PLAIN']"), Probe(),
     ["does not offer SASL mechanism SCRAM-SHA-256 (it offers ['PLAIN'])", "REFSTREAM_KAFKA_SASL_MECHANISM"]),
    (SASL_PLAIN, CLOSED, Probe(plaintext_kafka=True), ["during the SASL SCRAM-SHA-256 login"]),
    ({}, CLOSED, Probe(plaintext_kafka=True), ["requires a SASL login", "SECURITY_PROTOCOL=SASL_PLAINTEXT"]),
    ({}, after_login(CLOSED), Probe(), ["requires a SASL login", "SECURITY_PROTOCOL=SASL_PLAINTEXT"]),
    (TLS, after_login(CLOSED), Probe(), ["requires a SASL login", "SECURITY_PROTOCOL=SASL_SSL"]),
    (SASL_TLS, after_login(errors.TopicAuthorizationFailedError()), Probe(), ["Describe permission"]),
    ({}, ConnectionRefusedError(111, "Connection refused"), Probe(), ["nothing accepts", "REFSTREAM_KAFKA_URL"]),
    ({}, socket.gaierror(-2, "Name or service not known"), Probe(), ["Name or service not known", "REFSTREAM_KAFKA_URL"]),
    ({}, TimeoutError(), Probe(), ["no answer", "REFSTREAM_KAFKA_URL"]),
]


@pytest.mark.parametrize("values, exc, probe, words", FAILURES, ids=[f"{i}-{type(c[1]).__name__}"
                                                                     for i, c in enumerate(FAILURES)])
def test_failures_name_the_setting_to_fix_and_no_secret(pki: Pki, values: dict, exc: BaseException, probe: Probe,
                                                        words: list[str]) -> None:
    s = settings(pki, kafka_url="kafka://127.0.0.1:9093", **values)
    message = describe_failure(s, "127.0.0.1", 9093, exc, probe)
    for word in words:
        assert word in message
    assert message.startswith("127.0.0.1:9093") or "127.0.0.1:9093" in message
    assert PASSWORD not in message and "\n" not in message


# (command line, exit status): the commands that talk to Kafka check it first, the others do not
CLI_CASES = [
    (["worker"], 2),
    (["worker", "--role", "sink"], 2),
    (["generate", "--visitors", "50", "--days", "1"], 2),
    (["generate", "--visitors", "50", "--days", "1", "--dry-run"], 0),  # sends nothing
]


@pytest.mark.parametrize("argv, code", CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_commands_that_use_kafka_stop_at_once_when_it_is_unreachable(argv: list[str], code: int, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from streams.cli import main

    monkeypatch.setenv("REFSTREAM_KAFKA_URL", "kafka://127.0.0.1:1")  # nothing listens on port 1
    monkeypatch.setenv("REFSTREAM_DATA_DIR", str(tmp_path))
    assert main(argv) == code
    err = capsys.readouterr().err
    if code:
        assert err.splitlines() == [err.strip()]
        assert err.startswith("refstream: kafka: nothing accepts connections at 127.0.0.1:1")
        assert "REFSTREAM_KAFKA_URL" in err


UNREACHABLE = [
    (ConnectionRefusedError(111, "Connection refused"), True),
    (socket.gaierror(-2, "Name or service not known"), True),
    (TimeoutError(), True),
    (errors.KafkaConnectionError("Connection at h:1 closed"), False),  # something answered, then closed
    (ssl.SSLCertVerificationError(1, "certificate verify failed"), False),
    (errors.SaslAuthenticationFailed("Authentication failed"), False),
]


@pytest.mark.parametrize("exc, unreachable", UNREACHABLE, ids=[type(c[0]).__name__ for c in UNREACHABLE])
def test_an_unreachable_broker_is_the_least_telling_failure(exc: BaseException, unreachable: bool) -> None:
    """With several bootstrap hosts, one down must not hide what is wrong with the settings."""
    assert _unreachable(exc) is unreachable
