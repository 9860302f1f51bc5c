#!/usr/bin/env bash
# The CPU cost of tracing at a fixed fan-out load: the same load-harness run (fan-out, 200 rooms
# of 10 over both gateways) on a fresh local cluster with traces off, then on with the sampling
# ratios given (default: 1.0 and 0.01), the spans sent to a real Jaeger (deploy/observability/
# jaeger.sh). Prints the all-in server CPU per delivery (gateways, nats-server, worker, router)
# and the latency of each run. A benchmark, not a test: run it on a quiet machine.
#
#   deploy/observability/bench-tracing.sh [RATIO ...]
#
# Environment: PROFILE (release), RATE (messages a second in, 1000), DURATION (20s).
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/observability/cluster.bash
export PROFILE=${PROFILE:-release}
ratios=("$@")
((${#ratios[@]})) || ratios=(1.0 0.01)
jaeger=$(deploy/observability/jaeger.sh)
dir=$(mktemp -d)
receiver=
cleanup() {
  stop_cluster
  [ -n "$receiver" ] && kill "$receiver" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT

otlp_port=$(free_port)
cat >"$dir/jaeger.yaml" <<CFG
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces: {receivers: [otlp], processors: [batch], exporters: [jaeger_storage_exporter]}
  telemetry: {metrics: {level: none}, traces: {level: none}}
extensions:
  jaeger_storage: {backends: {memstore: {memory: {max_traces: 100000}}}}
  jaeger_query: {storage: {traces: memstore}, http: {endpoint: "127.0.0.1:$(free_port)"}, grpc: {endpoint: "127.0.0.1:$(free_port)"}}
receivers:
  otlp: {protocols: {grpc: {endpoint: "127.0.0.1:$otlp_port"}}}
processors:
  batch: {}
exporters:
  jaeger_storage_exporter: {trace_storage: memstore}
CFG

# One run with the environment given: its report's line.
run() {
  local name=$1
  start_cluster "$dir" || { tail -n 30 "$dir/cluster.out" >&2; exit 1; }
  local pids
  pids=$(cat "$CLUSTER_DIR"/{gateway-1,gateway-2,nats,worker,router}.pid | paste -sd,)
  CHAT_JWT_SECRET=$(cat "$CLUSTER_DIR/dev-secret") "$bin/chat-loadtest" fanout \
    --urls "ws://127.0.0.1:$LB_PORT/ws" --rooms 200 --members 10 --rate "${RATE:-1000}" \
    --duration "${DURATION:-20s}" --source-ips 1 --server-pids "$pids" \
    --out "$dir/report-$name" >"$dir/loadtest-$name.log" 2>&1 ||
    { tail -n 20 "$dir/loadtest-$name.log" >&2; exit 1; }
  python3 - "$name" "$dir/report-$name/report.json" <<'PY'
import json, sys
name, path = sys.argv[1:]
phase = json.load(open(path))["phases"][0]
print(f"| {name} | {phase['rate_in']:.0f} | {phase['deliveries_per_s']:.0f} | "
      f"{phase['server_cpu_us_per_delivery']:.1f} | {phase['latency']['p50']:.2f} | "
      f"{phase['latency']['p99']:.2f} | {phase['lost']} |")
PY
  stop_cluster
}

echo "| traces | msg/s in | deliveries/s | server CPU µs/delivery | p50 ms | p99 ms | lost |"
echo "|---|---|---|---|---|---|---|"
unset CHAT_OTLP_ENDPOINT CHAT_TRACE_SAMPLE_RATIO
run off
"$jaeger" --config "$dir/jaeger.yaml" >"$dir/jaeger.log" 2>&1 &
receiver=$!
export CHAT_OTLP_ENDPOINT="http://127.0.0.1:$otlp_port"
for ratio in "${ratios[@]}"; do
  CHAT_TRACE_SAMPLE_RATIO=$ratio run "on, $ratio"
done
