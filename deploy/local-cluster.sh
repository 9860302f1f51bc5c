#!/usr/bin/env bash
# Starts the whole product on this machine: nats-server (JetStream), the router, one persistence
# worker on the embedded store, two gateways, and HAProxy in front of them, as a load balancer is
# in production. Prints the one WebSocket URL (and each gateway's) and development tokens signed
# with a secret generated for this run. Ctrl-C stops everything.
#
#   deploy/local-cluster.sh                     # keeps history in .local/cluster between runs
#   deploy/local-cluster.sh --fresh             # starts from nothing
#   deploy/local-cluster.sh --nats-cluster 3    # three NATS servers in a cluster, the stream
#                                               # replicated three times (kill one to try it;
#                                               # switching to or from it needs --fresh)
#
# A process that dies is reported and the others keep running (kill a gateway to try failover:
# `kill $(cat .local/cluster/gateway-1.pid)`); Ctrl-C stops them all.
#
# Ports (environment): LB_PORT (8000: HAProxy), NATS_PORT (4222; with --nats-cluster N the
# servers take NATS_PORTS, "4222 4223 4224", and NATS_CLUSTER_PORTS, "6222 6223 6224"),
# NATS_MONITOR_PORTS ("8222 …": nats-server's monitoring endpoints, /varz and the others),
# ROUTER_PORT (7070), GATEWAY_PORTS ("8080 8081"), ADMIN_PORTS ("9080 9081": the gateways' admin
# ports), ROUTER_ADMIN_PORT (9070), WORKER_ADMIN_PORT (9090); every admin port serves /metrics. GATEWAY_FLAGS: more gateway flags; a load run needs the abuse limits
# off: GATEWAY_FLAGS="--message-rate 0 --connect-rate-per-ip 0". CLUSTER_DIR: where state, logs
# and pid files go (.local/cluster). PROFILE: the cargo profile to build and run (release).
# BIN_DIR: run the binaries in this directory instead of building (an A/B run of two builds).
# NATS_SERVER: the nats-server binary to run (the one on the PATH, installed if missing).
# STREAM_MAX_BYTES (2 GiB) and AUDIT_STREAM_MAX_BYTES (256 MiB): the streams' size limits, below
# the worker's defaults (8 GiB and 1 GiB). JetStream reserves both limits against its file
# storage, which is set to their sum plus 1 GiB here (not to its default, 75% of the disk free at
# its start), so that the cluster starts on any disk; the disk must hold what is really written.
set -euo pipefail
# A signal ignored when bash starts cannot be trapped (a background job of a script, `nohup` and
# some CI runners start it with SIGINT ignored), and the processes started here would inherit the
# disposition: HAProxy would outlive Ctrl-C. Such a start runs again with INT and TERM at their
# defaults, so that this script always stops everything it started.
if [ -n "$(trap -p INT TERM)" ] && [ -z "${CHAT_CLUSTER_SIGNALS_RESET:-}" ]; then
  CHAT_CLUSTER_SIGNALS_RESET=1 exec env --default-signal=INT,TERM "$0" "$@"
fi
unset CHAT_CLUSTER_SIGNALS_RESET
cd "$(dirname "$0")/.."
state=${CLUSTER_DIR:-.local/cluster}
profile=${PROFILE:-release}
nats_servers=1
while (($#)); do
  case $1 in
    --fresh) rm -rf "$state" ;;
    --nats-cluster)
      nats_servers=${2:-}
      [[ $nats_servers =~ ^[1-9]$ ]] || { echo "--nats-cluster takes 1 to 9 servers" >&2; exit 64; }
      shift ;;
    *) echo "usage: $0 [--fresh] [--nats-cluster N]" >&2; exit 64 ;;
  esac
  shift
done
mkdir -p "$state"

deploy/install-tools.sh haproxy
[ -n "${NATS_SERVER:-}" ] || deploy/install-tools.sh nats-server
if [ -n "${BIN_DIR:-}" ]; then
  bin=$BIN_DIR
else
  echo "building ($profile)…"
  cargo build --profile "$profile" -q --bin chat-gateway --bin chat-persistence-worker --bin chat-router
  bin=target/$([ "$profile" = dev ] && echo debug || echo "$profile")
fi

