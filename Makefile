# Tandem: `make demo` runs it, `make test` tests it.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install demo test lint bench bench-training bench-loop migrate

install: $(VENV)/.installed

# torch is pinned in requirements.txt to the CPU build on this disk; a loose pin would pull CUDA.
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

migrate: install
	$(PY) manage.py migrate --noinput

# Embedded defaults: SQLite under var/ and a file-system Celery broker, unless DATABASE_URL /
# CELERY_BROKER_URL say otherwise. Web and worker run side by side; Ctrl-C stops both.
# The first run also trains one round of the loop demo on tiny CPU models (DEMO_LOOP=0 skips it).
DEMO_LOOP ?= 1

demo: migrate
	$(PY) manage.py seed_demo
	@if [ "$(DEMO_LOOP)" = "1" ]; then $(PY) manage.py seed_demo_loop; fi
	@echo "Tandem on http://$(HOST):$(PORT)/  (API docs: http://$(HOST):$(PORT)/api/docs/)"
	@trap 'kill 0' INT TERM EXIT; \
	$(VENV)/bin/celery -A webapp worker -B -s var/celerybeat-schedule -Q cpu -P solo --loglevel=warning & \
	$(VENV)/bin/gunicorn webapp.wsgi -b $(HOST):$(PORT) -w 2 --threads 4 --access-logfile - & \
	wait

test: install
	$(VENV)/bin/pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) manage.py makemigrations --check --dry-run

# Each prints its figures and ratios and writes JSON under bench/out/ (see README, Performance).
bench: install
	$(PY) -m bench.run_all

bench-training: install
	$(PY) -m bench.oracle_loop --json bench/out/oracle_loop.json --plot bench/out/oracle_loop.png
	$(PY) bench/reward_real.py --json bench/out/reward_real.json

bench-loop: install
	$(PY) -m bench.loop_latency --json bench/out/loop_latency.json
	$(PY) -m bench.round_one_replay --json bench/out/round_one_replay.json
