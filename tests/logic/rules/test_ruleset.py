"""Rule sets: TOML loading, versions by effective date, defaults = docs/rules.md."""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest

from streams.logic.rules.ruleset import Tier, load_rules, parse_rules
from tests import ROOT

D = Decimal
JAN = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MARCH = 1_772_323_200_000  # 2026-03-01T00:00:00Z

TWO_VERSIONS = """
[[rule_set]]  # listed out of order on purpose
version = "v2"
effective_from = 2026-03-01T00:00:00Z
level_rates = ["0.18", "0.22", "0.26", "0.29", "0.32"]
cap_per_order = "50000"
tiers = [{volume = "20000", bonus_rate = "0.015"}]
ineligible_categories = []
flood_clicks_per_hour = 30

[[rule_set]]
version = "v1"
effective_from = "2026-01-01T00:00:00Z"
"""

V1 = {"version": "v1", "effective_from": JAN, "cap_per_order": D(100_000), "flood_clicks_per_hour": 20,
      "ineligible_categories": ("marketplace",)}
V2 = {"version": "v2", "effective_from": MARCH, "cap_per_order": D(50_000), "flood_clicks_per_hour": 30,
      "level_rates": (D("0.18"), D("0.22"), D("0.26"), D("0.29"), D("0.32")),
      "tiers": (Tier(D(20_000), D("0.015")),), "ineligible_categories": ()}

DOC_DEFAULTS = {  # docs/rules.md, in brackets
    "version": "default", "effective_from": 0,
    "injection_max_s": 10, "flood_clicks_per_hour": 20, "farm_signups_per_day": 3,
    "spam_min_signups": 20, "spam_long_share": 0.5, "spam_long_delay_h": 24, "spam_long_delay_ms": 86_400_000,
    "high_value_amount": D(50_000), "ineligible_products": (), "ineligible_categories": ("marketplace",),
    "level_rates": (D("0.15"), D("0.20"), D("0.25"), D("0.28"), D("0.31")),
    "cap_per_order": D(100_000), "tiers": (Tier(D(10_000), D("0.01")), Tier(D(50_000), D("0.02"))),
    "new_customer_bonus": D(50), "points_per_unit": 100,
    "level_points": (100_000, 500_000, 2_000_000, 10_000_000),
    "holding_days": 30, "holding_ms": 30 * 86_400_000, "instalment_above": D(0), "instalment_months": 3,
    "minimum_payout": D(100), "points_cashable": False,
    "renewal_level_rates": (), "recurring_months": 0, "max_orders_per_customer": 0, "existing_customers_earn": True,
    "cap_per_customer": D(0), "cap_per_customer_months": 0, "cap_per_promoter_month": D(0), "month_close_days": 7,
}

NEW_FIELDS = """
[[rule_set]]
renewal_level_rates = ["0.05", "0.06", "0.07", "0.08", "0.09"]
recurring_months = 12
max_orders_per_customer = 3
existing_customers_earn = false
cap_per_customer = "500"
cap_per_customer_months = 6
cap_per_promoter_month = "20000.50"
month_close_days = 10
"""


@dataclass
class Case:
    name: str
    toml: str | None  # content of rules.toml; None: no file
    ts: int = 0
    expected: dict = field(default_factory=dict)  # attributes of the rule set in force at `ts`
    error: str | None = None  # ValueError expected: its message holds the path and this text
    path: str = "rules.toml"  # "": load_rules('') (the defaults)
    zone: str = "UTC"  # the rule book's time zone


