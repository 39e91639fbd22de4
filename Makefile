# gridpatrol developer entry points. `make demo` and `make test` work on a fresh machine; the demo
# installs only what it needs (no PyTorch when a model is at hand), the tests the full set.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SHARED ?= ../shared
export GRIDPATROL_SHARED ?= $(abspath $(SHARED))

.PHONY: setup links browser services demo test pytest lint format typecheck bench clean constraints

# The environments, at the versions in constraints.txt; each re-run when either file changes.
# .installed: the project alone, all the demo needs with a model at hand. .installed-dev: with
# the Ultralytics extra (reference backend, .pt loading, export, training; PyTorch, several GB)
# and the development tools, for the tests; it holds the project too, so it stamps both. Every
# target that runs a tool of the full set (psycopg, playwright, ruff, mypy, pytest) depends on
# .installed-dev, so none runs before or while it is installed.
$(VENV)/.installed: pyproject.toml constraints.txt $(VENV)/.python-version
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml constraints.txt $(VENV)/.python-version
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[ultralytics,dev]'
	touch $(VENV)/.installed $@

# The venv itself, made again when it is not one $(PYTHON) would make: a first setup that failed
# half-way (no python3-venv: ensurepip fails after bin/python exists, so there is no bin/pip),
# or one made by another Python (e.g. a 3.10 one when re-run with PYTHON=python3.11). The stamp
# holds its Python's version; it changes, and the packages are installed again, only when the
# venv is made again.
PY_VERSION := import sys; print("%d.%d" % sys.version_info[:2]); sys.exit(sys.version_info < (3, 11))
$(VENV)/.python-version: FORCE
	@want=$$($(PYTHON) -c '$(PY_VERSION)') || { \
	  echo "gridpatrol needs Python 3.11 or newer; $(PYTHON) is $${want:-missing}:" \
	    "run e.g. make PYTHON=python3.11" >&2; exit 1; }; \
	have=$$($(BIN)/python -c '$(PY_VERSION)' 2>/dev/null); \
	if [ "$$have" != "$$want" ] || [ ! -x $(BIN)/pip ]; then \
	  echo "making $(VENV) with $(PYTHON) (Python $$want)"; \
	  rm -rf $(VENV); \
	  $(PYTHON) -m venv $(VENV) && [ -x $(BIN)/pip ] || { rm -rf $(VENV); \
	    echo "could not make $(VENV): $(PYTHON) needs its venv module (Debian: python3-venv," \
	      "or e.g. python3.11-venv)" >&2; exit 1; }; \
	  echo "$$want" > $@; \
	elif [ "$$(cat $@ 2>/dev/null)" != "$$want" ]; then \
	  echo "$$want" > $@; \
	  if [ -f $(VENV)/.installed ]; then touch -r $(VENV)/.installed $@; fi; \
	fi

FORCE:

setup: $(VENV)/.installed-dev links

