#!/usr/bin/env bash
# Installs nats-server from the OS packages (Debian/Ubuntu) when it is not on the PATH.
set -euo pipefail
command -v nats-server >/dev/null && exit 0
echo "installing nats-server from the OS packages" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nats-server >/dev/null
nats-server --version
