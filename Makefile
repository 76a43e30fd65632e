# Two commands for a fresh machine (see README):
#   make run    set up .venv and pre-label the example images -> tasks.json
#   make test   set up .venv (+ PostgreSQL, Chromium via apt when missing) and run the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
IMAGES ?= data/examples

.PHONY: setup run test test-fast demo lint system-deps

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-test.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -r requirements.txt -r requirements-test.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

run: setup
	$(BIN)/tag-backend predict $(IMAGES) --out tasks.json

system-deps:
	bash scripts/install-system-deps.sh

test: setup system-deps
	@$(BIN)/pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

test-fast: setup
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(BIN)/python -m tag_backend.random_models data/runtime/random-models
	TAG_DINO_MODEL=data/runtime/random-models/dino TAG_CLIP_MODEL=local-dir:data/runtime/random-models/clip \
	TAG_DATA_DIR=data/runtime/demo $(BIN)/tag-backend predict $(IMAGES) --out tasks.json

lint:
	$(BIN)/hadolint Dockerfile
