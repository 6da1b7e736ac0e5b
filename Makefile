# The README's two commands: `make demo` and `make test`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch goes in first, so that the project's `torch>=2.6` finds it. PyPI's torch wheel for Linux is the CUDA
# build; our machines' pip finds the CPU build (2.13.0+cpu) in their local wheel folder. Elsewhere,
# TORCH_INDEX=https://download.pytorch.org/whl/cpu takes PyTorch's own CPU build (docs/install.md).
TORCH ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: demo test install clean

$(VENV)/installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)")
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/installed

test: install
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q

demo: install
	$(PY) demo.py

clean:
	rm -rf $(VENV) demo
