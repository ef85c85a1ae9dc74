"""Settings from REFSTREAM_* variables: defaults, conversions, and clear errors."""
from __future__ import annotations

import string
from dataclasses import fields

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.config import ConfigError, Settings, is_secret

CASES = [
    ({}, {"max_message_bytes": 65_536, "id_fields_to_hash": ()}),
    ({"MAX_MESSAGE_BYTES": "1024"}, {"max_message_bytes": 1024}),
    ({"MAX_MESSAGE_BYTES": "262144"}, {"max_message_bytes": 262_144}),
    ({"MAX_MESSAGE_BYTES": "1000000"}, "MAX_MESSAGE_BYTES must be between 1024 and 262144"),
    ({"MAX_MESSAGE_BYTES": "100"}, "MAX_MESSAGE_BYTES must be between"),
    ({"MAX_MESSAGE_BYTES": "64k"}, "is not a valid int"),
    ({"HASH_ID_FIELDS": "visitor_id, account_id"}, {"id_fields_to_hash": ("visitor_id", "account_id")}),
    ({"HASH_ID_FIELDS": "order_id"}, "HASH_ID_FIELDS: cannot hash order_id"),
    ({"ROLE": "both"}, "ROLE must be one of"),
    ({"API_TOKEN": "s3cret-Token_1"}, {"api_token": "s3cret-Token_1"}),
    ({"API_TOKEN": "two words"}, "API_TOKEN must be 1 to 4096 visible ASCII"),
    ({"API_TOKEN": "sécret"}, "API_TOKEN must be"),
    ({"KAFKA_URL": "kafka://a:9092;[::1]:9093"}, {"bootstrap_servers": ["a:9092", "[::1]:9093"]}),
    ({"KAFKA_URL": "kafka://localhost:9O92"}, "KAFKA_URL must look like"),
    ({"KAFKA_URL": "kafka://[::1]"}, "KAFKA_URL must look like"),
    ({"KAFKA_URL": "kafka://"}, "KAFKA_URL must look like"),
    ({"KAFKA_URL": "http://a:9092"}, "KAFKA_URL must look like"),
    ({"IDLE_PARTITION_S": "0"}, {"idle_partition_s": 0}),
    ({"IDLE_PARTITION_S": "-1"}, "IDLE_PARTITION_S must be 0"),
]


@pytest.mark.parametrize("env,expect", CASES, ids=[str(c[0]) for c in CASES])
def test_settings_from_env(env: dict[str, str], expect: dict | str) -> None:
    variables = {f"REFSTREAM_{k}": v for k, v in env.items()}
    if isinstance(expect, str):
        with pytest.raises(ConfigError, match=expect):
            Settings.from_env(variables)
    else:
        settings = Settings.from_env(variables)
        for name, value in expect.items():
            assert getattr(settings, name) == value


