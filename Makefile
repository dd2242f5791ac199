# taphook: `make demo` runs the demo on its built-in defaults, `make test`
# runs the tests. Both install what a fresh Debian machine lacks first.

CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export DEBIAN_FRONTEND := noninteractive

.PHONY: demo test prereqs test-prereqs build lint bench check-rules check-alerts check-deploy fuzz

## Install build prerequisites: cmake (Pingora builds zlib-ng with it).
prereqs:
	@command -v cmake >/dev/null 2>&1 || { \
	  echo "installing cmake (needed to build Pingora's zlib-ng)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq cmake >/dev/null; }
	@command -v $(CARGO) >/dev/null 2>&1 || { echo "cargo not found: install Rust (rustup)"; exit 1; }

## Test tools: promtool (checks the /metrics exposition and the alert
## rules), nats-server (the JetStream backend's tests start their own,
## on loopback; Debian's package also enables a service, which we stop),
## Chromium with chromedriver (the console's browser tests drive a
## headless Chromium on loopback; nothing downloads a browser build), and
## a real importer from PyPI, datasette-upload-csvs at pinned versions in a
## venv under /tmp/importers (tests/walkthrough.rs plays the README's
## walkthrough against it), the official AsyncAPI parser from npm
## (tests/catalog.rs runs it on the catalog taphook generates), and
## rabbitmq-server and redis-server (tests/destinations.rs starts its own,
## on loopback; Debian's services are stopped).
test-prereqs:
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || { \
	  echo "installing chromium and chromium-driver (for the console's browser tests)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing prometheus (for promtool)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@command -v nats-server >/dev/null 2>&1 || { \
	  echo "installing nats-server (for the JetStream backend's tests)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends nats-server >/dev/null; \
	  $(SUDO) systemctl disable --now nats-server >/dev/null 2>&1 || true; }
	@{ command -v rabbitmq-server && command -v redis-server; } >/dev/null 2>&1 || { \
	  echo "installing rabbitmq-server and redis-server (the destination tests start their own, on loopback)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends rabbitmq-server redis-server >/dev/null; \
	  $(SUDO) systemctl disable --now rabbitmq-server redis-server >/dev/null 2>&1 || true; }
	@{ command -v curl && command -v openssl; } >/dev/null 2>&1 || { \
	  echo "installing curl and openssl (the TLS and HTTP/2 tests speak through curl; openssl makes an RSA key)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends curl openssl >/dev/null; }
	@command -v wrk >/dev/null 2>&1 || { \
	  echo "installing wrk (the upgrade test runs it through an upgrade)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends wrk >/dev/null; }
	@python3 -c 'import ensurepip, venv' 2>/dev/null || { \
	  echo "installing python3-venv (for the real importer the walkthrough test runs)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null; }
	bash tests/data/importers/datasette-upload-csvs/setup.sh
	@command -v npm >/dev/null 2>&1 || { \
	  echo "installing npm (the catalog test runs the official AsyncAPI parser)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends npm >/dev/null; }
	@test -e target/asyncapi-parser/node_modules/@asyncapi/parser/package.json || { \
	  echo "installing @asyncapi/parser 3.6.6 (npm) into target/asyncapi-parser"; \
	  mkdir -p target/asyncapi-parser && npm install --silent --no-audit --no-fund --prefix target/asyncapi-parser @asyncapi/parser@3.6.6 >/dev/null; }

build: prereqs
	$(CARGO) build

## Run the demo: reference importer + taphook + receiver, scripted session.
demo: prereqs
	$(CARGO) run --quiet -- demo

## Lint, build and run every test (unit, integration, JSON-logic suite),
## then the shipped rules' own tests (taphook test rules/tests/).
test: prereqs test-prereqs lint check-alerts check-deploy
	$(CARGO) test --all-targets
	$(CARGO) run --quiet -- check rules/
	$(CARGO) run --quiet -- test --rules rules rules/tests/

## Offline checks of deploy/: Kubernetes manifests (strict schemas, the
## kustomize output, the ServiceMonitor's CRD schema), the configs with
## `taphook check`, the systemd unit (systemd-analyze), the Dockerfile
## (hadolint), and a self-test that broken copies fail. See deploy/check.sh.
check-deploy: prereqs
	bash deploy/check.sh

lint: prereqs
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --quiet -- -D warnings

## Benchmarks: criterion micro benchmarks, the load harness (wrk: direct,
## nginx, taphook), the efficiency harness (the receiver gone, then back:
## drops, RSS per pending delivery, drain rate, CPU per event; BIN and
## BASELINE_BIN compare two builds), delivery throughput and end-to-end
## latency, the embedded store against NATS JetStream with 1 to 3 replicas
## (needs nats-server: test-prereqs installs it), then the plots. Tables
## land in target/bench/ (load.md, efficiency.md, delivery.md,
## jetstream.md), plots in docs/img/.
bench: prereqs test-prereqs
	$(CARGO) bench --bench pipeline
	SUDO=$(SUDO) bash benches/load/run.sh
	SUDO=$(SUDO) bash benches/load/efficiency.sh
	SUDO=$(SUDO) bash benches/load/tls.sh
	SUDO=$(SUDO) bash benches/load/traces.sh
	SUDO=$(SUDO) bash benches/load/destinations.sh
	$(CARGO) bench --bench delivery
	$(CARGO) bench --bench jetstream
	@python3 -c "import matplotlib" 2>/dev/null || pip install -q matplotlib || echo "matplotlib not installed: plots skipped"
	python3 benches/load/plot.py || echo "plots skipped"

## Fuzzing: coverage-guided (cargo-fuzz, libFuzzer) on stable Rust, so
## without a sanitizer (-s none: AddressSanitizer needs nightly, and the
## code under test is safe Rust). Each target in fuzz/ runs FUZZ_SECONDS
## (default 30) from its seed corpus fuzz/corpus/<target>; inputs it
## adds go to fuzz/work/<target>, an input slower than FUZZ_TIMEOUT
## seconds counts as a crash, and a crash fails the run with its input
## in fuzz/artifacts/<target>/.
FUZZ_SECONDS ?= 30
FUZZ_TIMEOUT ?= 10
FUZZ_TARGETS ?= exchange multipart jwt routes rules
fuzz: prereqs
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	$(CARGO) fuzz build -s none
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/work/$$t; \
	  echo "== fuzz $$t: $(FUZZ_SECONDS)s"; \
	  $(CARGO) fuzz run -s none $$t fuzz/work/$$t fuzz/corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -timeout=$(FUZZ_TIMEOUT) -rss_limit_mb=2048 \
	    -print_final_stats=1 || exit 1; \
	done

## Prometheus rules: syntax (promtool check rules) and unit tests
## (promtool test rules: every alert fires and stays quiet where it should).
check-alerts: test-prereqs
	promtool check rules deploy/prometheus/*.yml
	promtool test rules deploy/prometheus/tests/*.yml

check-rules: build
	$(CARGO) run --quiet -- check rules/
	$(CARGO) run --quiet -- test --rules rules rules/tests/
