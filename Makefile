# Two commands do all the set-up: `make run` and `make test`.
# Everything the project installs for itself lands under target/ or static/node_modules.

SHELL := /bin/bash
CARGO ?= cargo

DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/orders
NATS_URL ?= nats://127.0.0.1:4222
export DATABASE_URL NATS_URL

.PHONY: run services build release test lint check-static check-deploy deps bench bench-chart soak fuzz image clean-services

## run: PostgreSQL and NATS (started privately when none answers), then the service (release build)
run: services release
	./target/release/order-service

## services: use PostgreSQL and NATS where they answer, else start private ones under target/services
services:
	@bash .ci/services.sh start

## clean-services: stop the private PostgreSQL and NATS that `make services` started
clean-services:
	@bash .ci/services.sh stop

build:
	$(CARGO) build --workspace --locked

release:
	$(CARGO) build --release --locked -p order-service

## test: formatting, lints, unit and integration tests, the page, the deployment files
test: deps services lint build check-static check-deploy
	$(CARGO) test --workspace --locked -- --test-threads=2
	@echo "make test: all checks passed"

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

check-static:
	bash static/check.sh

check-deploy:
	bash .ci/check-deploy.sh

## deps: what the tests need beyond Rust: Debian's chromium, the page's npm packages
deps:
	@bash .ci/deps.sh

## bench: the measured figures (not part of `make test`): target/bench/REPORT.md and bench.svg;
## sizes from BENCH_* variables (loadtest/bench.sh's head); a full-size run refreshes loadtest/bench.svg
bench: services
	bash loadtest/bench.sh

## bench-chart: loadtest/bench.svg (the README's chart) redrawn from the last run's target/bench/chart.json
## (the whole workspace is built, as bench.sh does: building loadtest alone unifies other features)
bench-chart:
	$(CARGO) build --release --locked --workspace
	./target/release/bench-chart target/bench/chart.json loadtest/bench.svg

## soak: SOAK_SECONDS (600) of mixed ingest and HTTP load on two release replicas, one
## restarted every 2 minutes; fails on growing memory or descriptors, an error or a lost order
soak: services
	$(CARGO) build --release --locked -p order-service -p pusher -p loadtest
	bash tests/soak.sh

## fuzz: FUZZ_SECONDS (60) of libFuzzer over order::validate, seeded with the canonical order
## (the nightly toolchain; installs cargo-fuzz under target/tools when it is missing)
FUZZ_SECONDS ?= 60
fuzz:
	@command -v cargo-fuzz >/dev/null || [ -x target/tools/bin/cargo-fuzz ] || \
		$(CARGO) install --locked cargo-fuzz --root target/tools
	mkdir -p target/fuzz/corpus target/fuzz/artifacts && cp testdata/model.json target/fuzz/corpus/
	PATH="$(CURDIR)/target/tools/bin:$$PATH" $(CARGO) +nightly fuzz run --fuzz-dir tests/fuzz \
		--target-dir target/fuzz validate target/fuzz/corpus -- \
		-max_total_time=$(FUZZ_SECONDS) -max_len=8192 -artifact_prefix=target/fuzz/artifacts/

## image: the container image, where a Docker engine runs
image:
	@if docker info >/dev/null 2>&1; then \
		docker build -t order-service:latest . ; \
	else \
		echo "make image: no Docker engine answers here (docker info failed); the Dockerfile is linted by make test"; \
		exit 1; \
	fi
