#!/usr/bin/env bash
# One message, one trace, across processes: a real OTLP receiver (Jaeger v2, built from the Go
# module proxy by deploy/observability/jaeger.sh) takes the traces of a local cluster whose
# gateways, worker and router run with --otlp-endpoint and --trace-sample-ratio 1. The load
# harness sends messages in rooms whose members are on both gateways; then a trace of a message
# must hold its `publish` span from the sending gateway, the worker's `store` span and a
# `fanout` span from each gateway, every span in one trace. Free ports and a directory of its
# own; PROFILE as for local-cluster.sh (dev here).
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/observability/cluster.bash
jaeger=$(deploy/observability/jaeger.sh)
dir=$(mktemp -d)
cluster=
receiver=
fail() {
  echo "tracing: FAILED: $*" >&2
  for log in "$dir/cluster.out" "$dir/jaeger.log" "$dir/loadtest.log"; do
    echo "--- $log:" >&2
    tail -n 30 "$log" >&2 || true
  done
  exit 1
}
cleanup() {
  stop_cluster
  [ -n "$receiver" ] && kill "$receiver" 2>/dev/null
  [ -n "${KEEP:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT

otlp_port=$(free_port) query_port=$(free_port) query_grpc_port=$(free_port)
cat >"$dir/jaeger.yaml" <<CFG
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    traces:
      level: none
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:$query_port
    grpc:
      endpoint: 127.0.0.1:$query_grpc_port
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$otlp_port
processors:
  batch:
    timeout: 200ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
CFG
"$jaeger" --config "$dir/jaeger.yaml" >"$dir/jaeger.log" 2>&1 &
receiver=$!

export CHAT_OTLP_ENDPOINT="http://127.0.0.1:$otlp_port" CHAT_TRACE_SAMPLE_RATIO=1
# The session's start is logged at debug level inside its traced `connect` span.
export RUST_LOG=info,chat_gateway::session::open=debug
start_cluster "$dir" || fail "the cluster did not start"
read -r -a gateway <<<"$GATEWAY_PORTS"

# Rooms of 4 members over both gateways (the harness spreads sockets over the URLs).
CHAT_JWT_SECRET=$(cat "$CLUSTER_DIR/dev-secret") "$bin/chat-loadtest" fanout \
  --urls "ws://127.0.0.1:${gateway[0]}/ws,ws://127.0.0.1:${gateway[1]}/ws" --rooms 4 --members 4 \
  --rate 20 --duration 3s --drain 2s --source-ips 1 --out "$dir/report" >"$dir/loadtest.log" 2>&1 ||
  fail "the load harness failed"

python3 - "$query_port" "$CLUSTER_DIR/gateway-1.log" <<'PY' || fail "no trace of a message across the gateways and the worker"
import json, sys, time, urllib.parse, urllib.request

port, log = sys.argv[1:]

def get(path, **query):
    url = f"http://127.0.0.1:{port}{path}?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)["data"]

def where(trace):
    """(operation, service, node) of each span of a trace."""
    out = []
    for span in trace["spans"]:
        process = trace["processes"][span["processID"]]
        tags = {t["key"]: t["value"] for t in process.get("tags", [])}
        out.append((span["operationName"], process["serviceName"], tags.get("service.instance.id", "")))
    return out

def message_trace():
    """A trace of a message with spans from the sending gateway, the worker and both gateways."""
    traces = get("/api/traces", service="chat-gateway", operation="publish", limit=200, lookback="1h")
    for trace in traces:
        spans = where(trace)
        publish = [s for s in spans if s[0] == "publish"]
        store = [s for s in spans if s[0] == "store" and s[1] == "chat-persistence-worker"]
        fanout_nodes = {s[2] for s in spans if s[0] == "fanout" and s[1] == "chat-gateway"}
        if publish and store and {"gateway-1", "gateway-2"} <= fanout_nodes:
            return trace, spans
    return None, max((where(t) for t in traces), key=len, default=[])

deadline = time.time() + 30
trace, spans = message_trace()
while trace is None and time.time() < deadline:
    time.sleep(1)
    trace, spans = message_trace()
if trace is None:
    raise SystemExit(f"no trace with publish, store and a fanout on both gateways; the fullest: {spans}")
print(f"trace {trace['traceID']}: {len(spans)} spans, one trace:")
for operation, service, node in sorted(spans, key=lambda s: (s[1], s[2], s[0])):
    print(f"  {service:24} {node:10} {operation}")

# Logs inside a traced span carry its trace id, and the collector has that trace.
import re
plain = re.sub(r"\x1b\[[0-9;]*m", "", open(log).read())
ids = re.findall(r"connect\{trace_id=([0-9a-f]{32})\}: .*session opened", plain)
assert ids, "no log line of a session's start with its trace id"
found = get(f"/api/traces/{ids[0]}")
assert found and any(s["operationName"] == "connect" for s in found[0]["spans"]), found
print(f"the log of a session's start carries trace_id={ids[0]}, a trace the collector has")
PY
echo "tracing: a message is one trace, with spans from the sending gateway, the worker and both gateways' fan-out"

# The collector gone: the chat goes on (every message delivered once, acks in time), and the
# spans that cannot be sent are counted as dropped.
kill "$receiver"
receiver=
CHAT_JWT_SECRET=$(cat "$CLUSTER_DIR/dev-secret") "$bin/chat-loadtest" fanout \
  --urls "ws://127.0.0.1:${gateway[0]}/ws,ws://127.0.0.1:${gateway[1]}/ws" --rooms 4 --members 4 \
  --rate 100 --duration 5s --drain 2s --source-ips 1 --out "$dir/report-down" \
  >"$dir/loadtest.log" 2>&1 || fail "the load harness failed with the collector down"
read -r -a admin <<<"$ADMIN_PORTS"
python3 - "$dir/report-down/report.json" "${admin[0]}" <<'PY' || fail "the chat suffered from the collector being down"
import json, sys, time, urllib.request

report, admin = sys.argv[1:]
phase = json.load(open(report))["phases"][0]
print(f"collector down: {phase['sent']} sent, {phase['delivered']} delivered, lost {phase['lost']}, "
      f"duplicated {phase['duplicated']}, errors {phase['errors']}, "
      f"ack p99 {phase['ack_latency']['p99']:.1f} ms, delivery p99 {phase['latency']['p99']:.1f} ms")
assert phase["sent"] > 0 and phase["lost"] == 0 and phase["duplicated"] == 0 and phase["errors"] == 0, phase
assert phase["ack_latency"]["p99"] < 250, phase["ack_latency"]
deadline = time.time() + 15
while True:
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    counts = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("chat_gateway_trace_")}
    if counts["chat_gateway_trace_spans_dropped_total"] > 0:
        print(f"spans dropped and counted: {counts}")
        break
    assert time.time() < deadline, counts
    time.sleep(1)
PY
echo "tracing: with the collector down, nothing is lost and the spans not sent are counted"
