# Two commands: `make test` and `make demo`. Each sets up what it needs on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch is pinned to the CPU build that installs from local disk here; a user's own CUDA
# torch satisfies the package's looser `torch>=2.1` requirement.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | md5sum | cut -c1-12)
QUICK ?=

.PHONY: test demo setup system-deps lint clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q -c constraints.txt -e ".[all,dev]"
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

setup: $(STAMP) system-deps

# Debian's Chromium for the dashboard's browser tests (Playwright cannot download browsers here).
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 || \
	  echo "warning: could not install chromium; browser tests will be skipped"; }

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup lint
	$(VENV)/bin/pytest -q

demo: $(STAMP)
	$(PY) -m collapsewatch demo $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) build dist *.egg-info
