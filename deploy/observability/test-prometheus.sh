#!/usr/bin/env bash
# A real Prometheus (the OS package) scrapes a running local cluster: both gateways, the router
# and the worker, every second, with deploy/observability/rules.yaml loaded, while the load
# harness sends messages through the load balancer. Then every query of the Grafana dashboard
# (deploy/observability/dashboard.json) and every recorded series that an alert compares must
# return data, and `promtool check rules` must accept the rules. Free ports and a directory of
# its own; PROFILE as for local-cluster.sh (dev here: the test command built the binaries).
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/observability/cluster.bash
deploy/install-tools.sh prometheus
dir=$(mktemp -d)
cluster=
prometheus=
fail() {
  echo "prometheus: FAILED: $*" >&2
  for log in "$dir/cluster.out" "$dir/prometheus.log"; do
    echo "--- $log:" >&2
    tail -n 40 "$log" >&2 || true
  done
  exit 1
}
cleanup() {
  [ -n "$prometheus" ] && kill "$prometheus" 2>/dev/null
  stop_cluster
  [ -n "${KEEP:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT

promtool check rules deploy/observability/rules.yaml

start_cluster "$dir" || fail "the cluster did not start"
read -r -a admin <<<"$ADMIN_PORTS"
prometheus_port=$(free_port)

cat >"$dir/prometheus.yml" <<CFG
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $PWD/deploy/observability/rules.yaml
scrape_configs:
  - job_name: chat-gateway
    static_configs:
      - targets: ["127.0.0.1:${admin[0]}", "127.0.0.1:${admin[1]}"]
  - job_name: chat-router
    static_configs:
      - targets: ["127.0.0.1:$ROUTER_ADMIN_PORT"]
  - job_name: chat-worker
    static_configs:
      - targets: ["127.0.0.1:$WORKER_ADMIN_PORT"]
CFG
prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/tsdb" \
  --web.listen-address="127.0.0.1:$prometheus_port" >"$dir/prometheus.log" 2>&1 &
prometheus=$!

# Messages through the load balancer for 20 s (sends, deliveries, stored batches, connects).
CHAT_JWT_SECRET=$(cat "$CLUSTER_DIR/dev-secret") "$bin/chat-loadtest" fanout \
  --urls "ws://127.0.0.1:$LB_PORT/ws" --rooms 20 --members 5 --rate 200 --duration 20s \
  --drain 2s --source-ips 1 --out "$dir/report" >"$dir/loadtest.log" 2>&1 ||
  { cat "$dir/loadtest.log" >&2; fail "the load harness failed"; }

python3 - "$prometheus_port" deploy/observability/dashboard.json deploy/observability/rules.yaml <<'PY' || fail "queries without data"
import json, re, sys, time, urllib.parse, urllib.request

port, dashboard_path, rules_path = sys.argv[1:]

def query(expr):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise SystemExit(f"{expr}: {body}")
    return body["data"]["result"]

# Every target up.
deadline = time.time() + 30
while True:
    up = query("up")
    if len(up) == 4 and all(r["value"][1] == "1" for r in up):
        break
    if time.time() > deadline:
        raise SystemExit(f"targets not all up: {up}")
    time.sleep(1)

dashboard = json.load(open(dashboard_path))
exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
# The recorded series the alerts compare (the rules file is YAML; the names are enough).
alerts = re.findall(r"^\s+expr: (.*chat:.*)$", open(rules_path).read(), re.M)
recorded = sorted({name for line in alerts for name in re.findall(r"chat:[a-z0-9_:]+", line)})
missing = []
for expr in exprs + recorded:
    result = query(expr)
    print(f"{len(result):3} series  {expr}")
    if not result:
        missing.append(expr)
print(f"{len(exprs)} dashboard queries; {len(recorded)} recorded series compared by the alerts")
if missing:
    raise SystemExit("no data: " + "; ".join(missing))
PY
echo "prometheus: every dashboard query and every alert's series has data"
