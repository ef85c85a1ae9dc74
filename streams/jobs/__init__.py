"""The CLI's batch jobs (payout runs, ...): logic, adapters and sinks driven once, outside the
worker. Jobs import no Faust and no agents (tests/test_layout.py)."""
