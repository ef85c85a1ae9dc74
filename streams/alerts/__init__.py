"""Alerting: anomalous referral spikes per promoter / tracking code (pure logic in `spike`)."""
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

__all__ = ["Alert", "DetectorState", "KeyState", "Late", "Obs", "Output", "SpikeDetector",
           "SpikeRules", "tail_score"]
