"""One settings object, read from `REFSTREAM_*` environment variables (documented in README)."""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from schemas.units import DAY_MS

PREFIX = "REFSTREAM_"
#: what a worker runs: everything, the router and joins only, or the ClickHouse sink only
ROLES = ("all", "stream", "sink")
MAX_INPUT_BYTES = 262_144  # highest REFSTREAM_MAX_MESSAGE_BYTES
#: what an API token may look like: visible ASCII, as an HTTP header carries it reliably
#: (RFC 6750's b64token is a subset), bounded
TOKEN_CHARS = re.compile(r"[\x21-\x7e]{1,4096}")


class ConfigError(ValueError):
    """A setting has a value that cannot work; the message says which and how to fix it."""


@dataclass(frozen=True)
class Settings:
    kafka_url: str = "kafka://127.0.0.1:9092"
    clickhouse_dsn: str = ""  # default: chdb under data_dir
    redis_url: str = "redis://127.0.0.1:6379/0"
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
    max_clicks_per_visitor: int = 64
    pii_salt: str = "refstream-dev-salt"
    rules_file: str = ""  # TOML rule book (docs/rules.md); empty: the SPEC defaults
    table_store: str = "memory://"
    web_bind: str = "127.0.0.1"
    web_port: int = 6066
    api_token: str = ""  # REFSTREAM_API_TOKEN: when set, /api/* and /dashboard need "Authorization: Bearer <token>"
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
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Build settings from `REFSTREAM_<FIELD>` variables; unknown ones are ignored."""
        variables: Mapping[str, str] = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = variables.get(PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            kind: type = {"int": int, "float": float, "str": str}[str(f.type)]
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise ConfigError(
                    f"{PREFIX}{f.name.upper()}={raw!r} is not a valid {kind.__name__}"
                ) from None
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.attribution_model not in ("last_click", "first_click"):
            raise ConfigError(
                f"{PREFIX}ATTRIBUTION_MODEL must be last_click or first_click, "
                f"not {self.attribution_model!r}"
            )
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
        if not self.kafka_url.startswith(("kafka://", "aiokafka://")):
            raise ConfigError(
                f"{PREFIX}KAFKA_URL must look like kafka://host:9092[;host2:9092], "
                f"not {self.kafka_url!r}"
            )

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
