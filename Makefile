# `make demo` then `make test`: the only set-up a fresh machine needs is Python 3 and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := work/demo
DEMO_FLAGS := --raw $(DEMO)/raw --workdir $(DEMO)

.PHONY: demo test bench clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

demo: $(VENV)/.installed
	rm -rf $(DEMO)
	$(PY) data.py --demo $(DEMO_FLAGS) -q
	$(PY) train.py $(DEMO_FLAGS) --time-limit 120
	$(PY) predict.py $(DEMO_FLAGS) -q
	$(PY) submission.py $(DEMO_FLAGS) --truth $(DEMO)/raw/test_masks

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

clean:
	rm -rf work .pytest_cache .hypothesis
