# Sourced by the observability tests: starts a local cluster (deploy/local-cluster.sh) on free
# ports, in its own process group, with the abuse limits off, and the binaries and the load
# harness built in PROFILE (dev by default). Sets `cluster` (the group's pid), `bin`, and the
# ports' variables (LB_PORT, GATEWAY_PORTS, ADMIN_PORTS, ROUTER_ADMIN_PORT, WORKER_ADMIN_PORT …).
# Usage: start_cluster DIR (its output goes to DIR/cluster.out); stop_cluster.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_cluster() {
  local dir=$1
  export LB_PORT=$(free_port) NATS_PORT=$(free_port) ROUTER_PORT=$(free_port)
  export ROUTER_ADMIN_PORT=$(free_port) WORKER_ADMIN_PORT=$(free_port)
  export NATS_MONITOR_PORTS="$(free_port) $(free_port) $(free_port)"
  export GATEWAY_PORTS="$(free_port) $(free_port)" ADMIN_PORTS="$(free_port) $(free_port)"
  export CLUSTER_DIR="$dir/state" PROFILE=${PROFILE:-dev}
  export GATEWAY_FLAGS="--message-rate 0 --connect-rate-per-ip 0"
  bin=target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
  cargo build --profile "$PROFILE" -q --bin chat-gateway --bin chat-persistence-worker \
    --bin chat-router --bin chat-loadtest
  set -m
  deploy/local-cluster.sh --fresh >"$dir/cluster.out" 2>&1 &
  cluster=$!
  set +m
  disown "$cluster" # its end is ours to report, not the shell's
  for _ in $(seq 600); do
    grep -q "Chat backend running" "$dir/cluster.out" && return 0
    sleep 0.1
  done
  return 1
}

# Ctrl-C to the cluster's group, then SIGKILL to what is left.
stop_cluster() {
  [ -n "${cluster:-}" ] || return 0
  kill -INT -- "-$cluster" 2>/dev/null && sleep 1
  kill -KILL -- "-$cluster" 2>/dev/null || true
  cluster=
}
