# The README's two commands: `make demo` and `make test`. Both install what they need into .venv
# (idempotent: a stamp file skips the install when pyproject.toml and setup.py are unchanged).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# This machine's local CPU build of torch; a CUDA server keeps the torch it has (see README).
TORCH_PIN ?= torch==2.13.0
EXTRAS ?= refine,dev,farm
export PYOPENGL_PLATFORM ?= egl

.PHONY: demo test test-fast install check-system lint bench clean

demo: install check-system
	$(VENV)/bin/destruct run

test: install check-system
	@if [ "$$CI" = "true" ]; then \
	  echo "CI=true: fast and slow suites"; \
	  $(PY) -m pytest -m "slow or not slow" -q -p no:cacheprovider; \
	else \
	  $(PY) -m pytest -q -p no:cacheprovider; \
	fi

test-fast: install
	$(PY) -m pytest -q -x

install: $(STAMP)

$(STAMP): pyproject.toml setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if ! $(PY) -c "import torch" 2>/dev/null; then $(PY) -m pip install -q $(TORCH_PIN); fi
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@touch $(STAMP)

# Headless rendering needs EGL (Mesa llvmpipe on CPU machines, the NVIDIA driver on GPU servers).
check-system:
	@if ! /sbin/ldconfig -p | grep -q 'libEGL.so.1'; then \
	  echo "missing system library libEGL (headless rendering). Install it with:"; \
	  echo "  apt-get update && apt-get install -y libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1"; \
	  exit 1; \
	fi
	@if ! /sbin/ldconfig -p | grep -qE 'libEGL_(mesa|nvidia).so.0'; then \
	  echo "no EGL driver (Mesa or NVIDIA) found. Install Mesa's with:"; \
	  echo "  apt-get update && apt-get install -y libegl-mesa0 libgl1-mesa-dri libgbm1"; \
	  exit 1; \
	fi

lint: install
	$(VENV)/bin/ruff check destruct sim_kernels refine tests benchmarks
	$(VENV)/bin/ruff format --check destruct sim_kernels refine tests benchmarks

bench: install check-system
	$(VENV)/bin/destruct bench

clean:
	rm -rf renders build dist *.egg-info
