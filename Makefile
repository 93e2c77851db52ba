# `make demo`: set up and run the embedded default sweep end to end on the local executor (no cluster needed).
# `make test`: set up and run the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO ?= sweeps/depth_ladder_digits.yaml
ROOT ?= results

.PHONY: setup demo test bench clean-demo

setup: $(VENV)/.installed

$(VENV)/.installed: env/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r env/requirements.txt
	touch $@

demo: setup
	$(PY) main.py plan $(DEMO) --root $(ROOT) | head -20
	$(PY) main.py submit $(DEMO) --root $(ROOT) --executor local --wait
	$(PY) main.py aggregate $(DEMO) --root $(ROOT) --show

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/plan.py

clean-demo:
	rm -rf $(ROOT)/$(basename $(notdir $(DEMO)))
