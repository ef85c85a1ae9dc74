"""The worker's stats HTTP API (`api`) and live dashboard (`routes`, `static/`)."""
