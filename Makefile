# Two commands for a new user: `make run` and `make test`.
# Both create .venv when it is missing and install the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS =
# `make run ARGS="--port 8001 --numerics off"` passes flags to `cent serve` (only make's command line
# sets it: an ARGS exported in the shell is not passed).

.PHONY: run test install clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip >/dev/null

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/cent serve $(ARGS)

# test: pytest-xdist workers, one a CPU and one more (2 to 4: tests/conftest.py), a file's tests on one worker (its
# module's server or cluster starts once), files in the order tests/conftest.py gives (longest first)
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder tests

bench: $(STAMP)
	$(BIN)/python benchmarks/timing_tables.py
	$(BIN)/python benchmarks/actors_speed.py
	$(BIN)/python benchmarks/scaling.py --out bench-scaling

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
