#!/usr/bin/env bash
# The whole test suite, as a new user or CI runs it on a fresh Debian/Ubuntu machine with Rust:
# installs what the tests need (nats-server from the OS packages), then checks formatting and
# lints, and runs every test. Tests start their own nats-server on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-nats.sh
echo "nats-server: $(nats-server --version)"
if [ -z "${SCYLLA_URI:-}" ]; then
  echo "note: SCYLLA_URI is not set: ScyllaDB tests are skipped (there is no ScyllaDB store yet)"
fi
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
deploy/test-local-cluster.sh
cargo test --workspace --locked
