#!/usr/bin/env bash
# Builds an OCI image of each binary without a container engine: the release binary, the C
# runtime it links (glibc and libgcc from the OS packages: the binaries are built against this
# machine's glibc), the CA bundle, and a user 10001 without a shell, assembled with umoci.
#
#   deploy/images/build.sh [OUT]    # OUT: target/images; one OCI layout a binary, tag `latest`
#
# Load one into Docker or push it with skopeo, for example:
#   skopeo copy oci:target/images/chat-gateway:latest docker-daemon:chat-gateway:latest
# Each image listens on all interfaces (CHAT_*_LISTEN in its environment); the worker keeps its
# SQLite store in /data. PROFILE: the cargo profile (release; the test command takes `dev`, the
# binaries its tests built). Runs as root (dpkg -x, chown).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/images}
profile=${PROFILE:-release}
deploy/install-tools.sh umoci
cargo build --profile "$profile" -q --bin chat-gateway --bin chat-persistence-worker --bin chat-router
bin=target/$([ "$profile" = dev ] && echo debug || echo "$profile")
[ -f /etc/ssl/certs/ca-certificates.crt ] || { echo "needs the ca-certificates package" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
(cd "$work" && apt-get download -qq -o APT::Sandbox::User=root libc6 libgcc-s1)
for deb in "$work"/*.deb; do dpkg -x "$deb" "$rootfs"; done
rm -rf "$rootfs"/usr/share/{doc,locale,man,lintian} "$rootfs"/usr/lib/x86_64-linux-gnu/gconv
mkdir -p "$rootfs"/{app,tmp,data,etc/ssl/certs}
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
printf 'root:x:0:0::/:/nonexistent\nchat:x:10001:10001::/data:/nonexistent\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nchat:x:10001:\n' >"$rootfs/etc/group"
chmod 1777 "$rootfs/tmp"
chown 10001:10001 "$rootfs/data"

# image NAME PORTS ENV…: an OCI layout at $out/NAME.
image() {
  local name=$1 ports=$2 layout=$out/$1 bundle=$work/bundle-$1
  shift 2
  rm -rf "$layout"
  mkdir -p "$out"
  umoci init --layout "$layout"
  umoci new --image "$layout:latest"
  umoci unpack --image "$layout:latest" "$bundle" >/dev/null
  cp -a "$rootfs/." "$bundle/rootfs/"
  install -s -m 0755 "$bin/$name" "$bundle/rootfs/app/$name" # stripped: no debug symbols
  umoci repack --image "$layout:latest" "$bundle"
  local config=(--config.user 10001:10001 --config.workingdir /data
    --config.entrypoint "/app/$name" --os linux --architecture amd64
    --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt)
  local port env
  for port in $ports; do config+=(--config.exposedports "$port/tcp"); done
  for env in "$@"; do config+=(--config.env "$env"); done
  umoci config --image "$layout:latest" "${config[@]}"
  umoci gc --layout "$layout"
  echo "$layout: $(du -sh "$layout" | cut -f1)"
}
image chat-gateway "8080 9080" CHAT_LISTEN=0.0.0.0:8080 CHAT_ADMIN_LISTEN=0.0.0.0:9080
image chat-router "7070" CHAT_ROUTER_LISTEN=0.0.0.0:7070
image chat-persistence-worker "" CHAT_DB_PATH=/data/chat.db
