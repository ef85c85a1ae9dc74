# Developer entry points. `make test` is what CI runs (via .ci/run).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv demo test lint bench clean redis promtool chromium stunnel

venv: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the dependency list changed since the last install.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[local,test]'
	touch $@

demo: venv redis
	$(BIN)/refstream demo

# The local stack needs Redis: reuse one on 127.0.0.1:6379, else Debian's redis-server.
redis: venv
	@if $(BIN)/python -c 'import sys; from streams.dev.stack import redis_answers; sys.exit(not redis_answers("127.0.0.1", 6379))'; then \
		echo "redis: reusing the one answering on 127.0.0.1:6379"; \
	elif command -v redis-server >/dev/null 2>&1 || [ -x /usr/sbin/redis-server ]; then \
		echo "redis: redis-server found; the local stack starts its own"; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server; \
	else \
		echo "redis-server is missing: run 'sudo apt-get install -y redis-server' (or start a Redis on 127.0.0.1:6379)" >&2; \
		exit 1; \
	fi

test: lint redis promtool chromium stunnel
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# ruff (lint, import order) and mypy (strict on streams/logic and schemas): seconds, before the tests
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

# promtool checks and unit-tests deploy/prometheus, amtool checks deploy/alertmanager
# (Debian's prometheus 2.42 and prometheus-alertmanager packages).
promtool:
	@if command -v promtool >/dev/null 2>&1 && command -v amtool >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
			prometheus prometheus-alertmanager; \
	else \
		echo "promtool/amtool missing: run 'sudo apt-get install -y prometheus prometheus-alertmanager' (tests/deploy skip those checks)" >&2; \
	fi

bench: venv
	$(BIN)/python -m bench.e2e

# Stop a stack `refstream stack up` left running first: its state lives in .data.
clean:
	@if [ -f .data/stack/state.json ] && [ -x $(BIN)/python ]; then \
		REFSTREAM_DATA_DIR=.data $(BIN)/python -c 'from streams.config import Settings; from streams.dev.stack import down; down(Settings.from_env())' || true; \
	fi
	rm -rf .data

# Headless Chromium for the dashboard test (Debian's package; the test skips without it).
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; \
	else \
		echo "chromium is missing: run 'sudo apt-get install -y chromium' (the dashboard test is skipped)" >&2; \
	fi

# The Kafka TLS tests put Debian's stunnel4 in front of a Tansu (Tansu 0.6 has no working TLS)
# and make their throwaway certificates with the openssl command line; they skip without them.
stunnel:
	@if command -v stunnel4 >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends stunnel4 openssl; \
	else \
		echo "stunnel4/openssl missing: run 'sudo apt-get install -y stunnel4 openssl' (the Kafka TLS tests are skipped)" >&2; \
	fi
