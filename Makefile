# sweeper: `make demo` and `make test` set everything up on a fresh Debian/Python 3.11 machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sweeper-installed
DOCS_STAMP := $(VENV)/.sweeper-docs-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
DEMO   ?= search_spaces/fmnist_demo.yaml

export RAY_USAGE_STATS_ENABLED=0
export WANDB_SILENT=true

.PHONY: setup data test test-slow test-all demo docs bench clean

setup: $(STAMP)

# torch/torchvision resolve to the wheels on local disk (see pyproject ranges); torchattacks (the AutoAttack-class
# evaluation methods, sweeper/science/aa.py, and a test reference) pins an old `requests`, so it goes in without its dependencies.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps 'torchattacks==3.5.1'
	touch $(STAMP)

# Fashion-MNIST from Debian's package when apt is there (2 s); otherwise sweeper falls back to torchvision.
data:
	@if [ -f $(FMNIST) ]; then echo "Fashion-MNIST: $(FMNIST)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null; echo "Fashion-MNIST installed"; \
	else echo "dataset-fashion-mnist not installable here; sweeper will try torchvision's download"; fi

test: setup data
	$(BIN)/python -m pytest -q

# the slow tests (W&B failure retries, Ctrl-C/SIGTERM runs, Jobs API submissions, the autoscaler and spot reclaims,
# node, trial and driver losses, two engines sharing a store): CI runs them after `make test`
test-slow: setup data
	$(BIN)/python -m pytest -q -m slow

test-all: setup data
	$(BIN)/python -m pytest -q -m ''

demo: setup data
	$(BIN)/sweeper run $(DEMO)
	$(BIN)/sweeper report $(DEMO)

# The docs site (docs/, mkdocs.yml) into site/: open site/index.html. The `docs` extra (MkDocs, Material for MkDocs,
# mkdocstrings) is installed once, like `make setup` (the stamp; a changed pyproject.toml installs it again).
# --strict: a warning (a broken link, anchor or reference, a page missing from the nav) fails the build.
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: setup data
	$(BIN)/python benchmarks/bench_pgd.py
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_shards.py
	$(BIN)/python benchmarks/bench_tune.py
	$(BIN)/python benchmarks/bench_store.py
	$(BIN)/python benchmarks/bench_inversion.py
	$(BIN)/python benchmarks/bench_scale.py
	@echo "bench: figures written to benchmarks/results/README.md (one table per benchmark) and benchmarks/results/<bench>.json"

clean:
	rm -rf store build site *.egg-info .pytest_cache