# Weights and footage are never committed: link the shared copies when they are beside us. A
# real folder of the same name (weights put there by hand) is kept; any other failure stops.
links:
	@mkdir -p var
	@if [ -d "$(GRIDPATROL_SHARED)/models" ]; then \
	  for m in "$(GRIDPATROL_SHARED)"/models/*/; do \
	    [ -d "$$m" ] || continue; \
	    name=$$(basename "$$m"); \
	    if [ -d "models/$$name" ] && [ ! -L "models/$$name" ]; then \
	      echo "models/$$name is a folder, not a link: kept, $${m%/} not linked"; \
	    else ln -sfn "$${m%/}" models/ || exit 1; fi; \
	  done; fi
	@if [ -d "$(GRIDPATROL_SHARED)/footage" ]; then \
	  if [ -d var/footage ] && [ ! -L var/footage ]; then \
	    echo "var/footage is a folder, not a link: kept, $(GRIDPATROL_SHARED)/footage not linked"; \
	  else ln -sfn "$(GRIDPATROL_SHARED)/footage" var/footage; fi; fi

# The console's browser tests drive a Chromium: GRIDPATROL_CHROMIUM, else a `chromium` on PATH
# that runs, else Debian's package is installed. Where that gives none that runs (Ubuntu's
# package is a stub of a snap) or apt cannot be used, Playwright's own Chromium is installed
# (from its CDN; tests/browser/conftest.py launches it when there is no working `chromium`).
CHROMIUM_RUNS := command -v chromium >/dev/null && chromium --version >/dev/null 2>&1
PLAYWRIGHTS := import os, sys; from playwright.sync_api import sync_playwright; \
  pw = sync_playwright().start(); there = os.path.exists(pw.chromium.executable_path); \
  pw.stop(); sys.exit(not there)
browser: $(VENV)/.installed-dev
	@if [ -z "$$GRIDPATROL_CHROMIUM" ] && ! { $(CHROMIUM_RUNS); } && \
	  ! $(BIN)/python -c '$(PLAYWRIGHTS)' 2>/dev/null; then \
	  echo "installing Debian's chromium for the browser tests"; \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); deps=; \
	  if $$sudo apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium >/dev/null; then \
	    deps=--with-deps; fi; \
	  if ! { $(CHROMIUM_RUNS); }; then \
	    echo "no chromium that runs (Ubuntu's is a snap): installing Playwright's Chromium"; \
	    $(BIN)/playwright install $$deps chromium || \
	    { echo "the browser tests need Chromium: install it, or set GRIDPATROL_CHROMIUM" >&2; \
	      exit 1; }; \
	  fi; \
	fi

# The demo's detector needs the Ultralytics extra only when no weights it runs without it are at
# hand (GRIDPATROL_MODEL, else the manifest's default in models/, $GRIDPATROL_SHARED/models or
# the cache; not a .pt) and downloads are allowed, or its Ultralytics weights are in the cache: it
# then downloads and exports the model. The package decides (extra_would_help): status 10 in that
# case; any other failure (GRIDPATROL_MODEL that does not exist, a .pt name Ultralytics does not
# publish, an incomplete IR, GRIDPATROL_OFFLINE with nothing at hand) stops with the resolver's
# message, as PyTorch would not help there. With a target of the full set on the same command
# line the demo uses that install: one pip at a time writes into the venv.
DEV_GOALS := setup test pytest lint format typecheck bench constraints services browser
DEMO_ENV := $(VENV)/$(if $(filter $(DEV_GOALS),$(MAKECMDGOALS)),.installed-dev,.installed)
MODEL_CHECK := import sys; from gridpatrol.detectors.models import extra_would_help; \
  status, why = extra_would_help(); print(why, file=sys.stderr) if why else None; sys.exit(status)
demo: $(DEMO_ENV) links
	@$(BIN)/python -c '$(MODEL_CHECK)'; status=$$?; \
	if [ $$status = 10 ]; then \
	  echo "no model at hand (models/README.md): installing the ultralytics extra (PyTorch," \
	    "several GB) to download and export one"; \
	  $(BIN)/pip install -q -c constraints.txt -e '.[ultralytics]' || \
	    echo "installing the ultralytics extra failed: the demo has no model to run" >&2; \
	elif [ $$status != 0 ]; then \
	  echo "the demo cannot run as it is (above), and the ultralytics extra was not installed:" \
	    "it would not help" >&2; exit 1; fi
	$(BIN)/gridpatrol demo

test: setup lint pytest

pytest: setup browser services
	$(BIN)/pytest tests

# The suite runs against real services and the shared assets; say which one is missing instead
# of a wall of errors.
services: $(VENV)/.installed-dev
	@for d in models footage datasets; do [ -d "$(GRIDPATROL_SHARED)/$$d" ] || \
	  { echo "the tests need the shared assets (models/, footage/, datasets/):" \
	    "$(GRIDPATROL_SHARED)/$$d is missing; put them at ../shared beside the checkout," \
	    "or set GRIDPATROL_SHARED to their folder" >&2; exit 1; }; done
	@command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || \
	  { echo "the tests start their own brokers: install Mosquitto (Debian: mosquitto)" >&2; exit 1; }
	@$(BIN)/python -c 'import socket; socket.create_connection(("127.0.0.1", 1883), 2)' 2>/dev/null || \
	  { echo "the tests need an MQTT broker on 127.0.0.1:1883 (mosquitto -d)" >&2; exit 1; }
	@$(BIN)/python -c 'import os, psycopg; psycopg.connect(os.environ.get("GRIDPATROL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test").replace("+psycopg", ""), connect_timeout=3).close()' 2>/dev/null || \
	  { echo "the tests need PostgreSQL: a database 'test' on 127.0.0.1:5432 for user postgres (trust), or GRIDPATROL_TEST_POSTGRES_URL (the README's Quick start shows how)" >&2; exit 1; }

lint: setup typecheck
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# mypy resolves gridpatrol.* through a tree of links that mirrors the installed layout.
typecheck: setup
	@rm -rf .typecheck && mkdir -p .typecheck/gridpatrol
	@for f in gridpatrol/*; do ln -s "$(CURDIR)/$$f" .typecheck/gridpatrol/; done
	@for p in ingest detectors alarm_bridge api; do ln -s "$(CURDIR)/$$p" .typecheck/gridpatrol/$$p; done
	$(BIN)/mypy

# The benches use what the tests use (Chromium, Mosquitto, PostgreSQL, the shared footage):
# name a missing one before a run, not minutes into it.
bench: setup browser services
	$(BIN)/python bench/run_all.py

# After upgrading packages in .venv (and a passing make test): pin what passed.
constraints: setup
	@{ sed -n '1,/^[^#]/{/^#/p}' constraints.txt; \
	  $(BIN)/pip freeze --exclude-editable | grep -v -i -E '^(gridpatrol|torch|torchvision|triton|nvidia-|cuda-)'; \
	} > constraints.txt.new && mv constraints.txt.new constraints.txt

clean:
	rm -rf .typecheck .pytest_cache .mypy_cache .ruff_cache build *.egg-info
