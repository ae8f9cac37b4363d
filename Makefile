# The commands people type. `make test` is what CI runs (through .ci/run).
SHELL := /bin/bash
.DEFAULT_GOAL := help

BUF := node_modules/.bin/buf
CARGO ?= cargo
# nextest runs each test in its own process, in parallel across test binaries; fall back to
# cargo test where it is not installed.
TEST_RUNNER := $(shell if cargo nextest --version >/dev/null 2>&1; then echo "nextest run --no-fail-fast"; else echo "test --no-fail-fast"; fi)

export RELAY_TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres
export RELAY_TEST_REDIS_URL ?= redis://127.0.0.1:6379

.PHONY: help
help: ## List the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BUF): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $(BUF)

.PHONY: tools
tools: $(BUF) ## Install the pinned developer tools (buf, from npm)

.PHONY: lint
lint: $(BUF) deploy-check observability-check ## Static checks alone: rustfmt, clippy -D warnings, buf lint/format, Dockerfile, manifests, alerts
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(BUF) lint proto
	$(BUF) format --diff --exit-code proto

# kubernetes-validate (PyPI, pinned) checks rendered manifests against the API schemas offline;
# deploy/check/*.py (PyYAML, pinned, from the same venv) asserts what deploy/README.md promises.
KUBE_VALIDATE := target/tools/venv/bin/kubernetes-validate
DEPLOY_PY := target/tools/venv/bin/python
$(KUBE_VALIDATE):
	python3 -m venv target/tools/venv
	target/tools/venv/bin/pip install --quiet --disable-pip-version-check kubernetes-validate==1.37.0 pyyaml==6.0.4

RENDERS := base all-components example-managed-dependencies
.PHONY: deploy-check
deploy-check: $(KUBE_VALIDATE) ## Check the Dockerfile; render the manifests, validate them (1.30, 1.33), assert on them
	python3 deploy/check/dockerfile.py deploy/Dockerfile
	@mkdir -p target/deploy/schema
	kubectl kustomize deploy/kustomize/base > target/deploy/base.yaml
	kubectl kustomize deploy/kustomize/tests > target/deploy/all-components.yaml
	kubectl kustomize deploy/kustomize/examples/managed-dependencies > target/deploy/example-managed-dependencies.yaml
	@# Schema validation skips the PodMonitor kind only (a CRD: no schema offline). The validator
	@# merely warns on a kind it has no schema for; here that fails.
	@for f in $(RENDERS); do $(DEPLOY_PY) deploy/check/schema_input.py target/deploy/$$f.yaml target/deploy/schema/$$f.yaml || exit 1; done
	@for k in 1.30 1.33; do \
	  echo "kubernetes-validate --strict -k $$k target/deploy/schema/*.yaml"; \
	  out=$$($(KUBE_VALIDATE) --strict --quiet -k $$k $(RENDERS:%=target/deploy/schema/%.yaml) 2>&1); rc=$$?; \
	  [ -z "$$out" ] || echo "$$out"; \
	  if [ $$rc -ne 0 ] || grep -q "find schema" <<<"$$out"; then exit 1; fi; \
	done
	$(DEPLOY_PY) deploy/check/manifests.py target/deploy/base.yaml
	$(DEPLOY_PY) deploy/check/manifests.py --require NetworkPolicy --require PodMonitor \
	  --require PodDisruptionBudget --require HorizontalPodAutoscaler target/deploy/all-components.yaml
	$(DEPLOY_PY) deploy/check/manifests.py --require NetworkPolicy \
	  --expect-egress 10.20.0.5:5432 --expect-egress 10.20.1.5:6379 \
	  target/deploy/example-managed-dependencies.yaml

# Alert and recording rules (promtool from Debian's prometheus package, installed only when
# missing) and the dashboards: every metric they query is one the services create.
.PHONY: observability-check
observability-check: ## Check the Prometheus rules (promtool check and unit tests) and the dashboards
	@if ! command -v promtool >/dev/null; then \
	  echo "installing promtool (Debian: prometheus)"; \
	  timeout 600 $(SUDO) apt-get update -q >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive timeout 600 $(SUDO) apt-get install -y -q --no-install-recommends prometheus >/dev/null; \
	fi
	timeout 120 promtool check rules deploy/observability/rules.yaml
	cd deploy/observability && timeout 120 promtool test rules rules_test.yaml
	python3 deploy/observability/check.py

