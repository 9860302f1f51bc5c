#!/usr/bin/env bash
# The whole test suite, as a new user or CI runs it on a fresh Debian/Ubuntu machine with Rust:
# installs what the tests need (nats-server and haproxy from the OS packages; Java 17 and Maven too when a
# Cassandra node is to be started and they are missing), then checks formatting, lints and that
# no crate's modules import each other in a loop (.ci/module-cycles.py), starts
# the CQL server of the store tests (one Apache Cassandra 5.0 node, unless SCYLLA_URI names a
# ScyllaDB), and runs every test. Tests start their own nats-server on free ports. Then a real
# Prometheus (OS package) scrapes a local cluster, and a real Jaeger (Go module proxy) takes its
# traces (deploy/observability/test-*.sh). Then it renders
# and validates the Helm chart and the Kubernetes manifests (deploy/validate/validate.sh: helm,
# kustomize and kubeconform from the Go module proxy, cached), and builds and checks the container
# images from the binaries the tests built (deploy/images/build.sh with PROFILE=dev).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo "test.sh: $* (${SECONDS} s in)"; }
deploy/install-tools.sh nats-server haproxy
echo "nats-server: $(nats-server --version)"

# What is downloaded and built for later steps starts at once, at the lowest priority, on the CPU
# that the compiler and the tests leave idle: the deployment tools (Go builds of helm, kustomize
# and kubeconform, minutes of CPU when not cached), Jaeger (the trace test's OTLP receiver, also a
# Go build) and Cassandra's jars (Maven Central).
# `background NAME COMMAND…` starts one in a process group of its own; `await NAME` waits for
# it and fails with its output; `hold` and `resume` stop and continue them all (SIGSTOP, SIGCONT)
# around the load harness's latency test, which measures the machine.
declare -A pids logs
# (A process group, not a session: the kernel's autogroup scheduling shares the CPU fairly
# between sessions whatever their nice value, so a new session would take half the machine.)
background() {
  logs[$1]=$(mktemp "${TMPDIR:-/tmp}/chat-$1.XXXXXX")
  set -m
  nice -n 19 "${@:2}" >"${logs[$1]}" 2>&1 &
  pids[$1]=$!
  set +m
}
await() {
  wait "${pids[$1]}" || { cat "${logs[$1]}" >&2; echo "error: $1 failed" >&2; exit 1; }
  cat "${logs[$1]}"
  rm -f "${logs[$1]}"
  unset "pids[$1]"
}
signal_background() {
  local pid
  for pid in "${pids[@]}"; do kill "-$1" -- "-$pid" 2>/dev/null || true; done
}
hold() { signal_background STOP; }
resume() { signal_background CONT; }
background deploy-tools deploy/validate/tools.sh
background jaeger deploy/observability/jaeger.sh
[ -n "${SCYLLA_URI:-}" ] || background cassandra-install deploy/cassandra/cassandra.sh install
cassandra_dir=
cleanup() {
  local rc=$?
  signal_background CONT
  signal_background TERM
  if [ -n "$cassandra_dir" ]; then
    deploy/cassandra/cassandra.sh stop "$cassandra_dir" || true
    if [ "$rc" -eq 0 ]; then rm -rf "$cassandra_dir"; else echo "Cassandra's files kept in $cassandra_dir" >&2; fi
  fi
  return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "format and lints"
cargo fmt --all --check
.ci/module-cycles.py --self-test
.ci/module-cycles.py gateway/src router/src persistence-worker/src proto/src loadtest/src
cargo clippy --workspace --all-targets --locked -- -D warnings
step "the local cluster"
deploy/test-local-cluster.sh
step "the load harness"
# The load harness's test measures latency (p99 at each step of a ramp): it runs before the
# Cassandra node starts, on a machine that the database's background work (flushes and
# compactions after the store tests) does not share, with the background builds held.
cargo test -p chat-loadtest --locked --no-run
hold
cargo test -p chat-loadtest --locked
resume

# The CQL server of the store tests: ScyllaDB when SCYLLA_URI (host:port) is given, else one
# Apache Cassandra 5.0 node started here for the run (jars cached between runs, its own directory
# and free ports; see docs/operations.md). The store tests read SCYLLA_URI or CASSANDRA_URI.
if [ -n "${SCYLLA_URI:-}" ]; then
  unset CASSANDRA_URI
  echo "store tests: ScyllaDB at $SCYLLA_URI (SCYLLA_URI is set; no Cassandra node started)"
else
  await cassandra-install
  cassandra_dir="$(mktemp -d "${TMPDIR:-/tmp}/chat-cassandra.XXXXXX")"
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
step "the workspace's tests"
cargo test --workspace --exclude chat-loadtest --locked
step "observability: Prometheus scrapes the local cluster; a message's trace in Jaeger"
deploy/observability/test-prometheus.sh
await jaeger
deploy/observability/test-tracing.sh
step "the deployment files"
await deploy-tools
deploy/validate/validate.sh
step "the images"
PROFILE=dev deploy/images/build.sh
deploy/images/check.sh
step "all passed"
