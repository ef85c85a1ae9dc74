"""Settings from REFSTREAM_* variables: defaults, conversions, and clear errors."""
from __future__ import annotations

import pytest

from streams.config import ConfigError, Settings

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
