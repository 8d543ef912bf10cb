# `make demo` then `make test`: the only set-up a fresh machine needs is Python 3 and make.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := work/demo
DEMO_FLAGS := --raw $(DEMO)/raw --workdir $(DEMO)

KAGGLE ?= $(VENV)/bin/kaggle
KERNEL := build/kernel

.PHONY: demo test test-fast bench clean kaggle-push kaggle-run

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

# The unit tests alone: no script run as a subprocess, no training (the `slow` marker, see
# tests/conftest.py).
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow" tests

# Each stage beside the 2017 tutorial's way, on the real images in ../shared/data (about 15 minutes
# on 2 CPU cores; BENCH_FLAGS=--quick for a tenth of the volume).
bench: $(VENV)/.installed
	$(PY) bench/speed.py $(BENCH_FLAGS)

# The kit as a Kaggle notebook (kernel/): bundled into one script, pushed, run on Kaggle's GPU.
# KAGGLE_USER=<name> if the Kaggle credentials do not say whose it is.
kaggle-push: $(VENV)/.installed
	$(PY) kernel/bundle.py $(KERNEL) $(if $(KAGGLE_USER),--user $(KAGGLE_USER))
	$(KAGGLE) kernels push -p $(KERNEL)

# The same, then followed to its end: its outputs in work/kaggle-run/, its validation Dice printed.
# ACCELERATOR=t4x2 (default), p100 or cpu; KERNEL_SLUG=<slug> for another notebook than
# kernel-metadata.json's; SUBMIT=1 submits its submission.csv and prints the public score.
ACCELERATOR ?= t4x2
KAGGLE_RUN_FLAGS = --build $(KERNEL) --accelerator $(ACCELERATOR) \
	$(if $(KAGGLE_USER),--user $(KAGGLE_USER)) $(if $(KERNEL_SLUG),--slug $(KERNEL_SLUG)) \
	$(if $(filter-out 0 no false,$(SUBMIT)),--submit)
kaggle-run: $(VENV)/.installed
	$(PY) kernel/run.py $(KAGGLE_RUN_FLAGS)

clean:
	rm -rf work build .pytest_cache .hypothesis
