"""Program rules: which conversions earn (checks, reason codes) and how much (commission).

`ruleset` holds the versioned, effective-dated settings; `checks` turns evidence about one
conversion into reason codes and a status; `commission` prices it; `signals` keeps the
cross-partition fraud counters (Redis). See docs/rules.md for the contract.
"""