lb_port=${LB_PORT:-8000}
read -r -a nats_ports <<<"${NATS_PORTS:-${NATS_PORT:-4222} 4223 4224 4225 4226 4227 4228 4229 4230}"
read -r -a nats_cluster_ports <<<"${NATS_CLUSTER_PORTS:-6222 6223 6224 6225 6226 6227 6228 6229 6230}"
read -r -a nats_monitor_ports <<<"${NATS_MONITOR_PORTS:-8222 8223 8224 8225 8226 8227 8228 8229 8230}"
((${#nats_ports[@]} >= nats_servers && ${#nats_cluster_ports[@]} >= nats_servers && ${#nats_monitor_ports[@]} >= nats_servers)) ||
  { echo "NATS_PORTS, NATS_CLUSTER_PORTS and NATS_MONITOR_PORTS need $nats_servers ports each" >&2; exit 64; }
nats_ports=("${nats_ports[@]:0:$nats_servers}")
nats_cluster_ports=("${nats_cluster_ports[@]:0:$nats_servers}")
nats_monitor_ports=("${nats_monitor_ports[@]:0:$nats_servers}")
router_port=${ROUTER_PORT:-7070}
router_admin_port=${ROUTER_ADMIN_PORT:-9070}
worker_admin_port=${WORKER_ADMIN_PORT:-9090}
router_url="http://127.0.0.1:$router_port"
read -r -a gateway_ports <<<"${GATEWAY_PORTS:-8080 8081}"
read -r -a admin_ports <<<"${ADMIN_PORTS:-9080 9081}"
nats_url=$(printf 'nats://127.0.0.1:%s,' "${nats_ports[@]}")
nats_url=${nats_url%,}
CHAT_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export CHAT_JWT_SECRET
(umask 077 && printf '%s' "$CHAT_JWT_SECRET" >"$state/dev-secret")

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
cluster_ports=()
((nats_servers == 1)) || cluster_ports=("${nats_cluster_ports[@]}")
for port in "$lb_port" "${nats_ports[@]}" "${nats_monitor_ports[@]}" "${cluster_ports[@]}" "$router_port" "${gateway_ports[@]}" "${admin_ports[@]}" "$router_admin_port" "$worker_admin_port"; do
  port_free "$port" || { echo "port $port is in use: is a cluster already running? (set LB_PORT, NATS_PORT(S), NATS_MONITOR_PORTS, NATS_CLUSTER_PORTS, ROUTER_PORT, GATEWAY_PORTS, ADMIN_PORTS, ROUTER_ADMIN_PORT, WORKER_ADMIN_PORT)" >&2; exit 1; }
done

pids=()
declare -A names=()
# Starts a process in the background, logging to $state/NAME.log, its pid in $state/NAME.pid.
start() {
  local name=$1
  shift
  "$@" >"$state/$name.log" 2>&1 &
  pids+=($!)
  names[$!]=$name
  echo $! >"$state/$name.pid"
}
# Stops every process started here: SIGTERM, gateways first (they drain), then the worker, then
# NATS; whatever still runs after the gateways' drain and grace (5 + 10 s) gets SIGKILL, named.
cleanup() {
  trap - EXIT INT TERM
  echo; echo "stopping…"
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
  local deadline=$((SECONDS + 20)) pid left
  while :; do
    left=()
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left+=("$pid"); done
    ((${#left[@]} && SECONDS < deadline)) || break
    sleep 0.2
  done
  for pid in "${left[@]}"; do
    echo "${names[$pid]} (pid $pid) did not stop within 20 s of SIGTERM: killed"
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  echo "stopped"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

stream_max_bytes=${STREAM_MAX_BYTES:-2147483648}
audit_stream_max_bytes=${AUDIT_STREAM_MAX_BYTES:-268435456}
# JetStream's file storage is set, not left to its default (75% of the disk free at its start):
# the streams' limits plus 1 GiB, so that the cluster starts the same on any disk.
max_file_store=$((stream_max_bytes + audit_stream_max_bytes + 1073741824))
routes=$(printf '"nats://127.0.0.1:%s", ' "${nats_cluster_ports[@]}")
for ((i = 0; i < nats_servers; i++)); do
  name=nats
  ((nats_servers == 1)) || name=nats-$((i + 1))
  {
    echo "server_name: $name"
    echo "http: \"127.0.0.1:${nats_monitor_ports[$i]}\""
    echo "jetstream { store_dir: \"$state/$name\", max_file_store: $max_file_store }"
    ((nats_servers == 1)) || cat <<CFG
cluster {
  name: chat
  listen: "127.0.0.1:${nats_cluster_ports[$i]}"
  routes: [${routes%, }]
}
CFG
  } >"$state/$name.conf"
  start "$name" "${NATS_SERVER:-nats-server}" -a 127.0.0.1 -p "${nats_ports[$i]}" -c "$state/$name.conf"
done
for port in "${nats_ports[@]}"; do
  for _ in $(seq 50); do
    port_free "$port" || break
    sleep 0.1
  done
done
# A cluster answers JetStream requests once it has elected a leader.
if ((nats_servers > 1)); then
  for _ in $(seq 300); do
    grep -q "JetStream cluster new metadata leader" "$state"/nats-*.log && break
    sleep 0.1
  done
fi

start router "$bin"/chat-router --nats-url "$nats_url" --listen "127.0.0.1:$router_port" \
  --admin-listen "127.0.0.1:$router_admin_port"
stream_replicas=$((nats_servers >= 3 ? 3 : 1))
start worker "$bin"/chat-persistence-worker --nats-url "$nats_url" --db-path "$state/chat.db" \
  --admin-listen "127.0.0.1:$worker_admin_port" \
  --router-urls "$router_url" --stream-replicas "$stream_replicas" \
  --stream-max-bytes "$stream_max_bytes" --audit-stream-max-bytes "$audit_stream_max_bytes"
for _ in $(seq 100); do
  grep -q "worker ready" "$state/worker.log" && break
  kill -0 "${pids[-1]}" 2>/dev/null || { cat "$state/worker.log"; exit 1; }
  sleep 0.1
done

# HAProxy in front of the gateways (what it does: deploy/haproxy-config.sh).
deploy/haproxy-config.sh "$lb_port" "${gateway_ports[0]}:${admin_ports[0]}" \
  "${gateway_ports[1]}:${admin_ports[1]}" >"$state/haproxy.cfg"
# Started before the gateways, so that Ctrl-C stops it after them: their drain reaches the clients.
start lb haproxy -db -f "$state/haproxy.cfg"

for i in 0 1; do
  # shellcheck disable=SC2086 # GATEWAY_FLAGS is a list of flags
  start "gateway-$((i + 1))" "$bin"/chat-gateway --nats-url "$nats_url" \
    --listen "127.0.0.1:${gateway_ports[$i]}" --admin-listen "127.0.0.1:${admin_ports[$i]}" \
    --node-id "gateway-$((i + 1))" --allowed-origins '*' --router-urls "$router_url" \
    --trusted-proxies 127.0.0.1 ${GATEWAY_FLAGS:-}
done
ready() (
  exec 3<>"/dev/tcp/127.0.0.1/$1"
  printf 'GET /readyz HTTP/1.1\r\nhost: local\r\n\r\n' >&3
  head -c 12 <&3 | grep -q 200
)
for i in 0 1; do
  for _ in $(seq 100); do
    ready "${admin_ports[$i]}" 2>/dev/null && break
    sleep 0.1
  done
done
# Until HAProxy has seen a gateway ready (it answers 503 while it has none).
routes() (
  exec 3<>"/dev/tcp/127.0.0.1/$lb_port"
  printf 'GET /ws HTTP/1.1\r\nhost: local\r\nconnection: close\r\n\r\n' >&3
  ! head -c 12 <&3 | grep -q 503
)
for _ in $(seq 100); do
  routes 2>/dev/null && break
  sleep 0.1
done

token() { "$bin"/chat-gateway dev-token --user "$1" --ttl 24h; }
cat <<INFO

Chat backend running (logs in $state/):
  connect to: ws://127.0.0.1:$lb_port/ws    (HAProxy, least connections, health checks on /readyz)
  gateway 1:  ws://127.0.0.1:${gateway_ports[0]}/ws    health http://127.0.0.1:${admin_ports[0]}/readyz
  gateway 2:  ws://127.0.0.1:${gateway_ports[1]}/ws    health http://127.0.0.1:${admin_ports[1]}/readyz
  NATS:       $nats_url ($nats_servers server(s), the stream replicated $stream_replicas time(s); JetStream store in $state/nats*)
  router:     $router_url (presence, placement, at most 5 sessions per user)
  store:      $state/chat.db
  metrics:    http://127.0.0.1:{${admin_ports[0]},${admin_ports[1]},$router_admin_port,$worker_admin_port}/metrics (gateways, router, worker)

Development tokens (HS256, secret generated for this run, valid 24 h):
  alice: $(token alice)
  bob:   $(token bob)
  more:  CHAT_JWT_SECRET=\$(cat $state/dev-secret) $bin/chat-gateway dev-token --user NAME

Try it (two terminals, with websocat or any WebSocket client):
  websocat "ws://127.0.0.1:$lb_port/ws?token=<alice's token>"
  {"event":"room:create","requestId":"1","data":{"title":"hi","participantIds":["bob"]}}
  {"event":"message:send","requestId":"2","data":{"conversationId":"<id>","content":"hello"}}

A process that dies is reported here and the others keep running; Ctrl-C stops everything.
INFO
# Until Ctrl-C (or until every process is gone): report each process that ends.
running=("${pids[@]}")
while ((${#running[@]})); do
  status=0
  wait -n -p gone "${running[@]}" || status=$?
  [ -n "${gone:-}" ] || break
  echo "$(date +%T) ${names[$gone]} (pid $gone) exited with status $status; log: $state/${names[$gone]}.log; the rest keep running"
  left=()
  for pid in "${running[@]}"; do [ "$pid" = "$gone" ] || left+=("$pid"); done
  running=("${left[@]}")
  gone=
done
