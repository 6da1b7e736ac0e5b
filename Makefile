# The README's two commands: `make demo` and `make test`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch for machines without a GPU; on a GPU machine pass TORCH=torch (the CUDA build).
TORCH ?= torch==2.13.0

.PHONY: demo test install clean

$(VENV)/installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/installed

test: install
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q

demo: install
	$(PY) demo.py

clean:
	rm -rf $(VENV) demo
