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

.PHONY: run test lint redis postgres clean

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

# The storage tests run on PostgreSQL too, at 127.0.0.1:$(PG_PORT) as user postgres with trust auth; start a
# private one if none answers: initdb into $(PG_DATA) (once), pg_ctl start listening on loopback only, its
# socket in the same folder.  initdb and pg_ctl refuse to run as root: as root they run as the user postgres
# (or nobody), which is why the folder is under the temporary folder rather than in the checkout.
PG_PORT ?= 5432
PG_DATA ?= $(or $(TMPDIR),/tmp)/mmpp-postgres-$(PG_PORT)
PG_USER := $(if $(filter 0,$(shell id -u)),$(shell id -u postgres >/dev/null 2>&1 && echo postgres || echo nobody),)
PG_AS := $(if $(PG_USER),runuser -u $(PG_USER) --,)
postgres: $(STAMP)
	@$(PY) -c "import asyncio, asyncpg; asyncio.run(asyncpg.connect('postgresql://postgres@127.0.0.1:$(PG_PORT)/postgres', timeout=2))" 2>/dev/null || { \
	  mkdir -p "$(PG_DATA)" && chmod 700 "$(PG_DATA)" $(if $(PG_USER),&& chown $(PG_USER) "$(PG_DATA)") && \
	  { [ -s "$(PG_DATA)/PG_VERSION" ] || $(PG_AS) initdb -D "$(PG_DATA)" -U postgres --auth=trust >/dev/null; } && \
	  $(PG_AS) pg_ctl -D "$(PG_DATA)" -l "$(PG_DATA)/server.log" -w \
	    -o "-c listen_addresses=127.0.0.1 -p $(PG_PORT) -k $(PG_DATA)" start >/dev/null; }

test: $(STAMP) redis postgres
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

clean:
	rm -rf $(VENV) var out