.PHONY: build
build: ## Build every crate, binary and test once
	$(CARGO) build --workspace --bins --locked
	$(CARGO) test --workspace --no-run --locked

.PHONY: check-servers
check-servers:
	@scripts/check-servers.sh

.PHONY: test
test: check-servers lint build ## Every test, against real PostgreSQL and Redis
	$(CARGO) $(TEST_RUNNER) --workspace --locked
	$(MAKE) report-check
	$(MAKE) examples
	$(MAKE) fuzz-eido

# --- Fault tests (issue 18) ------------------------------------------------------------------
# A Redis failover that loses acknowledged writes, kill -9 of each service in turn, a
# PostgreSQL outage and partition for the whole suite, each under load for about half a
# minute, with every guarantee checked afterwards and the counts printed; and 150 stalled
# stream watchers (memory, a healthy watcher's latency, resume and drop). Not part of `make
# test` (each is over 30 s); .ci/run calls it after `make test`. Each run is bounded by
# CHAOS_TIMEOUT. Measured on the loaded 2-core machine after `make test` built everything:
# failover about 25 s, kill about 35 s, pg_outage about 45 s, slow_consumer about 5 min, so
# about 7 min with the build reused; a run with stuck calls waits up to 2 min more per test.
CHAOS_TIMEOUT ?= 600
CHAOS_TEST := $(CARGO) test --locked -p relay-tests --features chaos

.PHONY: chaos
chaos: check-servers ## Fault tests under load: Redis failover, kill -9, PostgreSQL outage, stalled watchers (about 7 min once built)
	@command -v redis-server >/dev/null || { echo "make chaos needs redis-server on PATH (Debian: redis-server)"; exit 1; }
	$(CARGO) build --workspace --bins --locked
	$(CHAOS_TEST) --test failover --test kill --test cluster --test pg_outage --test slow_consumer --no-run
	timeout $(CHAOS_TIMEOUT) $(CHAOS_TEST) --test failover -- --nocapture
	timeout $(CHAOS_TIMEOUT) $(CHAOS_TEST) --test kill -- --nocapture
	@# Relay on a Redis Cluster of the test's own (3 primaries, a replica each): a slot moved
	@# and a primary killed under load, two routers with regions on every primary.
	timeout $(CHAOS_TIMEOUT) $(CHAOS_TEST) --test cluster -- --nocapture --test-threads 1
	timeout $(CHAOS_TIMEOUT) $(CHAOS_TEST) --test pg_outage -- --nocapture
	timeout $(CHAOS_TIMEOUT) $(CHAOS_TEST) --test slow_consumer -- --nocapture

# The program report in a real browser: `cargo test -p relay --test report` writes the HTML
# reports to target/tmp/report-check/, and scripts/report-check.sh opens them in headless
# Chromium (Debian's package, installed only when missing): no console error, every chart
# drawn, and a screenshot (report.png) beside each. Bounded: the install by INSTALL_TIMEOUT,
# each browser run by REPORT_CHECK_TIMEOUT seconds, the whole check by 300 s.
REPORT_CHECK_TIMEOUT ?= 60
.PHONY: report-check
report-check: ## Open the program report in headless Chromium; screenshot in target/tmp/report-check
	@if ! command -v chromium >/dev/null; then \
	  echo "installing chromium from Debian"; \
	  timeout $(INSTALL_TIMEOUT) $(SUDO) apt-get update -q >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive timeout $(INSTALL_TIMEOUT) $(SUDO) apt-get install -y -q --no-install-recommends chromium >/dev/null; \
	fi
	$(CARGO) test --locked -p relay --test report
	REPORT_CHECK_TIMEOUT=$(REPORT_CHECK_TIMEOUT) timeout 300 scripts/report-check.sh

# --- Client stubs and the CAD examples (issue 16) -------------------------------------------
# Everything comes from registries: protoc and the Go/Java plugins from Debian (installed only
# when missing), grpcio-tools from PyPI into a venv, ts-proto from npm (package.json).
STUBS := target/stubs
STUBS_VENV := target/tools/stubs-venv
STUBS_DEBS := protobuf-compiler protoc-gen-go protoc-gen-go-grpc protobuf-compiler-grpc-java-plugin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Bounds, so a hung install or example fails the build instead of stalling it.
INSTALL_TIMEOUT ?= 600
EXAMPLE_TIMEOUT ?= 120

