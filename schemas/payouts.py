"""The payout tables' vocabulary (docs/payouts.md), shared by the planner, the views, the
payout job, the ClickHouse queries and the API."""
from __future__ import annotations

#: a payout batch's status: pending (to be paid) -> paid (confirmed) | failed (lines released)
PENDING, PAID, FAILED = "pending", "paid", "failed"
#: the statuses whose lines count as booked: a failed batch's lines are paid again later
BOOKED = (PENDING, PAID)
#: a payout line's kind: an order's movement (positive, or negative after a reversal), or cashed points
COMMISSION, CLAWBACK, POINTS = "commission", "clawback", "points"
