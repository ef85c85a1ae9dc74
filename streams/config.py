"""One settings object, read from `REFSTREAM_*` environment variables (documented in README)."""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from schemas.units import DAY_MS

PREFIX = "REFSTREAM_"
#: what a worker runs: everything, the router and joins only, or the ClickHouse sink only
ROLES = ("all", "stream", "sink")
MAX_INPUT_BYTES = 262_144  # highest REFSTREAM_MAX_MESSAGE_BYTES
#: host:port of one Kafka bootstrap server (IPv6 hosts in brackets)
KAFKA_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]/]+):[0-9]{1,5}")
#: what an API token may look like: visible ASCII, as an HTTP header carries it reliably
#: (RFC 6750's b64token is a subset), bounded
TOKEN_CHARS = re.compile(r"[\x21-\x7e]{1,4096}")
#: how refstream talks to the Kafka brokers (the Java client's `security.protocol` values)
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
TLS_PROTOCOLS = ("SSL", "SASL_SSL")
SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
#: the SASL mechanisms that work from settings alone (GSSAPI and OAUTHBEARER need code)
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: `REFSTREAM_<NAME>_FILE=/path`: the value is the file's content (Docker and Kubernetes secrets)
FILE_SUFFIX = "_FILE"
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


class ConfigError(ValueError):
    """A setting has a value that cannot work; the message says which and how to fix it."""


def secret(default: str = "") -> Any:
    """A setting that must never show up in `repr(settings)` or a log line."""
    return field(default=default, repr=False, metadata={"secret": True})


def is_secret(f: Field[Any]) -> bool:
    return bool(f.metadata.get("secret"))


def parse_bool(name: str, raw: str) -> bool:
    try:
        return _BOOLS[raw.strip().lower()]
    except KeyError:
        raise ConfigError(f"{name}={raw!r} is not a boolean: use true or false (also 1/0, yes/no)") from None


def read_variable(variables: Mapping[str, str], name: str) -> str | None:
    """The value of variable `name`, or of the file `<name>_FILE` names (its content without the
    trailing newline); None when neither is set (unset and empty are the same)."""
    direct = variables.get(name) or None
    path = variables.get(name + FILE_SUFFIX) or None
    if path is None:
        return direct
    if direct is not None:
        raise ConfigError(f"{name} and {name}{FILE_SUFFIX} are both set: keep one of them")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ConfigError(f"{name}{FILE_SUFFIX}={path}: cannot read it ({why}); mount the file there "
                          "or fix the path") from None
    return text.rstrip("\r\n") or None


