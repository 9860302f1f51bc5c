#!/usr/bin/env bash
# Prints the HAProxy configuration that puts gateways behind one address, as a load balancer does
# in production (used by local-cluster.sh and by the gateway's rolling-restart test):
#
#   deploy/haproxy-config.sh LB_PORT WS_PORT:ADMIN_PORT [WS_PORT:ADMIN_PORT…] > haproxy.cfg
#
# The fewest connections first; each gateway's /readyz (on its admin port) checked every second,
# out after two failures (dead, or draining) and back after two successes; a connection refused
# by a gateway that began to drain is tried on another at once; WebSockets may stay quiet for
# 120 s (pings come every 30 s); X-Forwarded-For carries the client's address (the gateways
# trust it from 127.0.0.1: --trusted-proxies). About 9,000 connections: HAProxy holds two
# descriptors each, under the 20,000 a process may open here.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 LB_PORT WS_PORT:ADMIN_PORT..." >&2; exit 64; }
lb_port=$1
shift
cat <<CFG
global
  maxconn 9000
defaults
  mode http
  option forwardfor
  retries 3
  option redispatch 1
  timeout connect 5s
  timeout http-request 10s
  timeout client 60s
  timeout server 60s
  timeout tunnel 120s
  timeout client-fin 5s
frontend websocket
  bind 127.0.0.1:$lb_port
  default_backend gateways
backend gateways
  balance leastconn
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter 1s fall 2 rise 2
CFG
n=0
for gateway in "$@"; do
  n=$((n + 1))
  echo "  server gateway-$n 127.0.0.1:${gateway%%:*} check port ${gateway##*:}"
done
