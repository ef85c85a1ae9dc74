"""At-least-once delivery that holds: Faust commits only what the worker's agents finished."""
from streams.delivery.guarded import GuardedApp, finished
from streams.delivery.ledger import CommitLedger, commit_run

__all__ = ["CommitLedger", "GuardedApp", "commit_run", "finished"]
