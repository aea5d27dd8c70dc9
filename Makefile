# Two commands on a fresh clone: `make demo` (the main job) and `make test` (the tests).
# Both create .venv on first use (scripts/setup.sh picks a CPU torch on machines without a GPU) and
# install the ct2 extra: the demo translates with CTranslate2 (same translations, several times faster).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test test-fast demo demo-quick clean

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# The demo needs no test extras (tensorboard, wandb): a fresh clone is set up faster.
demo:
	@EXTRAS=ct2 bash scripts/setup.sh
	$(VENV)/bin/flare demo

demo-quick:
	@EXTRAS=ct2 bash scripts/setup.sh
	$(VENV)/bin/flare demo --quick -o flare-demo-quick

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info flare-demo flare-demo-quick
