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
lint: $(BUF) ## Static checks alone: rustfmt, clippy -D warnings, buf lint and buf format
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(BUF) lint proto
	$(BUF) format --diff --exit-code proto

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

.PHONY: bench
bench: ## Benchmarks against real servers; figures go to docs/benchmarks.md
	$(CARGO) bench --locked -p relay-directory --bench directory

.PHONY: dev
dev: ## Run the whole suite locally on embedded storage (relay dev)
	$(CARGO) run --release --bin relay -- dev

.PHONY: demo
demo: ## relay dev plus a few minutes of simulated calls, ending with a report
	$(CARGO) run --release --bin relay -- simulate

.PHONY: clean
clean: ## Remove build output
	$(CARGO) clean