# Kafka security settings. `{pem}` is a readable file, `{dir}` a directory, `{missing}` no file.
KAFKA_CASES = [
    ({}, {"kafka_security_protocol": "PLAINTEXT", "kafka_ssl_check_hostname": True}),
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
    ({"KAFKA_SASL_MECHANISM": "OAUTHBEARER"}, "KAFKA_SASL_MECHANISM must be one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u"}, "SASL_SSL needs REFSTREAM_KAFKA_SASL_PASSWORD"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}, "needs REFSTREAM_KAFKA_SASL_USERNAME and REFSTREAM_KAFKA_SASL_PASSWORD"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": "u",
      "KAFKA_SASL_PASSWORD": "p", "KAFKA_SSL_CAFILE": "{pem}"},
     {"kafka_sasl_mechanism": "SCRAM-SHA-512", "kafka_sasl_password": "p", "kafka_ssl_cafile": "{pem}"}),
    ({"KAFKA_SSL_CAFILE": "{pem}"}, "REFSTREAM_KAFKA_SSL_CAFILE is set, but REFSTREAM_KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use it"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SASL_USERNAME": "u"}, "SASL_USERNAME is set, but .*=SSL does not use it: set the protocol to SASL_SSL"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": "{pem}"}, "mutual TLS needs both REFSTREAM_KAFKA_SSL_CERTFILE"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_KEYFILE": "{pem}"}, "mutual TLS needs both"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_KEY_PASSWORD": "k"}, "KEY_PASSWORD is set without REFSTREAM_KAFKA_SSL_KEYFILE"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "{missing}"}, "REFSTREAM_KAFKA_SSL_CAFILE=.*missing.pem does not exist"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": "{pem}", "KAFKA_SSL_KEYFILE": "{dir}"}, "REFSTREAM_KAFKA_SSL_KEYFILE=.* is not a file"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": "{pem}", "KAFKA_SSL_KEYFILE": "{pem}", "KAFKA_SSL_CHECK_HOSTNAME": "no"},
     {"kafka_ssl_certfile": "{pem}", "kafka_ssl_check_hostname": False}),
    ({"KAFKA_SSL_CHECK_HOSTNAME": "FALSE"}, {"kafka_ssl_check_hostname": False}),
    ({"KAFKA_SSL_CHECK_HOSTNAME": "0"}, {"kafka_ssl_check_hostname": False}),
    ({"KAFKA_SSL_CHECK_HOSTNAME": "Yes"}, {"kafka_ssl_check_hostname": True}),
    ({"KAFKA_SSL_CHECK_HOSTNAME": "1"}, {"kafka_ssl_check_hostname": True}),
    ({"KAFKA_SSL_CHECK_HOSTNAME": "maybe"}, "KAFKA_SSL_CHECK_HOSTNAME='maybe' is not a boolean: use true or false"),
    # secrets from files (`_FILE`), as Docker and Kubernetes mount them
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD_FILE": "{secret}"},
     {"kafka_sasl_password": "s3cret with spaces "}),
    ({"PII_SALT_FILE": "{secret}"}, {"pii_salt": "s3cret with spaces "}),
    ({"PARTITIONS_FILE": "{number}"}, {"partitions": 12}),
    ({"API_TOKEN": "t", "API_TOKEN_FILE": "{secret}"}, "REFSTREAM_API_TOKEN and REFSTREAM_API_TOKEN_FILE are both set"),
    ({"API_TOKEN_FILE": "{missing}"}, "REFSTREAM_API_TOKEN_FILE=.*missing.pem: cannot read it \\(No such file"),
    ({"API_TOKEN_FILE": "{dir}"}, "REFSTREAM_API_TOKEN_FILE=.*: cannot read it"),
    ({"API_TOKEN_FILE": "{empty}"}, {"api_token": ""}),  # an empty file is an unset variable
]


@pytest.mark.parametrize("env,expect", KAFKA_CASES, ids=[str(c[0]) for c in KAFKA_CASES])
def test_kafka_security_settings(env: dict[str, str], expect: dict | str, tmp_path) -> None:
    files = {"{pem}": tmp_path / "file.pem", "{secret}": tmp_path / "secret", "{number}": tmp_path / "number",
             "{empty}": tmp_path / "empty", "{dir}": tmp_path, "{missing}": tmp_path / "missing.pem"}
    files["{pem}"].write_text("-----BEGIN CERTIFICATE-----\n")
    files["{secret}"].write_text("s3cret with spaces \n")  # the trailing newline is not part of it
    files["{number}"].write_text("12\r\n")
    files["{empty}"].write_text("\n")

    def fill(value: str) -> str:
        return str(files.get(value, value))

    variables = {f"REFSTREAM_{k}": fill(v) for k, v in env.items()}
    if isinstance(expect, str):
        with pytest.raises(ConfigError, match=expect) as failure:
            Settings.from_env(variables)
        assert "s3cret" not in str(failure.value)
    else:
        settings = Settings.from_env(variables)
        for name, value in expect.items():
            assert getattr(settings, name) == (fill(value) if isinstance(value, str) else value)


SECRETS = ("kafka_sasl_password", "kafka_ssl_key_password", "api_token", "pii_salt", "clickhouse_dsn", "redis_url")


@given(st.text(alphabet=string.ascii_letters + string.digits + "!#%&*+-./:;=?@^_~", min_size=12, max_size=64))
def test_no_secret_in_the_settings_repr(value: str) -> None:
    settings = Settings(**dict.fromkeys(SECRETS, value))
    assert value not in repr(settings)
    assert {f.name for f in fields(Settings) if is_secret(f)} == set(SECRETS)


def test_no_setting_is_another_ones_file_variable() -> None:
    names = {f.name for f in fields(Settings)}
    assert not {name + "_file" for name in names} & names  # REFSTREAM_<NAME>_FILE would be ambiguous
