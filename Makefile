# gridpatrol developer entry points. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SHARED ?= ../shared
export GRIDPATROL_SHARED ?= $(abspath $(SHARED))

.PHONY: setup links demo test pytest lint format typecheck bench clean constraints

# The environment: the project with the Ultralytics extra (reference backend, training) and
# the development tools, at the versions in constraints.txt. Re-run when either file changes.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[ultralytics,dev]'
	touch $@

setup: $(VENV)/.installed links

# Weights and footage are never committed: link the shared copies when they are beside us.
links:
	@mkdir -p var
	@if [ -d "$(GRIDPATROL_SHARED)/models" ]; then \
	  for m in $(GRIDPATROL_SHARED)/models/*/; do ln -sfn "$${m%/}" models/; done; fi
	@if [ -d "$(GRIDPATROL_SHARED)/footage" ]; then ln -sfn "$(GRIDPATROL_SHARED)/footage" var/footage; fi

demo: setup
	$(BIN)/gridpatrol demo

test: setup lint pytest

pytest: setup
	$(BIN)/pytest tests

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

bench: setup
	$(BIN)/python bench/run_all.py

# After upgrading packages in .venv (and a passing make test): pin what passed.
constraints: setup
	@{ sed -n '1,/^[^#]/{/^#/p}' constraints.txt; \
	  $(BIN)/pip freeze --exclude-editable | grep -v -i -E '^(gridpatrol|torch|torchvision|triton|nvidia-|cuda-)'; \
	} > constraints.txt.new && mv constraints.txt.new constraints.txt

clean:
	rm -rf .typecheck .pytest_cache .mypy_cache .ruff_cache build *.egg-info
