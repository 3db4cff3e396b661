# The two commands in the README: `make run` and `make test`.
# `make test` runs ruff, mypy (configured in pyproject.toml) and pytest, as CI does.
# Each creates the virtual environment and installs the pinned dependencies
# on first use: the runtime set (requirements.lock, what the images install),
# then the test and lint tools (requirements-dev.lock); later runs reuse them
# until a lock or pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# A local folder of wheels (CPU torch lives there on the project's machines).
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
export MMPP_CACHE_DIR ?= $(CURDIR)/var/cache

.PHONY: run test lint redis clean

$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(FIND_LINKS) torch==2.13.0
	$(PY) -m pip install --quiet $(FIND_LINKS) -r requirements.lock
	$(PY) -m pip install --quiet $(FIND_LINKS) -r requirements-dev.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m mmpp.cli run

# The integration tests need Redis on 127.0.0.1:6379; start one if none answers.
redis:
	@$(PY) -c "import redis,sys; redis.Redis(socket_timeout=1).ping()" 2>/dev/null || \
	  (redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null && sleep 1)

test: $(STAMP) redis
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

clean:
	rm -rf $(VENV) var out
