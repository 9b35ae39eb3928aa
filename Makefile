# Two commands do all the set-up on a fresh machine:
#   make pipeline   # the main job: every notebook, headless, on the built-in tiny default
#   make test       # the test suite (what .ci/run runs)
#   make test-fast  # the suite without the tests marked slow: the loop while editing
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test test-fast pipeline figures lab benchmarks busy-machine gpu-check clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name feds-lab --display-name "feds-lab (.venv)" >/dev/null
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	@bash tools/ensure_chromium.sh
	@bash tools/ensure_postgres.sh
	$(PY) -m pytest -q

# everything but the tests marked slow (training, notebooks through papermill, a browser): no
# Chromium needed; `make test` (CI) still runs them all
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

pipeline: $(STAMP)
	$(VENV)/bin/feds-lab pipeline $(ARGS)

# the demo's key figures and tables into figures/ (what the README shows), from a finished `make pipeline`
# (--resume: a finished run is not trained again; only the copy is made)
figures: $(STAMP)
	$(VENV)/bin/feds-lab pipeline --resume --set figures_dir=figures $(ARGS)

lab: $(STAMP)
	$(VENV)/bin/feds-lab lab $(ARGS)

benchmarks: $(STAMP)
	$(PY) benchmarks/size_speed.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/coding_overhead.py

# a busy machine (thread defaults beside another process): the demo's training step beside one busy
# process, against alone; run it on an otherwise quiet machine (without OMP_NUM_THREADS: each
# setting sets its own)
busy-machine: $(STAMP)
	env -u OMP_NUM_THREADS -u MKL_NUM_THREADS $(PY) benchmarks/busy_machine.py

# the GPU check (one JSON, under 10 minutes on one GPU); without a GPU its CPU fallback
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py --out runs/gpu_check.json

clean:
	rm -rf $(VENV) runs .pytest_cache
