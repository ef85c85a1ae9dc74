#!/bin/sh
# Creates refstream's input, output and internal join topics with their cleanup policies.
# Idempotent (--if-not-exists): an existing topic keeps its partitions and configs.
# Faust creates the compacted changelogs (<APP_ID>-visitors-changelog, -accounts-changelog,
# -promoter-books-changelog)
# and <APP_ID>-__assignor-__leader itself. See docs/operations.md, "Topics".
set -eu
: "${BOOTSTRAP:?}" "${REFSTREAM_PARTITIONS:?}" "${REFSTREAM_REPLICATION_FACTOR:?}"
PREFIX="${REFSTREAM_TOPIC_PREFIX:-}"
DAY_MS=86400000

create() {  # name partitions config...
  name="$PREFIX$1"; partitions="$2"; shift 2
  configs=""
  for c in "$@"; do configs="$configs --config $c"; done
  # $configs unquoted on purpose: one word per flag (config values have no spaces).
  "${KAFKA_TOPICS:-/opt/kafka/bin/kafka-topics.sh}" --bootstrap-server "$BOOTSTRAP" \
    --create --if-not-exists --topic "$name" --partitions "$partitions" \
    --replication-factor "$REFSTREAM_REPLICATION_FACTOR" $configs
}

# Inputs: kept for replays and backfills, far beyond the allowed lateness (1 h).
for t in clicks signups orders; do
  create "$t" "$REFSTREAM_PARTITIONS" cleanup.policy=delete retention.ms=$((14 * DAY_MS))
done
# Reference data: the latest record per key (tracking_code, account_id, currency/start) is the state.
for t in promoters exclusions fx_rates; do
  create "$t" 1 cleanup.policy=compact
done
# Review decisions: every decision counts (latest wins), so never compacted; kept for good,
# as they are people's decisions nothing can recompute, and few.
create reviews 1 cleanup.policy=delete retention.ms=-1
# Internal join topics: partitions must equal REFSTREAM_PARTITIONS (keys are placed by it).
# Only the sink reads them late, so they need to cover a ClickHouse outage, not history
# (promoter-join, the account join's decisions to the promoter stage, is not even stored).
for t in visitor-join account-join promoter-join; do
  create "$t" "$REFSTREAM_PARTITIONS" cleanup.policy=delete retention.ms=$((3 * DAY_MS))
done
# Outputs, for downstream consumers.
for t in conversions late-events dead-letters alerts; do
  create "$t" "$REFSTREAM_PARTITIONS" cleanup.policy=delete retention.ms=$((7 * DAY_MS))
done
