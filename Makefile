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

# The install: uv (pip puts it into .venv first; it resolves the same versions as pip and, downloading and
# unpacking in parallel, installs in 40-55 s where pip takes 65-95 on two cores; --compile-bytecode: as pip
# does, else every process compiles Ray where PYTHONDONTWRITEBYTECODE is set) and, if uv fails, pip. uv does
# not read pip's configuration: with a pip set up for a private index, `make install INSTALLER=pip`.
INSTALLER ?= uv
$(STAMP): $(BIN)/python pyproject.toml
	@if [ "$(INSTALLER)" = uv ] && $(BIN)/python -m pip install -q --only-binary uv uv \
		&& $(BIN)/python -m uv pip install --compile-bytecode --python $(BIN)/python -e '.[test]'; then :; \
	elif [ "$(INSTALLER)" = uv ]; then echo "make: uv did not install the project (pip could not install uv, or uv failed); installing with pip" >&2; \
		$(BIN)/python -m pip install -e '.[test]'; \
	elif [ "$(INSTALLER)" = pip ]; then $(BIN)/python -m pip install -e '.[test]'; \
	else echo "make: INSTALLER=$(INSTALLER) is neither uv nor pip: set INSTALLER=uv (the default) or INSTALLER=pip" >&2; \
		exit 2; fi
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/cent serve $(ARGS)

# test: pytest-xdist workers, one a CPU and one more (2 to 4: tests/conftest.py), a file's tests on one worker (its
# module's server or cluster starts once), files in the order tests/conftest.py gives (longest first)
# PYTHONDONTWRITEBYTECODE emptied: where the shell sets it, every process the tests start (workers, device
# actors, servers, the CLI tests' commands) compiles the project's modules again, and each worker rewrites
# the tests' asserts again. With bytecode written under __pycache__ (git ignores it), in one A/B of the whole
# suite on two cores, the CLI error tests took 30% less time and the suite's summed test time 2% less
test: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder tests

bench: $(STAMP)
	$(BIN)/python benchmarks/timing_tables.py
	$(BIN)/python benchmarks/actors_speed.py
	$(BIN)/python benchmarks/scaling.py --out bench-scaling

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