CASES = [
    Case("no path: the defaults of docs/rules.md", None, ts=JAN, expected=DOC_DEFAULTS, path=""),
    Case("file without rule sets: the defaults", "# nothing yet\n", ts=JAN, expected=DOC_DEFAULTS),
    Case("before the first version: the first", TWO_VERSIONS, ts=JAN - 1, expected=V1),
    Case("at the first version's start", TWO_VERSIONS, ts=JAN, expected=V1),
    Case("one ms before the second version", TWO_VERSIONS, ts=MARCH - 1, expected=V1),
    Case("at the second version's start", TWO_VERSIONS, ts=MARCH, expected=V2),
    Case("after the second version's start", TWO_VERSIONS, ts=MARCH + 86_400_000 * 400, expected=V2),
    Case("offset timezone", '[[rule_set]]\nversion = "x"\neffective_from = "2026-03-01T01:00:00+01:00"\n',
         ts=MARCH, expected={"version": "x", "effective_from": MARCH}),
    Case("epoch millis", f'[[rule_set]]\nversion = "x"\neffective_from = {MARCH}\n', ts=MARCH,
         expected={"effective_from": MARCH}),
    Case("float rates become exact decimals", '[[rule_set]]\nlevel_rates = [0.1, 0.2, 0.3, 0.35, 0.4]\n',
         expected={"level_rates": (D("0.1"), D("0.2"), D("0.3"), D("0.35"), D("0.4"))}),
    Case("unset fields keep their defaults", '[[rule_set]]\nversion = "x"\nhigh_value_amount = "75000.50"\n',
         expected=DOC_DEFAULTS | {"version": "x", "high_value_amount": D("75000.50")}),
    # pricing rules of issue 14
    Case("renewal rates, customer rules and caps", NEW_FIELDS, expected={
        "renewal_level_rates": (D("0.05"), D("0.06"), D("0.07"), D("0.08"), D("0.09")), "recurring_months": 12,
        "max_orders_per_customer": 3, "existing_customers_earn": False, "cap_per_customer": D(500),
        "cap_per_customer_months": 6, "cap_per_promoter_month": D("20000.50"), "month_close_days": 10,
        "level_rates": DOC_DEFAULTS["level_rates"]}),
    Case("renewal rates need one per level", '[[rule_set]]\nrenewal_level_rates = ["0.05", "0.06"]\n',
         error="one rate per level"),
    Case("renewal rates follow a shorter level table", '[[rule_set]]\nlevel_rates = ["0.1", "0.2"]\n'
         'renewal_level_rates = ["0.05", "0.06"]\n', expected={"renewal_level_rates": (D("0.05"), D("0.06"))}),
    Case("negative customer cap", '[[rule_set]]\ncap_per_customer = "-1"\n', error="must not be negative"),
    Case("negative month cap", '[[rule_set]]\ncap_per_promoter_month = "-0.01"\n', error="must not be negative"),
    Case("negative recurring months", "[[rule_set]]\nrecurring_months = -1\n", error="must not be negative"),
    Case("negative max orders", "[[rule_set]]\nmax_orders_per_customer = -2\n", error="must not be negative"),
    Case("negative cap window", "[[rule_set]]\ncap_per_customer_months = -6\n", error="must not be negative"),
    Case("month_close_days 2 is the least", "[[rule_set]]\nmonth_close_days = 2\n",
         expected={"month_close_days": 2}),
    Case("month_close_days below 2", "[[rule_set]]\nmonth_close_days = 1\n", error="at least 2"),
    Case("existing_customers_earn must be a boolean", '[[rule_set]]\nexisting_customers_earn = "no"\n',
         error="existing_customers_earn"),
    # the rule book's time zone (top level)
    Case("time zone", 'time_zone = "Asia/Shanghai"\n' + TWO_VERSIONS, ts=MARCH, expected=V2, zone="Asia/Shanghai"),
    Case("time zone without rule sets: the defaults", 'time_zone = "America/New_York"\n', expected=DOC_DEFAULTS,
         zone="America/New_York"),
    Case("unknown time zone", 'time_zone = "Mars/Olympus_Mons"\n', error="Mars/Olympus_Mons"),
    Case("time zone must be a string", "time_zone = 8\n", error="time_zone"),
    Case("unknown top-level field", 'timezone = "UTC"\n', error="timezone"),
    Case("a rule set field at top level is unknown there", "cap_per_order = 5\n[[rule_set]]\n",
         error="cap_per_order"),
    Case("duplicate versions", '[[rule_set]]\nversion = "v1"\n[[rule_set]]\nversion = "v1"\n'
         'effective_from = "2026-03-01T00:00:00Z"\n', error="unique"),
    Case("two unnamed rule sets clash on the default version", "[[rule_set]]\n[[rule_set]]\neffective_from = 5\n",
         error="unique"),
    Case("unknown field", '[[rule_set]]\nversion = "v1"\ncap_per_ordr = 5\n', error="cap_per_ordr"),
    Case("a per-currency minimum payout", '[[rule_set]]\nminimum_payouts = { JPY = "10000" }\n',
         expected={"minimum_payouts": {"JPY": D(10_000)}, "minimum_payout": D(100)}),
    Case("a per-currency minimum needs an ISO code", '[[rule_set]]\nminimum_payouts = { usd = "1" }\n',
         error="ISO-4217"),
    Case("a negative minimum payout", '[[rule_set]]\nminimum_payouts = { USD = "-1" }\n', error="negative"),
    Case("instalments in at least one part", '[[rule_set]]\ninstalment_months = 0\n', error="at least 1"),
    Case("effective date without timezone", '[[rule_set]]\neffective_from = "2026-03-01T00:00:00"\n',
         error="timezone"),
    Case("wrong type", '[[rule_set]]\nfarm_signups_per_day = "many"\n', error="farm_signups_per_day"),
    Case("broken TOML", "[[rule_set]\nversion = \n", error=""),
    Case("missing file", None, error=""),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_rules(case: Case, tmp_path: Path) -> None:
    path = str(tmp_path / case.path) if case.path else ""
    if case.toml is not None:
        Path(path).write_text(case.toml)
    if case.error is not None:
        with pytest.raises(ValueError) as err:
            load_rules(path)
        assert path in str(err.value) and case.error in str(err.value)
        return
    book = load_rules(path)
    rules = book.at(case.ts)
    assert {k: getattr(rules, k) for k in case.expected} == case.expected
    assert (book.time_zone, book.zone.key) == (case.zone, case.zone)


def test_the_example_in_docs_rules_md_parses() -> None:
    """The documented example is what operators copy: it must stay valid."""
    import re
    import tomllib

    doc = (ROOT / "docs" / "rules.md").read_text()
    example = re.search(r"```toml\n(.*?)```", doc, re.S)
    assert example is not None
    book = parse_rules(tomllib.loads(example.group(1)))
    assert [r.version for r in book.rule_sets] == ["2026-01", "2026-07"]
    assert book.at(1_782_864_000_000).cap_per_order == Decimal(80000)
    later = book.at(1_782_864_000_000)
    assert (later.holding_days, later.minimum_payout, later.instalment_above, later.points_cashable) == (
        30, Decimal(100), Decimal(5000), True)
