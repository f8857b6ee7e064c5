# pixelrouter: `make demo` serves the demo on http://127.0.0.1:8000, `make test` runs the suite
# (`make test-fast` the part that starts no server, browser or client).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; on a GPU machine install the torch for your CUDA first
# (e.g. `make install TORCH=torch`), or use your own environment.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

# The chart library of the web pages, vendored from the npm registry by `make vendor`
# (pinned version and the registry's sha512 integrity of its tarball).
CHARTJS_VERSION := 4.5.1
CHARTJS_INTEGRITY := sha512-GIjfiT9dbmHRiYi6Nl2yFCq7kkwdkp1W/lp2J99rX0yo9tgJGn3lKQATztIjb5tVtevcBtIdICNWqlq5+E8/Pw==
WEB_STATIC := src/pixelrouter/web/static
VENDOR_TMP := build/vendor

# The pinned Node clients of the client matrix (tests/e2e/test_clients_node.py), installed from
# clients/node/package-lock.json.
NODE_CLIENTS := clients/node
NODE_STAMP := $(NODE_CLIENTS)/node_modules/.installed

.PHONY: install demo serve test test-fast lint format bench bench-gpu clean vendor browser clients-node pgbouncer

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[engine,dev,clients]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/pixelrouter serve --demo --host $(HOST) --port $(PORT)

serve: $(STAMP)
	$(BIN)/pixelrouter serve --host $(HOST) --port $(PORT)

test: $(STAMP) browser clients-node pgbouncer
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:cacheprovider

# Everything that starts no other program: no `pixelrouter serve`, browser, client program or
# benchmark script (the `processes` marker, tests/conftest.py). PostgreSQL is still used.
test-fast: $(STAMP) pgbouncer
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m "not processes"

$(NODE_STAMP): $(NODE_CLIENTS)/package.json $(NODE_CLIENTS)/package-lock.json
	npm ci --prefix $(NODE_CLIENTS) --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# Without npm the Node client tests skip loudly (and fail under CI=true).
clients-node:
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory $(NODE_STAMP); \
	else echo "make clients-node: npm is missing; tests/e2e/test_clients_node.py will skip"; fi

# The browser tests (tests/web) drive Debian's chromium through Playwright; never a browser
# download. Without apt-get (or as a non-root user) this says so and the tests skip loudly.
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -q && apt-get install -y -q --no-install-recommends chromium) \
			|| echo "make browser: could not install chromium; the browser tests will skip"; \
	else \
		echo "make browser: chromium is missing and apt-get is unavailable (or not root):" \
			"install Debian's chromium to run tests/web"; \
	fi

# The race and restart tests also run through Debian's PgBouncer in transaction pooling mode
# (tests/pgbouncer.py), as does `bench/billing.py --pgbouncer`. Without it they skip loudly.
pgbouncer:
	@if command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -q && apt-get install -y -q --no-install-recommends pgbouncer) \
			|| echo "make pgbouncer: could not install pgbouncer; the PgBouncer tests will skip"; \
	else \
		echo "make pgbouncer: pgbouncer is missing and apt-get is unavailable (or not root):" \
			"install Debian's pgbouncer to run the PgBouncer tests"; \
	fi

# Reproduces $(WEB_STATIC)/chart.umd.js byte for byte from the npm registry.
vendor:
	rm -rf $(VENDOR_TMP) && mkdir -p $(VENDOR_TMP)
	npm pack --silent chart.js@$(CHARTJS_VERSION) --pack-destination $(VENDOR_TMP) >/dev/null
	$(PYTHON) -c 'import base64, hashlib, sys; \
		got = "sha512-" + base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode(); \
		sys.exit(0 if got == sys.argv[2] else "chart.js tarball integrity mismatch: " + got)' \
		$(VENDOR_TMP)/chart.js-$(CHARTJS_VERSION).tgz "$(CHARTJS_INTEGRITY)"
	tar -xzf $(VENDOR_TMP)/chart.js-$(CHARTJS_VERSION).tgz -C $(VENDOR_TMP) \
		package/dist/chart.umd.js package/LICENSE.md
	cp $(VENDOR_TMP)/package/dist/chart.umd.js $(WEB_STATIC)/chart.umd.js
	cp $(VENDOR_TMP)/package/LICENSE.md $(WEB_STATIC)/chart.js-LICENSE.md
	@echo "vendored chart.js $(CHARTJS_VERSION) into $(WEB_STATIC)/"

lint: $(STAMP)
	$(BIN)/ruff check src tests bench clients/python
	$(BIN)/ruff format --check src tests bench clients/python

format: $(STAMP)
	$(BIN)/ruff format src tests bench clients/python
	$(BIN)/ruff check --fix src tests bench clients/python

bench: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python bench/engine_demo.py

# klein 4B's real architecture with random weights (nothing downloaded), bf16 then each speed
# option the GPU supports; needs a CUDA torch (`make install TORCH=torch`). Writes
# build/bench-gpu.json and prints a table, in under 8 minutes.
bench-gpu: $(STAMP)
	$(BIN)/python bench/gpu.py --json build/bench-gpu.json

clean:
	rm -rf $(VENV) build dist src/*.egg-info test-artifacts $(NODE_CLIENTS)/node_modules  # never the data: .pixelrouter holds keys and the ledger
