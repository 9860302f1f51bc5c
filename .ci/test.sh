#!/usr/bin/env bash
# The whole test suite, as a new user or CI runs it on a fresh Debian/Ubuntu machine with Rust:
# installs what the tests need (nats-server and haproxy from the OS packages; Java 17 and Maven too when a
# Cassandra node is to be started and they are missing), then checks formatting and lints, starts
# the CQL server of the store tests (one Apache Cassandra 5.0 node, unless SCYLLA_URI names a
# ScyllaDB), and runs every test. Tests start their own nats-server on free ports. Then it renders
# and validates the Helm chart and the Kubernetes manifests (deploy/validate/validate.sh: helm,
# kustomize and kubeconform from the Go module proxy, cached), and builds and checks the container
# images from the binaries the tests built (deploy/images/build.sh with PROFILE=dev).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-tools.sh nats-server haproxy
echo "nats-server: $(nats-server --version)"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
deploy/test-local-cluster.sh
# The load harness's test measures latency (p99 at each step of a ramp): it runs before the
# Cassandra node starts, on a machine that the database's background work (flushes and
# compactions after the store tests) does not share.
cargo test -p chat-loadtest --locked

# The CQL server of the store tests: ScyllaDB when SCYLLA_URI (host:port) is given, else one
# Apache Cassandra 5.0 node started here for the run (jars cached between runs, its own directory
# and free ports; see docs/operations.md). The store tests read SCYLLA_URI or CASSANDRA_URI.
cassandra_dir=
stop_cassandra() {
  local rc=$?
  if [ -n "$cassandra_dir" ]; then
    deploy/cassandra/cassandra.sh stop "$cassandra_dir" || true
    if [ "$rc" -eq 0 ]; then rm -rf "$cassandra_dir"; else echo "Cassandra's files kept in $cassandra_dir" >&2; fi
  fi
  return "$rc"
}
if [ -n "${SCYLLA_URI:-}" ]; then
  unset CASSANDRA_URI
  echo "store tests: ScyllaDB at $SCYLLA_URI (SCYLLA_URI is set; no Cassandra node started)"
else
  deploy/cassandra/cassandra.sh install
  cassandra_dir="$(mktemp -d "${TMPDIR:-/tmp}/chat-cassandra.XXXXXX")"
  trap stop_cassandra EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  started=$(date +%s)
  if ! CASSANDRA_URI="$(deploy/cassandra/cassandra.sh start "$cassandra_dir")"; then
    echo "error: the Apache Cassandra node for the store tests did not start (its log: $cassandra_dir/cassandra.log)." >&2
    echo "error: the store tests need a CQL server: fix that, or set SCYLLA_URI=host:port to use a ScyllaDB." >&2
    exit 1
  fi
  export CASSANDRA_URI
  export CASSANDRA_TLS_CA="$cassandra_dir/tls/ca.pem"
  echo "store tests: Apache Cassandra at $CASSANDRA_URI (started in $(($(date +%s) - started)) s; set SCYLLA_URI to use ScyllaDB instead)"
fi
cargo test --workspace --exclude chat-loadtest --locked
deploy/validate/validate.sh
PROFILE=dev deploy/images/build.sh
deploy/images/check.sh
