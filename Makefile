# Tandem: `make demo` runs it, `make test` tests it.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
HOST ?= 127.0.0.1
PORT ?= 8000
# Every target names its settings: manage.py, wsgi and celery fall back to production, which
# refuses to start without SECRET_KEY and DJANGO_ALLOWED_HOSTS. The demo runs with DEBUG off;
# `make demo DEMO_SETTINGS=webapp.settings.dev` gives a developer debug pages.
DEMO_SETTINGS ?= webapp.settings.demo

.PHONY: install demo demo-passwords test test-fast lint bench bench-images bench-training bench-loop migrate

install: $(VENV)/.installed

# torch is pinned in requirements.txt to the CPU build on this disk; a loose pin would pull CUDA.
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

migrate demo demo-passwords: export DJANGO_SETTINGS_MODULE := $(DEMO_SETTINGS)

migrate: install
	$(PY) manage.py migrate --noinput

# Embedded defaults: SQLite under var/ and a file-system Celery broker, unless DATABASE_URL /
# CELERY_BROKER_URL say otherwise. Web and worker run side by side under webapp/run_demo.py;
# Ctrl-C stops both, once. The first run also trains one round of the loop demo on tiny CPU
# models (DEMO_LOOP=0 skips it). The users' random passwords are printed on the first run only,
# just before the server starts (held back while the loop demo trains, so they don't scroll away).
DEMO_LOOP ?= 1

demo: migrate
	@banner="$$($(PY) manage.py seed_demo --url http://$(HOST):$(PORT)/)" || { echo "$$banner"; exit 1; }; \
	if [ "$(DEMO_LOOP)" = "1" ]; then $(PY) manage.py seed_demo_loop || { echo "$$banner"; exit 1; }; fi; \
	echo "$$banner"
	@echo "Tandem on http://$(HOST):$(PORT)/  (API docs: http://$(HOST):$(PORT)/api/docs/)  Ctrl-C stops it."
	@$(PY) -m webapp.run_demo --host $(HOST) --port $(PORT) --settings $(DJANGO_SETTINGS_MODULE)

# New random passwords for the demo users, printed once.
demo-passwords: migrate
	$(PY) manage.py seed_demo --reset-passwords --url http://$(HOST):$(PORT)/

test: install
	DJANGO_SETTINGS_MODULE=webapp.settings.test $(VENV)/bin/pytest

# The edit-test loop: everything but the tests marked slow or browser (`make test` runs them all).
test-fast: install
	DJANGO_SETTINGS_MODULE=webapp.settings.test $(VENV)/bin/pytest -m "not slow and not browser"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	DJANGO_SETTINGS_MODULE=webapp.settings.dev $(PY) manage.py makemigrations --check --dry-run

# Each prints its figures and ratios, writes JSON under bench/out/ and saves the result under
# bench/results/<date>/ for committing (see README, Performance). `make bench` runs the web
# benches: the pairwise loop and export, then the image ones (zip import of 10,000 image tasks,
# pairwise and hallucination interleaved at 32 annotators, vision_pairs export of 100,000).
bench: install
	$(PY) -m bench.run_all --save-result

# The image benches alone, as `make bench` runs them.
bench-images: install
	$(PY) -m bench.image_import --save-result --json bench/out/image_import.json
	$(PY) -m bench.web_load --kind pairwise,hallucination --annotators 32 --ab-rounds 2 --save-result --json bench/out/web_load_kinds.json
	$(PY) -m bench.web_export --kind hallucination --shape vision_pairs --judgements 100000 --save-result --json bench/out/web_export_vision_pairs.json
	$(PY) -m bench.web_export --kind hallucination --shape vision_pairs --judgements 100000 --image-per-task --save-result --json bench/out/web_export_vision_pairs_per_task.json

bench-training: install
	$(PY) -m bench.oracle_loop --save-result --json bench/out/oracle_loop.json --plot bench/out/oracle_loop.png
	$(PY) -m bench.hallucination_loop --save-result --json bench/out/hallucination_loop.json --plot bench/out/hallucination_loop.png
	$(PY) -m bench.hindsight_loop --jobs 2 --save-result --json bench/out/hindsight_loop.json --plot bench/out/hindsight_loop.png
	$(PY) bench/reward_real.py --save-result --json bench/out/reward_real.json

bench-loop: install
	$(PY) -m bench.loop_latency --save-result --json bench/out/loop_latency.json
	$(PY) -m bench.round_one_replay --save-result --json bench/out/round_one_replay.json
	$(PY) -m bench.web_hallucination_loop --save-result --json bench/out/web_hallucination_loop.json
