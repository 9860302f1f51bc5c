#!/usr/bin/env bash
# The floor of a chat message's cost in nats-server: bare JetStream publishes with a
# de-duplication id (`chat-loadtest bus-publish`) on a fresh nats-server of their own, and the
# server's CPU per publish. NATS_SERVER: the nats-server binary (from the PATH by default).
#   loadtest/bus-publish.sh [--rate 2000] [--duration 10s]
set -euo pipefail
cd "$(dirname "$0")/.."
nats=${NATS_SERVER:-nats-server}
[ -n "${NATS_SERVER:-}" ] || deploy/install-tools.sh nats-server
cargo build --release -q -p chat-loadtest
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$nats" --version
"$nats" -js -a 127.0.0.1 -p "$port" -sd "$work/js" >"$work/nats.log" 2>&1 &
server=$!
sleep 1
./target/release/chat-loadtest bus-publish --nats-url "nats://127.0.0.1:$port" --nats-pid "$server" "$@"
