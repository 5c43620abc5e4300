# The two commands a new user needs: `make demo` and `make test`.
# Both create .venv on first use; the stamp makes a second run install nothing.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONHASHSEED := 0

.PHONY: install demo test test-fast bench bench-large lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24"
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pipeline.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --timeout=900 tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

# 20M candidates, text stages only (~20+ minutes here); not part of `make bench` or CI.
bench-large: $(STAMP)
	$(BIN)/python bench/bench_scale_out.py --only new --sizes 20000000 \
		--plot docs/img/scale_out_rss.png

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf build *.egg-info .pytest_cache demo-out
