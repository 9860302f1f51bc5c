#!/usr/bin/env bash
# Writes the kustomize base and overlays under k8s/ from the Helm chart: the chart rendered with
# its default values (overlays/small) and its production values (overlays/production), release
# `chat`, secrets from the Secret `chat-secrets`; what both share goes to the base. Run it after
# changing the chart. `--check`: changes nothing, fails when k8s/ is not what it would write.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=$(deploy/validate/tools.sh)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for deployment in small production; do
  values=()
  [ "$deployment" = production ] && values=(-f deploy/helm/chat/values-production.yaml)
  "$tools/bin/helm" template chat deploy/helm/chat --set auth.existingSecret=chat-secrets \
    "${values[@]}" >"$work/$deployment.yaml"
done
"$tools/venv/bin/python" deploy/validate/manifests.py split "$work/k8s" "$work/small.yaml" "$work/production.yaml"
if [ "${1:-}" = --check ]; then
  for dir in base overlays; do
    diff -ru "$work/k8s/$dir" "k8s/$dir" >&2 || {
      echo "error: k8s/$dir is not what the chart renders: run deploy/render-k8s.sh" >&2
      exit 1
    }
  done
else
  rm -rf k8s/base k8s/overlays
  cp -r "$work/k8s/base" "$work/k8s/overlays" k8s/
  echo "k8s/base and k8s/overlays written" >&2
fi
