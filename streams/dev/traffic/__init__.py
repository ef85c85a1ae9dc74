"""Deterministic sample traffic for refstream, with the ground truth it implies (pure: no I/O).

`generate(TrafficSpec(seed=...))` builds promoters (a few KOLs owning a coupon code, a few
recruited by another promoter), visitors who click tracking links or use a KOL's coupon code,
signups, orders (about one customer in eight pays in EUR, with a daily EUR rate on `fx_rates`),
refunds and cancellations, plus (with `spec.fraud`) labelled fraud
patterns, then lays them out in a *delivery order* (`Traffic.messages`) that is realistic
for Kafka: event-time order with jitter, some events displaced within the allowed lateness,
a few delivered beyond it, a few duplicated, optionally a few malformed. It never reads the
wall clock nor the global `random`: `spec.end_ms` is the simulated "now" and everything
follows from `spec.seed`.

Lateness contract (checked by tests/dev/test_generate.py), with L = `spec.allowed_lateness_ms`
and D = `spec.max_delay` (< L; 90 % of L by default):
- reference data (promoters, exclusions, fx_rates) comes first. Its event times are before
  all traffic, except promoter versions and exclusions that take effect inside the traffic
  span (a promoter turning enterprise, a customer owned only from some date on) and the daily
  exchange rates: the pipeline looks those up by event time (`ts`, `since`, `effective_from`),
  so they are delivered first too. The first EUR rate applies from the day before the first
  EUR order (no `fx_rate_missing`); each is keyed `EUR/<day>`;
- every message flagged on_time / delayed / duplicate is delivered when no traffic event
  delivered before it has an event time above `its ts + D`: it is not late for any
  watermark computed from earlier deliveries (per partition, per kind or global);
- every message flagged late is delivered after some traffic event whose event time is
  above `its ts + L` (usually 4-12 L). Whether the pipeline reports it as late depends on
  its watermark (per partition, following the slowest input kind), so in practice most but
  not all of them are. They are therefore chosen among events that cannot change the
  attribution: clicks of visitors who never sign up, and orders of accounts that are not
  attributed (organic signups, existing customers): at most `spec.late` of the traffic.
  Events a fraud count depends on (flooding clicks, farmed signups) are never late nor
  displaced.

Truth (`Traffic.truth`) follows the pipeline's rules on event times of valid, de-duplicated
events: a signup is attributed to the last (and, for `first_click_code`, the first) click
of the same visitor with `signup_ts - window <= click_ts <= signup_ts`, ties broken by
event_id; its attributed orders are the paid orders of the account with
`signup_ts <= order_ts <= signup_ts + binding` that a click or a coupon code attributes (the
latest code used at signup or with an order up to that one wins over the click, as under the
default `attribution_precedence`; `AccountTruth.coupons`), and an order whose latest status event is
refunded / cancelled / charged back is listed in `reversed`. Late events are left out by
definition, and including them gives the same truth (they are chosen so; tests check both).
`Truth.expected` adds, per attributed order, the status and reason codes of docs/rules.md
(default thresholds) and the generator's pattern labels (`PATTERNS`): an order with no
label is honest and must be approved. Scoring a pipeline run against it: streams/dev/scoring.py.

Modules: `model` (spec, truth, patterns), `honest` (the honest population), `fraud` (the
patterns), `oracle` (attribution and expected checks), `delivery` (`generate`).
"""
from schemas.units import DAY_MS, HOUR_MS, MINUTE_MS  # re-exported: the traffic's tests and tools use them
from streams.dev.traffic.delivery import generate
from streams.dev.traffic.model import (
    DEFAULT_END_MS,
    FRAUD_COUNTS,
    PATTERNS,
    REFERENCE_TOPICS,
    REVERSAL_CODES,
    TOPICS,
    TRAFFIC_TOPICS,
    AccountTruth,
    Counts,
    Expected,
    Traffic,
    TrafficSpec,
    Truth,
)
from streams.dev.traffic.oracle import REASON_CODES, Rules, compute_truth, expected_conversions, status_of

__all__ = [
    "DAY_MS", "DEFAULT_END_MS", "FRAUD_COUNTS", "HOUR_MS", "MINUTE_MS", "PATTERNS", "REASON_CODES",
    "REFERENCE_TOPICS", "REVERSAL_CODES", "TOPICS", "TRAFFIC_TOPICS", "AccountTruth", "Counts", "Expected",
    "Rules", "Traffic", "TrafficSpec", "Truth", "compute_truth", "expected_conversions", "generate", "status_of",
]
