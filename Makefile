# `make demo`: set up and run the embedded default sweep end to end on the local executor (no cluster needed).
# `make test`: set up and run the test suite.
# `make study-pages`: run every study's smoke specs on the local executor and regenerate docs/studies/*.md.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO ?= sweeps/depth_ladder_digits.yaml
ROOT ?= results

.PHONY: setup demo test bench clean-demo study-pages

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

study-pages: setup
	nice -n 10 $(PY) docs/studies/build.py $(STUDIES)

clean-demo:
	rm -rf $(ROOT)/$(basename $(notdir $(DEMO)))
