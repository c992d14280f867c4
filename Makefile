# Two commands do all the set-up: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# onnxruntime's GPU build where nvidia-smi lists a GPU, its CPU build elsewhere (override: make ORT=gpu).
ORT    ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
OTHER  := $(if $(filter gpu,$(ORT)),onnxruntime,onnxruntime-gpu)
STAMP  := $(VENV)/.installed-$(ORT)

.PHONY: run test test-slow lint server serve clean

$(STAMP): requirements.txt requirements-$(ORT).txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "strokelens needs Python 3.10 or newer")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt -r requirements-$(ORT).txt
	@# the two builds share one package folder: drop the other one, then lay the chosen one down again
	if $(PY) -m pip show -q $(OTHER) >/dev/null 2>&1; then \
	  $(PY) -m pip uninstall -y -q $(OTHER) && \
	  $(PY) -m pip install --disable-pip-version-check -q --force-reinstall --no-deps -r requirements-$(ORT).txt; fi
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m mlproject.main

test: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

server: $(STAMP)
	$(PY) -m mlproject.server

# make serve [MODEL=models:/strokelens-segmenter/3] [PORT=5001] [HOST=127.0.0.1] [SERVE_FLAGS=--max-request-mb 128]
MODEL ?= models:/strokelens-segmenter@champion
PORT  ?= 5000
HOST  ?= 127.0.0.1
serve: $(STAMP)
	$(PY) -m mlproject.serve --model '$(MODEL)' --host $(HOST) --port $(PORT) $(SERVE_FLAGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) data/synthetic .cache .pytest_cache