$(STUBS_VENV)/bin/python: proto/requirements-stubs.txt
	rm -rf $(STUBS_VENV)
	python3 -m venv $(STUBS_VENV)
	timeout $(INSTALL_TIMEOUT) $(STUBS_VENV)/bin/pip install --quiet --disable-pip-version-check \
	  -r proto/requirements-stubs.txt
	@touch $@

.PHONY: stubs-tools
stubs-tools: $(BUF) $(STUBS_VENV)/bin/python
	@if ! command -v protoc >/dev/null || ! command -v protoc-gen-go >/dev/null \
	  || ! command -v protoc-gen-go-grpc >/dev/null || ! command -v grpc_java_plugin >/dev/null; then \
	  echo "installing $(STUBS_DEBS) from Debian"; \
	  timeout $(INSTALL_TIMEOUT) $(SUDO) apt-get update -q >/dev/null && \
	  timeout $(INSTALL_TIMEOUT) $(SUDO) apt-get install -y -q --no-install-recommends $(STUBS_DEBS) >/dev/null; \
	fi

.PHONY: stubs
stubs: stubs-tools ## Client stubs for Python, TypeScript (Node), Go and Java in target/stubs/<language>
	timeout 300 $(BUF) generate --template proto/buf.gen.yaml
	rm -rf $(STUBS)/python && mkdir -p $(STUBS)/python
	cd proto && timeout 300 ../$(STUBS_VENV)/bin/python -m grpc_tools.protoc -I. \
	  --python_out=../$(STUBS)/python --pyi_out=../$(STUBS)/python --grpc_python_out=../$(STUBS)/python \
	  $$(find relay -name '*.proto' | sort)
	@for lang in python ts go java; do \
	  printf '  %-7s %4d files in $(STUBS)/%s\n' $$lang $$(find $(STUBS)/$$lang -type f | wc -l) $$lang; done

# The examples run against `relay dev` on a free port base, each bounded by EXAMPLE_TIMEOUT.
PY_CAD_VENV := target/tools/python-cad-venv
$(PY_CAD_VENV)/bin/python: examples/python-cad/requirements.txt
	rm -rf $(PY_CAD_VENV)
	python3 -m venv $(PY_CAD_VENV)
	timeout $(INSTALL_TIMEOUT) $(PY_CAD_VENV)/bin/pip install --quiet --disable-pip-version-check \
	  -r examples/python-cad/requirements.txt
	@touch $@

examples/node-cad/node_modules/.package-lock.json: examples/node-cad/package.json examples/node-cad/package-lock.json
	cd examples/node-cad && timeout $(INSTALL_TIMEOUT) npm ci --no-audit --no-fund --loglevel=error
	@touch $@

.PHONY: examples
examples: stubs $(PY_CAD_VENV)/bin/python examples/node-cad/node_modules/.package-lock.json ## Run the Python and Node CAD examples against relay dev
	@# The same build as `make build`, so `make test` reuses it instead of rebuilding.
	$(CARGO) build --workspace --bins --locked
	timeout $$(( 5 * $(EXAMPLE_TIMEOUT) + 60 )) examples/run.sh target/debug/relay \
	  "timeout $(EXAMPLE_TIMEOUT) env PYTHONPATH=$(STUBS)/python $(PY_CAD_VENV)/bin/python examples/python-cad/cad.py" \
	  "timeout $(EXAMPLE_TIMEOUT) $(PY_CAD_VENV)/bin/python examples/python-cad/reflection_check.py" \
	  "timeout $(EXAMPLE_TIMEOUT) env PYTHONPATH=$(STUBS)/python $(PY_CAD_VENV)/bin/python examples/python-cad/boundary.py" \
	  "timeout $(EXAMPLE_TIMEOUT) node examples/node-cad/cad.js" \
	  "timeout $(EXAMPLE_TIMEOUT) node examples/node-cad/boundary.js"

# --- Fuzzing intake's EIDO HTTP endpoints (issue 16) ---------------------------------------
# schemathesis from PyPI, pinned, in a venv; driven by NENA's EIDO schema; time-bounded.
FUZZ_VENV := target/tools/fuzz-venv
FUZZ_EXAMPLES ?= 100
FUZZ_TIMEOUT ?= 240

$(FUZZ_VENV)/bin/schemathesis: tests/fuzz/requirements.txt
	rm -rf $(FUZZ_VENV)
	python3 -m venv $(FUZZ_VENV)
	timeout $(INSTALL_TIMEOUT) $(FUZZ_VENV)/bin/pip install --quiet --disable-pip-version-check \
	  -r tests/fuzz/requirements.txt
	@touch $@

