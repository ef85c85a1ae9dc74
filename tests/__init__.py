"""refstream's tests: unit tests mirror the packages; tests/integration/ runs real workers."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout
