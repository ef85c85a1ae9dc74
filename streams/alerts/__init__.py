"""Alerting: anomalous referral spikes per promoter / tracking code (pure logic in `spike`,
the worker's wiring in `watch`)."""
from streams.alerts.spike import (
    Alert,
    DetectorState,
    KeyState,
    Late,
    Obs,
    Output,
    SpikeDetector,
    SpikeRules,
    tail_score,
)
from streams.alerts.watch import Row, Watcher, WatchState, register_alerts

__all__ = ["Alert", "DetectorState", "KeyState", "Late", "Obs", "Output", "Row", "SpikeDetector",
           "SpikeRules", "WatchState", "Watcher", "register_alerts", "tail_score"]
