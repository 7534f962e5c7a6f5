# The two entry points: `make up` runs the local gateway, `make test` installs what the
# tests need and runs every check CI runs.
.PHONY: up test deps check lint unit bench bench-load bench-extauth bench-transform

up:
	scripts/up.sh

test: deps lint
	cargo test --workspace --all-targets

deps:
	scripts/install-test-deps.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

bench:
	cargo bench -p gatehouse-ratelimit -p gatehouse-transform

bench-load: deps
	scripts/bench-ratelimit.sh

bench-extauth: deps
	scripts/bench-extauth.sh

bench-transform: deps
	scripts/bench-transform.sh
