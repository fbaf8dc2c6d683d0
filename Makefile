# RepLens: two commands.
#   make demo   venv + demo folder + embeddings (offline default encoder) + the app on :8501
#   make test   venv + the whole test suite (unit, AppTest, real-browser end-to-end)
SHELL := /bin/bash
PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DATASET ?= demo
DEMO_GENERATED := cache/demo-generated
PORT ?= 8501
# Where `make demo` listens: this machine only. REPLENS_ADDRESS=0.0.0.0 serves the network (README, "Serving on a network").
REPLENS_ADDRESS ?= 127.0.0.1
DEFAULT_ENCODER = $$($(PY) -c "from core.encoders import DEFAULT_ENCODER; print(DEFAULT_ENCODER)")
# pip prints one warning per package for this image's unused local indexes; keep the log readable.
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
# Filters those lines but keeps pip's own exit status (pipefail; grep's "nothing left" is fine).
QUIET_PIP := { grep -v "is ignored: it is neither" || true; }

.PHONY: venv test lint typecheck screenshot demo demo-data browser wordnet bench clean-cache help

help:
	@echo "make demo   # install, embed the demo folder, serve http://127.0.0.1:$(PORT) (this machine only)"
	@echo "make test   # install and run every test (unit, AppTest, browser)"

# requirements.txt pins what the dev/CI image installs from local disk; the package itself
# (pyproject.toml: the `replens` command, entry points for plug-ins) is installed editable on top.
$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	set -o pipefail; $(PIP) --upgrade pip 2>&1 | $(QUIET_PIP)
	set -o pipefail; $(PIP) -r requirements.txt 2>&1 | $(QUIET_PIP)
	set -o pipefail; $(PIP) --no-deps -r requirements-nodeps.txt 2>&1 | $(QUIET_PIP)
	set -o pipefail; $(PIP) --no-deps --no-build-isolation -e . 2>&1 | $(QUIET_PIP)
	touch $(STAMP)

venv: $(STAMP)

# WordNet 3.0 (Debian's wordnet-base): the hierarchy the imagenet labeller rolls ImageNet classes up.
wordnet:
	@test -f /usr/share/wordnet/data.noun || { \
	  echo "installing Debian's wordnet-base (WordNet 3.0) for ImageNet concept labels"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wordnet-base; }

# Debian's Chromium drives the browser tests (Playwright cannot download its own here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

# The rules that check themselves: lint and format (ruff), types over core/ (mypy), then every
# test, the architecture tests among them.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy

test: venv browser wordnet demo-data lint typecheck
	$(PY) -m pytest

# Refreshes the README's screenshot (docs/map.png) from the end-to-end browser test; `make test`
# never writes tracked files.
screenshot: venv browser
	REPLENS_UPDATE_SCREENSHOT=1 $(PY) -m pytest -q tests/test_e2e.py

# Tux Paint's stamps (796 captioned PNGs in category folders) when apt can install them,
# else a generated set. Nothing is downloaded at run time.
demo-data: venv
	@if [ ! -d /usr/share/tuxpaint/stamps ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends tuxpaint-stamps-default) \
	  || echo "tuxpaint-stamps-default not installable; using a generated demo set"; fi
	@if [ ! -d /usr/share/tuxpaint/stamps ] && [ ! -d $(DEMO_GENERATED) ]; then \
	  $(PY) -m core demo-data $(DEMO_GENERATED); fi

# The Map page's default UMAP layout is computed here too, so the first map opens at once.
demo: demo-data wordnet
	$(PY) -m core ingest $$( [ -d /usr/share/tuxpaint/stamps ] && echo /usr/share/tuxpaint/stamps || echo $(DEMO_GENERATED) ) --dataset $(DEMO_DATASET)
	$(PY) -m core embed --dataset $(DEMO_DATASET) --encoder $(DEFAULT_ENCODER)
	$(PY) -m core project --dataset $(DEMO_DATASET) --encoder $(DEFAULT_ENCODER)
	$(PY) -m streamlit run app.py --server.port $(PORT) --server.address $(REPLENS_ADDRESS)

bench: venv
	$(PY) bench/embed_bench.py
	$(PY) bench/eval_encoders.py

clean-cache:
	rm -rf cache/replens.duckdb cache/replens.duckdb.wal cache/thumbs cache/uploads cache/indexes cache/concepts cache/demo-generated
