"""How every Kafka client refstream creates connects: TLS, mutual TLS and SASL from `Settings`.

One home for it: `ssl_context` and `client_kwargs` for the plain aiokafka clients (topic
creation, the reference loaders, the generator, the bench, the tests); the Faust app turns the
same settings into its `broker_credentials` (streams/agents/app.py), and the CLI checks them
once at start-up (streams/adapters/kafka_check.py).

Secrets (the SASL password, the key password) go into the clients only: no message or log
line built here contains them.
"""
from __future__ import annotations

import ssl
from typing import Any

from streams.config import PREFIX, SASL_PROTOCOLS, TLS_PROTOCOLS, ConfigError, Settings


def var(name: str) -> str:
    return f"{PREFIX}KAFKA_{name}"


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the Kafka clients; None when the protocol has no TLS.

    Verifies the brokers' certificates against `kafka_ssl_cafile` (else the system's CAs), and
    their host names unless `kafka_ssl_check_hostname` is off; TLS 1.2 at least; with a client
    certificate and key for mutual TLS. Unusable files raise ConfigError naming the setting.
    """
    if settings.kafka_security_protocol not in TLS_PROTOCOLS:
        return None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.kafka_ssl_cafile or None)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{var('SSL_CAFILE')}={settings.kafka_ssl_cafile}: no CA certificate could be loaded "
                          f"from it ({error_text(exc)}); it must hold PEM certificates") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = settings.kafka_ssl_check_hostname  # the chain is verified either way
    if settings.kafka_ssl_certfile:
        password = settings.kafka_ssl_key_password
        try:
            # a callable, also without a password: OpenSSL would otherwise prompt on the terminal
            context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile or None,
                                    password=lambda: password)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"{var('SSL_CERTFILE')} and {var('SSL_KEYFILE')} could not be loaded ({error_text(exc)}): they must "
                f"be the PEM client certificate and its private key; an encrypted key needs "
                f"{var('SSL_KEY_PASSWORD')}") from None
    return context


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Security keyword arguments of a plain aiokafka client (consumer, producer, admin client)."""
    protocol = settings.kafka_security_protocol
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if protocol in TLS_PROTOCOLS:
        kwargs["ssl_context"] = ssl_context(settings)
    if protocol in SASL_PROTOCOLS:
        # aiokafka's SCRAM takes its credentials from the sasl_plain_* arguments too
        kwargs.update(sasl_mechanism=settings.kafka_sasl_mechanism, sasl_plain_username=settings.kafka_sasl_username,
                      sasl_plain_password=settings.kafka_sasl_password)
    return kwargs


def error_text(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return str(exc.verify_message)
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return str(exc.strerror)
    return str(exc) or type(exc).__name__
