# Two commands do everything from a fresh clone:
#   make demo   set up .venv and train the offline quickstart
#   make test   set up .venv and run the test suite
#   make bench  set up .venv and run the quick benchmark (scripts/benchmark.py)
# The venv is reused; it is reinstalled only when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench install browser clean

demo: $(STAMP)
	$(BIN)/python -m symtrain fit --config configs/quickstart.yaml

test: $(STAMP) browser
	$(BIN)/ruff check symtrain tests scripts
	$(BIN)/python -m pytest -n 2

bench: $(STAMP)
	mkdir -p runs
	$(BIN)/python scripts/benchmark.py --quick --json runs/benchmark.json

install: $(STAMP)

# escnn needs py3nj, which compiles Fortran: install gfortran when missing (as root), or say so.
$(STAMP): pyproject.toml
	@command -v gfortran >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing gfortran (needed to build py3nj for escnn)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gfortran >/dev/null; \
	  else \
	    echo "error: escnn needs a Fortran compiler to build py3nj: install gfortran (e.g. sudo apt-get install gfortran) and run make again" >&2; \
	    exit 1; \
	  fi; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The report test opens the HTML report in headless Chromium: install it when missing (as root).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (the report test renders the HTML report headless)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "error: the report test needs Chromium: install it (e.g. sudo apt-get install chromium) and run make again" >&2; \
	    exit 1; \
	  fi; }

clean:
	rm -rf $(VENV) runs .pytest_cache
