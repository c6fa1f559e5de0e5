# `make test` and `make bench` work on a fresh machine with Python 3.11+: they create .venv,
# install the project with pinned versions (constraints.txt), then run.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of torch by default (an unpinned or plain torch pulls gigabytes of CUDA
# wheels). On a GPU machine: `make TORCH_SPEC=torch==2.13.0 test`.
TORCH_VERSION := $(shell grep -E '^torch==' constraints.txt | cut -d= -f3)
TORCH_SPEC    ?= torch==$(TORCH_VERSION)+cpu
TORCH_INDEX   ?= https://download.pytorch.org/whl/cpu
STAMP  := $(VENV)/.installed

.PHONY: test bench bench-standard bench-mesh bench-peers notebooks lint format clean

# keras-hub (the keras benchmark peer) is installed without its requirements: it requires
# tensorflow-text, and so TensorFlow (gigabytes), which its BertBackbone never imports on the
# JAX or torch backend. The requirements BertBackbone does import (keras, regex, tokenizers)
# come with the peers extra of .[dev]; nothing installs TensorFlow.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" \
	  || $(PY) -m pip install --quiet --extra-index-url $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps -c constraints.txt keras-hub
	touch $(STAMP)

# Tests run in TEST_WORKERS processes (pytest-xdist); each loads torch and JAX, about 2 GiB.
# The 20 slowest are listed at the end, to keep the suite fast as it grows.
TEST_WORKERS ?= 2

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n $(TEST_WORKERS) --durations=20

bench: $(STAMP)
	$(PY) -m benchmarks

# The standard suite into benchmarks/results/cpu-standard. The committed rows (86, about 20
# minutes on 2 cores) predate flash in the suite; it now runs 116, the flash ones slower.
bench-standard: $(STAMP)
	$(PY) -m benchmarks --suite standard --device cpu --out benchmarks/results/cpu-standard

# Ours against transformers' BertModel and keras-hub's BertBackbone (JAX and torch backends):
# the committed CPU results benchmarks/results/cpu-peers.
bench-peers: $(STAMP)
	$(PY) -m benchmarks --suite peers --device cpu --repeats 3 --out benchmarks/results/cpu-peers

# The train step on device meshes beside one device (on a CPU the devices share its cores:
# overhead, not speedup).
bench-mesh: $(STAMP)
	$(PY) -m benchmarks --suite mesh --mesh data=2 --mesh model=2 --mesh data=2,fsdp --out bench-out/mesh

# The tour: execute notebooks/*.ipynb from scratch in a fresh kernel each and write the outputs
# back (the committed outputs are what this produces; about two minutes on 2 quiet cores).
notebooks: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m notebooks.execute

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis bench-out
