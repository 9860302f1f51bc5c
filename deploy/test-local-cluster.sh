#!/usr/bin/env bash
# Tries the local cluster as a person would: start it, kill one gateway, check that it is
# reported and that the rest keep serving, then Ctrl-C (SIGINT to its process group) and check
# that every process is gone. Uses free ports and a directory of its own; PROFILE as for
# local-cluster.sh (dev here: the test binaries are built already).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
log="$dir/cluster.out"
cluster=
fail() {
  echo "local-cluster: FAILED: $*" >&2
  echo "--- its output:" >&2
  cat "$log" >&2 || true
  echo "local-cluster: 0 passed, 1 failed"
  exit 1
}
cleanup() {
  [ -n "$cluster" ] && kill -KILL -- "-$cluster" 2>/dev/null
  [ -n "${KEEP:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export NATS_PORT=$(free_port) ROUTER_PORT=$(free_port)
export GATEWAY_PORTS="$(free_port) $(free_port)" ADMIN_PORTS="$(free_port) $(free_port)"
export CLUSTER_DIR="$dir/state" PROFILE=${PROFILE:-dev}
read -r -a admin <<<"$ADMIN_PORTS"

ready() (
  exec 3<>"/dev/tcp/127.0.0.1/$1"
  printf 'GET /readyz HTTP/1.1\r\nhost: local\r\n\r\n' >&3
  head -c 12 <&3 | grep -q 200
)
# Waits up to $1 tenths of a second for the command that follows to succeed.
within() {
  local tenths=$1
  shift
  for _ in $(seq "$tenths"); do
    "$@" && return 0
    sleep 0.1
  done
  return 1
}

# Built first, so that the start below is timed without the build (a fresh clone builds here).
cargo build --profile "$PROFILE" -q --bin chat-gateway --bin chat-persistence-worker --bin chat-router

# Its own process group, as a terminal gives a command: Ctrl-C reaches the whole group.
set -m
deploy/local-cluster.sh >"$log" 2>&1 &
cluster=$!
set +m
within 1200 grep -q "Chat backend running" "$log" || fail "the cluster did not start"
pids=$(cat "$CLUSTER_DIR"/*.pid)

kill -KILL "$(cat "$CLUSTER_DIR/gateway-1.pid")"
within 50 grep -q "gateway-1 (pid .*) exited" "$log" || fail "the dead gateway was not reported"
sleep 1
kill -0 "$cluster" 2>/dev/null || fail "the cluster stopped with one gateway"
within 30 ready "${admin[1]}" || fail "gateway-2 is not ready after gateway-1 died"
for name in nats router worker gateway-2; do
  kill -0 "$(cat "$CLUSTER_DIR/$name.pid")" 2>/dev/null || fail "$name stopped with gateway-1"
done

kill -INT -- "-$cluster"
within 200 bash -c "! kill -0 $cluster 2>/dev/null" || fail "Ctrl-C did not stop the cluster"
for pid in $pids; do
  within 100 bash -c "! kill -0 $pid 2>/dev/null" || fail "process $pid outlived Ctrl-C"
done
cluster=
echo "local-cluster: a dead gateway is reported, the rest keep running, Ctrl-C stops all"
echo "local-cluster: 1 passed, 0 failed"
