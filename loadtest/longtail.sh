#!/usr/bin/env bash
# The long-tail bus benchmark, both delivery mechanisms, each on a fresh nats-server with its own
# store directory. Figures go to stdout; docs/BENCHMARKS.md says how they were read.
# NATS_SERVER: the nats-server binary (from the PATH by default).
#   loadtest/longtail.sh [extra chat-loadtest bus-longtail flags]
set -euo pipefail
cd "$(dirname "$0")/.."
nats=${NATS_SERVER:-nats-server}
[ -n "${NATS_SERVER:-}" ] || deploy/install-tools.sh nats-server
cargo build --release -q -p chat-loadtest
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$nats" --version
for mode in "" "--republish"; do
  rm -rf "$work/js"
  "$nats" -js -a 127.0.0.1 -p "$port" -sd "$work/js" >"$work/nats.log" 2>&1 &
  server=$!
  sleep 1
  ./target/release/chat-loadtest bus-longtail --nats-url "nats://127.0.0.1:$port" $mode "$@"
  kill "$server"; wait "$server" 2>/dev/null || true
done
