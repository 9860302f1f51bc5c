#!/usr/bin/env bash
# Tries the local cluster as a person would: start it, connect through its load balancer, kill
# one gateway, check that it is reported, that the rest keep serving and that the load balancer
# sends every new connection to the live gateway, then Ctrl-C (SIGINT to its process group) and
# check that every process is gone. Then again with `--nats-cluster 3`: the stream replicated
# three times, one NATS server killed, the rest serving. Then once more started with SIGINT
# ignored: Ctrl-C still stops all. Uses free ports and a directory of its own; PROFILE as for
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
  echo "local-cluster: FAILED"
  exit 1
}
cleanup() {
  [ -n "$cluster" ] && kill -KILL -- "-$cluster" 2>/dev/null
  [ -n "${KEEP:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export LB_PORT=$(free_port) NATS_PORT=$(free_port) ROUTER_PORT=$(free_port)
export ROUTER_ADMIN_PORT=$(free_port) WORKER_ADMIN_PORT=$(free_port)
export NATS_MONITOR_PORTS="$(free_port) $(free_port) $(free_port)"
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

# A WebSocket upgrade through the load balancer, as `user`: exits 0 on `101 Switching Protocols`.
upgrades() {
  CHAT_JWT_SECRET=$(cat "$CLUSTER_DIR/dev-secret") python3 - "$LB_PORT" "$1" "$bin" <<'PY'
import base64, os, socket, subprocess, sys
port, user, bin = sys.argv[1:]
token = subprocess.run([f"{bin}/chat-gateway", "dev-token", "--user", user, "--ttl", "1h"],
                       capture_output=True, text=True, check=True).stdout.strip()
key = base64.b64encode(os.urandom(16)).decode()
with socket.create_connection(("127.0.0.1", int(port)), timeout=5) as s:
    s.sendall((f"GET /ws?token={token} HTTP/1.1\r\nHost: local\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\nOrigin: https://app.example\r\n\r\n").encode())
    sys.exit(0 if s.recv(4096).startswith(b"HTTP/1.1 101") else 1)
PY
}
bin=target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")

# Built first, so that the start below is timed without the build (a fresh clone builds here).
cargo build --profile "$PROFILE" -q --bin chat-gateway --bin chat-persistence-worker --bin chat-router

# Starts the cluster with "$@" in its own process group, as a terminal gives a command (Ctrl-C
# reaches the whole group), and waits until it runs. IGNORE_INT=1: started with SIGINT ignored,
# as a background job of a script, `nohup` or some CI runners start it.
start_cluster() {
  : >"$log"
  local launch=()
  [ -z "${IGNORE_INT:-}" ] || launch=(env --ignore-signal=INT)
  set -m
  "${launch[@]}" deploy/local-cluster.sh "$@" >"$log" 2>&1 &
  cluster=$!
  set +m
  within 1200 grep -q "Chat backend running" "$log" || fail "the cluster ($*) did not start"
  pids=$(cat "$CLUSTER_DIR"/*.pid)
}
# Ctrl-C, and every process gone.
stop_cluster() {
  kill -INT -- "-$cluster"
  within 200 bash -c "! kill -0 $cluster 2>/dev/null" ||
    fail "Ctrl-C did not stop the cluster; still running: $(ps -o pid=,args= -p "$cluster,${pids//$'\n'/,}" | tr '\n' ';')"
  for pid in $pids; do
    within 100 bash -c "! kill -0 $pid 2>/dev/null" || fail "process $pid outlived Ctrl-C"
  done
  grep -q "^stopping…" "$log" || fail "Ctrl-C did not say it was stopping"
  sed -n '/^stopping…/,$p' "$log" | grep -q "keep running" && fail "a process stopped by Ctrl-C was reported as if the rest kept running"
  cluster=
}

start_cluster
grep -q "connect to: ws://127.0.0.1:$LB_PORT/ws" "$log" || fail "no load balancer URL printed"
for n in 1 2 3 4; do upgrades "user-$n" || fail "connection $n through the load balancer refused"; done

kill -KILL "$(cat "$CLUSTER_DIR/gateway-1.pid")"
within 50 grep -q "gateway-1 (pid .*) exited" "$log" || fail "the dead gateway was not reported"
sleep 1
kill -0 "$cluster" 2>/dev/null || fail "the cluster stopped with one gateway"
within 30 ready "${admin[1]}" || fail "gateway-2 is not ready after gateway-1 died"
for name in nats router worker gateway-2 lb; do
  kill -0 "$(cat "$CLUSTER_DIR/$name.pid")" 2>/dev/null || fail "$name stopped with gateway-1"
done
# HAProxy takes the dead gateway out within two failed checks (2 s); then every connection lands.
sleep 2
for n in $(seq 10); do
  upgrades "later-$n" || fail "connection $n through the load balancer failed after gateway-1 died"
done

stop_cluster
echo "local-cluster: one URL through HAProxy; a dead gateway is reported and left out, the rest keep running, Ctrl-C stops all"

# Three NATS servers in a cluster: the stream is replicated three times, and losing one server
# leaves the rest serving.
export NATS_PORTS="$(free_port) $(free_port) $(free_port)"
export NATS_CLUSTER_PORTS="$(free_port) $(free_port) $(free_port)"
start_cluster --fresh --nats-cluster 3
grep -q "3 server(s), the stream replicated 3 time(s)" "$log" || fail "no NATS cluster of 3"
kill -KILL "$(cat "$CLUSTER_DIR/nats-2.pid")"
within 50 grep -q "nats-2 (pid .*) exited" "$log" || fail "the dead NATS server was not reported"
for n in $(seq 4); do
  within 100 upgrades "cluster-$n" || fail "connection $n failed after a NATS server died"
done
for name in nats-1 nats-3 router worker gateway-1 gateway-2 lb; do
  kill -0 "$(cat "$CLUSTER_DIR/$name.pid")" 2>/dev/null || fail "$name stopped with nats-2"
done
stop_cluster
echo "local-cluster: --nats-cluster 3 replicates the stream three times and outlives a NATS server"

# Started with SIGINT ignored (bash cannot trap a signal ignored at its start, and every process
# would inherit it): Ctrl-C still stops every process, HAProxy included.
IGNORE_INT=1 start_cluster
upgrades "ignoring-int" || fail "connection through the load balancer refused (started with SIGINT ignored)"
stop_cluster
echo "local-cluster: started with SIGINT ignored, Ctrl-C still stops every process"
echo "local-cluster: 3 passed, 0 failed"
