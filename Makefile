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
lint: $(BUF) deploy-check ## Static checks alone: rustfmt, clippy -D warnings, buf lint/format, Dockerfile, manifests
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
