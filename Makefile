# The two entry points: `make up` runs the local gateway, `make test` installs what the
# tests need and runs every check CI runs.
.PHONY: up test deps check lint unit bench bench-load bench-extauth bench-transform bench-tracing fuzz chaos soak \
	images deploy-check

up:
	scripts/up.sh

test: deps lint
	cargo test --workspace --all-targets
	$(MAKE) deploy-check

# The deployment artifacts: images (built with podman from release binaries), docker-compose.yml
# (checked, then run for real on those images), the Helm chart and the integration manifests.
# Every tests/deploy/check_*.py, the images first.
deploy-check: deps
	@set -e; for check in tests/deploy/check_images.py $$(ls tests/deploy/check_*.py | grep -v check_images.py); do \
		echo "== $$check"; .venv/bin/python "$$check"; \
	done

# The images docker-compose.yml and the chart name, built here with podman (scripts/build-images.sh).
images: deps
	scripts/build-images.sh

deps:
	scripts/install-test-deps.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	protos/node_modules/.bin/buf lint protos

bench:
	cargo bench -p gatehouse-ratelimit -p gatehouse-transform

bench-load: deps
	scripts/bench-ratelimit.sh

bench-extauth: deps
	scripts/bench-extauth.sh

bench-transform: deps
	scripts/bench-transform.sh

bench-tracing: deps
	scripts/bench-tracing.sh

# Fuzzing, not part of `make test` or CI: every cargo-fuzz target in fuzz/ for FUZZ_SECONDS
# each (nightly toolchain; scripts/fuzz.sh installs cargo-fuzz). Fails if any target crashes.
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

# Faults under load (tests/tests/chaos.rs) against release builds of the services, one
# scenario at a time, printing each summary (RELIABILITY.md). `make test` runs the same
# scenarios, with the same assertions, on debug builds.
chaos: deps
	cargo build --release --bins
	GATEHOUSE_BIN_DIR=target/release CHAOS_REPORT=1 \
		cargo test -p gatehouse-testkit --test chaos -- --test-threads=1 --nocapture

# The full gateway at a steady rate for SOAK_MINUTES (tests/tests/soak.rs), release builds.
SOAK_MINUTES ?= 10
soak: deps
	cargo build --release --bins
	GATEHOUSE_BIN_DIR=target/release SOAK_MINUTES=$(SOAK_MINUTES) SOAK_REPORT=1 \
		cargo test -p gatehouse-testkit --test soak -- --nocapture
