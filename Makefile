# The README's two commands: `make demo` and `make test`. Everything else is a helper for them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: demo test venv lint typecheck bench-load bench-stats bench-gpu clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

test: venv
	HF_HUB_OFFLINE=1 DJANGO_ALLOW_ASYNC_UNSAFE=true $(BIN)/python -m pytest $(PYTEST_ARGS)

demo: venv
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py seed_demo
	@mkdir -p var
	@trap 'kill $$worker 2>/dev/null; wait $$worker 2>/dev/null' EXIT INT TERM; \
	$(BIN)/celery -A config worker -Q default,gpu -c 1 --prefetch-multiplier=1 -n demo@%h \
		--loglevel=INFO > var/worker.log 2>&1 & worker=$$!; \
	echo ""; \
	echo "  FaceBench is running at http://$(HOST):$(PORT)/  (Celery worker log: var/worker.log)"; \
	echo "  Demo logins are printed above. Stop with Ctrl-C."; \
	echo ""; \
	$(BIN)/gunicorn config.wsgi -b $(HOST):$(PORT) -w 2 --threads 4 --preload --access-logfile - --log-level warning

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy annotator benchmark jobs ml config

bench-load: venv
	DATABASE_URL=$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/facebench} $(BIN)/python bench/annotation_load.py

bench-stats: venv
	$(BIN)/python bench/stats.py

bench-gpu: venv
	$(BIN)/python bench/gpu.py

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
