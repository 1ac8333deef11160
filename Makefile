# make serve   - install if needed, then serve configs/cpu.yaml, fitted to this machine, on http://127.0.0.1:8000
#                (gRPC on 9000); SERVE_FLAGS=--dashboard adds Ray's dashboard and Ray's default intervals
# make test    - install if needed, then run the whole test suite
# make test-fast - the fast subset for the edit loop (in process, under a minute): pytest -m fast
# make screenshots - refresh the README's pictures of the page (docs/screenshots), against the real service
# make install - create .venv and install the package with its test extras, Debian's Chromium
#                (with a CJK font) for the page's browser tests, and Debian's redis-server for the
#                result cache's tests against a real Redis
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/cpu.yaml
STAMP := $(VENV)/.installed
SYSTEM_PACKAGES := chromium fonts-wqy-zenhei redis-server
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-packages serve test test-fast screenshots

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

# Playwright drives the system's Chromium, and the Redis tests start their own redis-server:
# nothing is downloaded at test time.
system-packages:
	@installed=$$(dpkg-query -W -f='$${Status}\n' $(SYSTEM_PACKAGES) 2>/dev/null | grep -c '^install ok installed$$'); \
	[ "$$installed" = "$(words $(SYSTEM_PACKAGES))" ] || { \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES); }

install: $(STAMP) system-packages

serve: $(STAMP)
	$(PY) -m serve_app serve --config $(CONFIG) $(SERVE_FLAGS)

test: install
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m fast -q

screenshots: install
	SCREENSHOTS_DIR=docs/screenshots $(PY) -m pytest tests/test_page.py -q