@dataclass(frozen=True)
class Settings:
    kafka_url: str = "kafka://127.0.0.1:9092"
    # Kafka security, for every client refstream creates (streams/adapters/kafka.py)
    kafka_security_protocol: str = "PLAINTEXT"  # one of SECURITY_PROTOCOLS
    kafka_sasl_mechanism: str = "PLAIN"  # one of SASL_MECHANISMS; used with SASL_* only
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = secret()
    kafka_ssl_cafile: str = ""  # CA certificates (PEM) the brokers' certificates chain to; empty: the system's
    kafka_ssl_certfile: str = ""  # client certificate (PEM) for mutual TLS
    kafka_ssl_keyfile: str = ""  # its private key (PEM)
    kafka_ssl_key_password: str = secret()  # when the key is encrypted
    kafka_ssl_check_hostname: bool = True  # the broker's certificate must name the host of KAFKA_URL
    clickhouse_dsn: str = secret()  # default: chdb under data_dir; a server URL carries a password
    redis_url: str = secret("redis://127.0.0.1:6379/0")  # may carry a password
    topic_prefix: str = ""
    data_dir: str = ".data"
    app_id: str = "refstream"
    partitions: int = 4  # of the internal join topics and tables
    replication_factor: int = 1  # of the topics refstream creates (3 on a production cluster)
    attribution_model: str = "last_click"  # or first_click
    attribution_window_days: float = 30
    binding_days: float = 180
    refund_window_days: float = 90  # how long after binding a refund still claws back
    allowed_lateness_s: float = 3600
    max_future_s: float = 3600
    #: a raw input partition with no new record for this long (processing time) and nothing
    #: left to read is left out of the joins' watermark until it has records again; 0: never
    idle_partition_s: float = 60
    max_clicks_per_visitor: int = 64
    pii_salt: str = secret("refstream-dev-salt")
    rules_file: str = ""  # TOML rule book (docs/rules.md); empty: the SPEC defaults
    table_store: str = "memory://"
    web_bind: str = "127.0.0.1"
    web_port: int = 6066
    api_token: str = secret()  # when set, /api/* and /dashboard need "Authorization: Bearer <token>"
    router_batch: int = 2000  # most raw messages routed at once (a batch is what one fetch returned)
    join_batch: int = 64  # most join-topic messages (batches themselves) a join takes as one step
    join_wait_s: float = 0.02  # longest wait to fill a join step
    sink_batch: int = 20000
    sink_flush_s: float = 0.5
    producer_max_batch_bytes: int = 16384
    producer_linger_ms: int = 0  # wait this long to fill produce requests (docs/architecture.md, Known limits)
    broker_session_timeout_s: float = 30
    spike_bucket_s: int = 300  # spike alerts: event-time bucket the referral counts are taken over
    spike_poll_s: float = 5.0  # how often the leader worker reads new counts and feeds the detector
    max_message_bytes: int = 65_536  # larger input messages are dead-lettered unread
    hash_id_fields: str = ""  # comma-separated id fields stored only as keyed hashes (streams/privacy.py)
    log_level: str = "INFO"
    role: str = "all"  # one of ROLES; docs/operations.md, "Roles"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `REFSTREAM_<FIELD>` variables, or `REFSTREAM_<FIELD>_FILE` naming a
        file that holds the value; unknown variables are ignored."""
        variables: Mapping[str, str] = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = PREFIX + f.name.upper()
            raw = read_variable(variables, name)
            if raw is None:
                continue
            if str(f.type) == "bool":
                values[f.name] = parse_bool(name, raw)
                continue
            kind: type = {"int": int, "float": float, "str": str}[str(f.type)]
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.attribution_model not in ("last_click", "first_click"):
            raise ConfigError(
                f"{PREFIX}ATTRIBUTION_MODEL must be last_click or first_click, "
                f"not {self.attribution_model!r}"
            )
        if self.idle_partition_s < 0:
            raise ConfigError(f"{PREFIX}IDLE_PARTITION_S must be 0 (never idle) or more seconds")
        if self.partitions < 1:
            raise ConfigError(f"{PREFIX}PARTITIONS must be at least 1")
        if self.role not in ROLES:
            raise ConfigError(f"{PREFIX}ROLE must be one of {', '.join(ROLES)}, not {self.role!r}")
        if self.spike_bucket_s < 1 or self.spike_poll_s <= 0:
            raise ConfigError(f"{PREFIX}SPIKE_BUCKET_S must be at least 1 and {PREFIX}SPIKE_POLL_S above 0")
        if self.api_token and not TOKEN_CHARS.fullmatch(self.api_token):
            raise ConfigError(f"{PREFIX}API_TOKEN must be 1 to 4096 visible ASCII characters (no spaces): "
                              "a client cannot send anything else in an Authorization header")
        if not 1024 <= self.max_message_bytes <= MAX_INPUT_BYTES:
            raise ConfigError(
                f"{PREFIX}MAX_MESSAGE_BYTES must be between 1024 and {MAX_INPUT_BYTES} (the pipeline's own "
                f"messages carry input records and must stay under the broker's 1 MB limit)"
            )
        from streams.logic.privacy import HASHABLE_IDS  # late: privacy imports the schemas
        unknown = set(self.id_fields_to_hash) - set(HASHABLE_IDS)
        if unknown:
            raise ConfigError(
                f"{PREFIX}HASH_ID_FIELDS: cannot hash {', '.join(sorted(unknown))}; choose from "
                f"{', '.join(HASHABLE_IDS)}"
            )
        if self.rules_file:
            from streams.logic.rules.ruleset import load_rules  # late: rules import records, not config
            try:
                load_rules(self.rules_file)
            except ValueError as e:
                raise ConfigError(f"{PREFIX}RULES_FILE: {e}") from None
        if not self.kafka_url.startswith(("kafka://", "aiokafka://")) or not all(
                KAFKA_HOST.fullmatch(h) for h in self.bootstrap_servers) or not self.bootstrap_servers:
            raise ConfigError(
                f"{PREFIX}KAFKA_URL must look like kafka://host:9092[;host2:9092] (a port after each "
                f"host, [::1]:9092 for IPv6), not {self.kafka_url!r}"
            )
        self.check_kafka_security()

    def check_kafka_security(self) -> None:
        """The Kafka security settings fit together and their files can be read."""
        protocol = self.kafka_security_protocol
        if protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(f"{PREFIX}KAFKA_SECURITY_PROTOCOL must be one of {', '.join(SECURITY_PROTOCOLS)}, "
                              f"not {protocol!r}")
        if self.kafka_sasl_mechanism not in SASL_MECHANISMS:
            raise ConfigError(f"{PREFIX}KAFKA_SASL_MECHANISM must be one of {', '.join(SASL_MECHANISMS)}, "
                              f"not {self.kafka_sasl_mechanism!r} (GSSAPI and OAUTHBEARER are not supported)")
        sasl = {"SASL_USERNAME": self.kafka_sasl_username, "SASL_PASSWORD": self.kafka_sasl_password}
        tls = {"SSL_CAFILE": self.kafka_ssl_cafile, "SSL_CERTFILE": self.kafka_ssl_certfile,
               "SSL_KEYFILE": self.kafka_ssl_keyfile, "SSL_KEY_PASSWORD": self.kafka_ssl_key_password}
        # Settings that would be ignored are a mistake (mostly a forgotten protocol): say so.
        for used, group, wanted in ((protocol in SASL_PROTOCOLS, sasl, "SASL_SSL or SASL_PLAINTEXT"),
                                    (protocol in TLS_PROTOCOLS, tls, "SSL or SASL_SSL")):
            ignored = [f"{PREFIX}KAFKA_{k}" for k, v in group.items() if v]
            if ignored and not used:
                raise ConfigError(f"{', '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} set, but "
                                  f"{PREFIX}KAFKA_SECURITY_PROTOCOL={protocol} does not use "
                                  f"{'it' if len(ignored) == 1 else 'them'}: set the protocol to {wanted}, "
                                  "or unset them")
        if protocol in SASL_PROTOCOLS:
            missing = [f"{PREFIX}KAFKA_{k}" for k, v in sasl.items() if not v]
            if missing:
                raise ConfigError(f"{PREFIX}KAFKA_SECURITY_PROTOCOL={protocol} needs {' and '.join(missing)} "
                                  f"(the password also as {PREFIX}KAFKA_SASL_PASSWORD{FILE_SUFFIX}=/path)")
        if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
            raise ConfigError(f"mutual TLS needs both {PREFIX}KAFKA_SSL_CERTFILE (the client certificate) and "
                              f"{PREFIX}KAFKA_SSL_KEYFILE (its private key); set both or neither")
        if self.kafka_ssl_key_password and not self.kafka_ssl_keyfile:
            raise ConfigError(f"{PREFIX}KAFKA_SSL_KEY_PASSWORD is set without {PREFIX}KAFKA_SSL_KEYFILE")
        for key in ("SSL_CAFILE", "SSL_CERTFILE", "SSL_KEYFILE"):
            path = tls[key]
            if not path:
                continue
            problem = ("does not exist" if not os.path.exists(path) else "is not a file" if not os.path.isfile(path)
                       else f"cannot be read by this user (uid {os.getuid()})" if not os.access(path, os.R_OK)
                       else "")
            if problem:
                raise ConfigError(f"{PREFIX}KAFKA_{key}={path} {problem}: mount the PEM file there "
                                  "(readable by the worker) or fix the path")

    # Derived values -------------------------------------------------------------------

    @property
    def clickhouse(self) -> str:
        return self.clickhouse_dsn or f"chdb://{Path(self.data_dir).resolve() / 'clickhouse'}"

    @property
    def id_fields_to_hash(self) -> tuple[str, ...]:
        return tuple(f.strip() for f in self.hash_id_fields.split(",") if f.strip())

    @property
    def bootstrap_servers(self) -> list[str]:
        """host:port list for plain aiokafka clients."""
        hosts = self.kafka_url.split("://", 1)[1]
        return [h.strip() for h in hosts.replace(",", ";").split(";") if h.strip()]

    def topic(self, name: str) -> str:
        return self.topic_prefix + name

    @property
    def group_id(self) -> str:
        """Faust app id and Kafka consumer group of this worker. The sink role reads the join
        topics too, so it needs a group of its own to get every partition of them."""
        return f"{self.app_id}-sink" if self.role == "sink" else self.app_id

    @property
    def redis_namespace(self) -> str:
        """Prefix of refstream's Redis keys: one app on one set of topics."""
        return f"rs:{self.app_id}:{self.topic_prefix}"

    @property
    def window_ms(self) -> int:
        return int(self.attribution_window_days * DAY_MS)

    @property
    def binding_ms(self) -> int:
        return int(self.binding_days * DAY_MS)

    @property
    def refund_window_ms(self) -> int:
        return int(self.refund_window_days * DAY_MS)

    @property
    def lateness_ms(self) -> int:
        return int(self.allowed_lateness_s * 1000)