.PHONY: fuzz-eido
fuzz-eido: $(FUZZ_VENV)/bin/schemathesis ## Fuzz POST /EIDO and GET /EIDO/{id} on relay dev (schemathesis, bounded)
	@# The same build as `make build`, so `make test` reuses it instead of rebuilding.
	$(CARGO) build --workspace --bins --locked
	timeout $$(( $(FUZZ_TIMEOUT) + 60 )) env FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_TIMEOUT=$(FUZZ_TIMEOUT) \
	  scripts/fuzz-eido.sh target/debug/relay $(FUZZ_VENV)/bin/schemathesis

# --- Fuzzing the parsers and validators in process (issue 18) -------------------------------
# cargo-fuzz (libFuzzer) targets in fuzz/ (its own Cargo.lock, outside the workspace); see
# docs/fuzzing.md. cargo-fuzz needs nightly flags: the stable toolchain takes them with
# RUSTC_BOOTSTRAP=1, and the targets build without a sanitizer (the code forbids unsafe; panics,
# overflow checks and assertions are what find bugs). cargo-fuzz comes from crates.io, pinned,
# installed only when missing, bounded by INSTALL_TIMEOUT.
FUZZ_TARGETS := protocol hsds_zip hsds_csv page_token schedule validators
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 15
CARGO_FUZZ_VERSION := 0.13.2
FUZZ_BUILD_TIMEOUT ?= 1800

.PHONY: fuzz-tools
fuzz-tools:
	@if ! $(CARGO) fuzz --version 2>/dev/null | grep -q " $(CARGO_FUZZ_VERSION)"; then \
	  echo "installing cargo-fuzz $(CARGO_FUZZ_VERSION) from crates.io"; \
	  timeout $(INSTALL_TIMEOUT) $(CARGO) install --quiet --locked cargo-fuzz --version $(CARGO_FUZZ_VERSION); \
	fi

.PHONY: fuzz-build
fuzz-build: fuzz-tools ## Build every fuzz target (fuzz/, --locked)
	@# cargo fuzz has no --locked: this fails when fuzz/Cargo.lock would have to change.
	cd fuzz && $(CARGO) metadata --locked --format-version 1 >/dev/null
	cd fuzz && RUSTC_BOOTSTRAP=1 CARGO_INCREMENTAL=0 timeout $(FUZZ_BUILD_TIMEOUT) \
	  $(CARGO) fuzz build --sanitizer none

.PHONY: fuzz
fuzz: fuzz-build ## Run each fuzz target for FUZZ_SECONDS (default 60); fails on a crash
	fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

.PHONY: fuzz-smoke
fuzz-smoke: fuzz-build ## Each fuzz target for FUZZ_SMOKE_SECONDS (15 s); fails on a crash
	fuzz/run.sh $(FUZZ_SMOKE_SECONDS) $(FUZZ_TARGETS)

.PHONY: bench
bench: ## Benchmarks against real servers; figures go to docs/benchmarks.md
	$(CARGO) bench -p relay-intake --bench submit
	@# The program report over 1,000,000 incidents (RELAY_REPORT_BENCH_INCIDENTS); goal < 10 s.
	timeout 1800 $(CARGO) bench -p relay-intake --bench report
	$(CARGO) bench -p relay-availability --bench ingest
	$(CARGO) bench -p relay-routing --bench assign
	@# RECOMMEND with regions on a Redis Cluster's 3 primaries against one Redis (5 runs, ratios).
	timeout 900 $(CARGO) bench -p relay-routing --bench assign -- cluster
	$(CARGO) bench --locked -p relay-directory --bench directory
	@# TLS and token checks on against plaintext without auth, in the same run (5 runs each,
	@# alternating): routing RECOMMEND and intake SubmitIncident; goal p99 ratio <= 1.3.
	timeout 900 $(CARGO) bench --locked -p relay-routing --bench assign -- security
	timeout 900 $(CARGO) bench --locked -p relay-intake --bench submit -- security

.PHONY: dev
dev: ## Run the whole suite locally on embedded storage (relay dev), no server needed
	$(CARGO) run --bin relay -- dev

.PHONY: demo
demo: ## relay dev, a loaded directory and a few hours of simulated calls, ending with a report
	scripts/demo.sh

.PHONY: clean
clean: ## Remove build output
	$(CARGO) clean
