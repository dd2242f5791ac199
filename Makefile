# taphook: `make demo` runs the demo on its built-in defaults, `make test`
# runs the tests. Both install what a fresh Debian machine lacks first.

CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export DEBIAN_FRONTEND := noninteractive

.PHONY: demo test prereqs test-prereqs build lint bench check-rules

## Install build prerequisites: cmake (Pingora builds zlib-ng with it).
prereqs:
	@command -v cmake >/dev/null 2>&1 || { \
	  echo "installing cmake (needed to build Pingora's zlib-ng)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq cmake >/dev/null; }
	@command -v $(CARGO) >/dev/null 2>&1 || { echo "cargo not found: install Rust (rustup)"; exit 1; }

## Test tools: promtool (checks the /metrics exposition).
test-prereqs:
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing prometheus (for promtool)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

build: prereqs
	$(CARGO) build

## Run the demo: reference importer + taphook + receiver, scripted session.
demo: prereqs
	$(CARGO) run --quiet -- demo

## Lint, build and run every test (unit, integration, JSON-logic suite).
test: prereqs test-prereqs lint
	$(CARGO) test --all-targets
	$(CARGO) run --quiet -- check rules/

lint: prereqs
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --quiet -- -D warnings

## Benchmarks: criterion micro benchmarks, the load harness (wrk: direct,
## nginx, taphook), delivery throughput and end-to-end latency, then the
## plots. Tables land in target/bench/ (load.md, delivery.md), plots in
## docs/img/.
bench: prereqs
	$(CARGO) bench --bench pipeline
	SUDO=$(SUDO) bash benches/load/run.sh
	$(CARGO) bench --bench delivery
	@python3 -c "import matplotlib" 2>/dev/null || pip install -q matplotlib || echo "matplotlib not installed: plots skipped"
	python3 benches/load/plot.py || echo "plots skipped"

check-rules: build
	$(CARGO) run --quiet -- check rules/
