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
lint: $(BUF) deploy-check ## Static checks alone: rustfmt, clippy -D warnings, buf lint/format, manifests
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(BUF) lint proto
	$(BUF) format --diff --exit-code proto

# kubernetes-validate (PyPI, pinned) checks rendered manifests against the API schemas offline.
KUBE_VALIDATE := target/tools/venv/bin/kubernetes-validate
$(KUBE_VALIDATE):
	python3 -m venv target/tools/venv
	target/tools/venv/bin/pip install --quiet --disable-pip-version-check kubernetes-validate==1.37.0

.PHONY: deploy-check
deploy-check: $(KUBE_VALIDATE) ## Render the Kubernetes manifests and validate them (strict, 1.30 and 1.33)
	@mkdir -p target/deploy
	kubectl kustomize deploy/kustomize/base > target/deploy/base.yaml
	kubectl kustomize deploy/kustomize/tests > target/deploy/all-components.yaml
	$(KUBE_VALIDATE) --strict --quiet -k 1.30 target/deploy/base.yaml target/deploy/all-components.yaml
	$(KUBE_VALIDATE) --strict --quiet -k 1.33 target/deploy/base.yaml target/deploy/all-components.yaml

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
	$(CARGO) bench -p relay-intake --bench submit
	$(CARGO) bench -p relay-availability --bench ingest
	$(CARGO) bench -p relay-routing --bench assign
	$(CARGO) bench --locked -p relay-directory --bench directory

.PHONY: dev
dev: ## Run the whole suite locally on embedded storage (relay dev), no server needed
	$(CARGO) run --bin relay -- dev

.PHONY: demo
demo: ## relay dev, a loaded directory and a few hours of simulated calls, ending with a report
	scripts/demo.sh

.PHONY: clean
clean: ## Remove build output
	$(CARGO) clean
