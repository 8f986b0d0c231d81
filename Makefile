# Two commands do all set-up on a fresh machine: `make run` and `make test`.
# The virtual environment is built from the pinned set (requirements.txt) with Python 3.10.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
OUTPUT_DIR ?= outputs/local
RUN_ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test test-all lock clean
export TF_USE_LEGACY_KERAS := 1

# --compile-bytecode: each process reads the libraries' bytecode instead of compiling their source, which it does
# on every start where PYTHONDONTWRITEBYTECODE is set (as on the machine measured): importing TFX and TFMA took
# 19.1 s without it and 8.6 s with it, in the pipeline, in every Beam worker and in every test process.
$(PY): requirements.txt
	@v=$$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	if [ "$$v" != "3.10" ]; then echo "Python 3.10 is required (python3 is $$v): install it, or use pyenv, which picks 3.10 from .python-version" >&2; exit 1; fi
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip uv
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) -r requirements.txt
	@touch $(PY)

run: $(PY)
	$(PY) tfx_runner.py run --output-dir $(OUTPUT_DIR) $(RUN_ARGS)

# The fast suite (under 10 minutes on 2 cores): every behaviour, the expensive work done once (tests/runs.py).
# Two pytest-xdist workers, each running whole modules, the longest first (tests/conftest.py); `PYTEST_ARGS="-n 0"`
# runs it in one process.
XDIST := -n 2 --dist loadscope --no-loadscope-reorder
test: $(PY)
	$(PY) -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

# Everything, the slow variants too (every backbone x method exported and served, every e2e scenario as a
# pipeline run of its own): before resolving an issue that touches models or the pipeline.
test-all: $(PY)
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# Re-resolve the pinned set after editing requirements.in.
lock: $(PY)
	$(VENV)/bin/uv pip compile --quiet requirements.in --python-version 3.10 \
	  --python-platform x86_64-manylinux_2_36 -o requirements.txt

clean:
	rm -rf $(VENV) outputs
