#!/usr/bin/env bash
# Checks the images that build.sh made: each runs as user 10001:10001, starts its binary, exposes
# the ports it listens on, and the binary inside answers `--help` when run from the image's own
# files (chroot, as that user: every library it needs is in the image).
#
#   deploy/images/check.sh [OUT]    # OUT: target/images
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/images}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
# check NAME PORTS: prints what is wrong with image NAME, if anything.
check() {
  local name=$1 ports=$2 layout=$out/$1
  python3 - "$layout" "$name" "$ports" <<'PY' || return 1
import json, sys
layout, name, ports = sys.argv[1], sys.argv[2], sys.argv[3].split()
def blob(digest):
    algorithm, hex_ = digest.split(":")
    with open(f"{layout}/blobs/{algorithm}/{hex_}") as f:
        return json.load(f)
with open(f"{layout}/index.json") as f:
    manifest = blob(json.load(f)["manifests"][0]["digest"])
config = blob(manifest["config"]["digest"])["config"]
problems = []
if config.get("User") != "10001:10001":
    problems.append(f"user {config.get('User')!r}, not 10001:10001")
if config.get("Entrypoint") != [f"/app/{name}"]:
    problems.append(f"entrypoint {config.get('Entrypoint')!r}")
exposed = sorted(config.get("ExposedPorts", {}))
if exposed != sorted(f"{p}/tcp" for p in ports):
    problems.append(f"exposed ports {exposed}, not {ports}")
for problem in problems:
    print(f"{name}: {problem}")
sys.exit(1 if problems else 0)
PY
  umoci unpack --image "$layout:latest" "$work/$name" >/dev/null
  chroot --userspec=10001:10001 "$work/$name/rootfs" "/app/$name" --help >/dev/null ||
    { echo "$name: /app/$name --help failed inside the image"; return 1; }
}
for image in "chat-gateway:8080 9080" "chat-router:7070" "chat-persistence-worker:"; do
  name=${image%%:*}
  if check "$name" "${image#*:}"; then echo "image $name: ok"; else failed=$((failed + 1)); fi
done
((failed == 0)) || { echo "images: $failed failed"; exit 1; }
