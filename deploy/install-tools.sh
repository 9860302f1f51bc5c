#!/usr/bin/env bash
# Installs each named tool from the OS packages (Debian/Ubuntu) when it is not on the PATH; the
# package has the tool's name: `deploy/install-tools.sh nats-server haproxy`.
set -euo pipefail
missing=()
for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
((${#missing[@]})) || exit 0
echo "installing ${missing[*]} from the OS packages" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
