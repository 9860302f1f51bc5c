#!/usr/bin/env bash
# Renders and validates every deployment file offline, with the real tools (deploy/validate/
# tools.sh installs them): `helm lint` of the chart; `helm template` with its default values,
# its production values and values-all.yaml (every branch); the kustomize overlays, which must be
# what deploy/render-k8s.sh writes and hold the chart's objects; strict schema validation of all
# of it, and of the ScyllaCluster example, with kubeconform against the Kubernetes API of the
# oldest and newest versions supported (and the custom resources' own schemas); yamllint;
# nats-server taking the bundled NATS's configuration; every option of the three binaries
# (their `--help`) reaching a rendered manifest; and values that must be refused, refused.
# Exits non-zero at the first failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
tools=$(deploy/validate/tools.sh)
bin=$tools/bin
python=$tools/venv/bin/python
chart=deploy/helm/chat
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
step() { echo "validate: $*" >&2; }

kubeconform() {
  local version
  for version in 1.30.0 1.37.0; do
    "$bin/kubeconform" -strict -summary -kubernetes-version "$version" \
      -schema-location "$tools/schemas/{{.NormalizedKubernetesVersion}}-local{{.StrictSuffix}}/{{.ResourceKind}}{{.KindSuffix}}.json" \
      -schema-location "$tools/schemas/crd/{{.ResourceKind}}{{.KindSuffix}}.json" "$@"
  done
}

step "the schema validation refuses an invalid manifest"
if kubeconform deploy/validate/invalid.yaml >"$work/invalid.log" 2>&1; then
  cat "$work/invalid.log" >&2
  echo "error: kubeconform accepted deploy/validate/invalid.yaml: the validation is not strict" >&2
  exit 1
fi

declare -A values=(
  [default]=""
  [production]="-f $chart/values-production.yaml"
  [all]="-f deploy/validate/values-all.yaml"
)
for name in default production all; do
  step "helm lint and template: $name values"
  # shellcheck disable=SC2086
  "$bin/helm" lint --strict --quiet "$chart" ${values[$name]} >&2
  # shellcheck disable=SC2086
  "$bin/helm" template chat "$chart" ${values[$name]} >"$work/$name.yaml"
done

step "values the chart refuses"
for bad in "worker.store=mysql" "nats.replicas=2" "worker.config.streamReplicas=3" \
  "worker.store=scylla,worker.scylla.user=chat" \
  "nats.enabled=false"; do
  if "$bin/helm" template chat "$chart" --set "$bad" >/dev/null 2>"$work/refused.log"; then
    echo "error: the chart rendered with --set $bad" >&2
    exit 1
  fi
  step "  --set $bad: $(grep -o 'error.*' "$work/refused.log" | head -1 | cut -c1-150)"
done

step "schemas (strict), Kubernetes 1.30 and 1.37: the chart, the ScyllaCluster example"
kubeconform "$work"/default.yaml "$work"/production.yaml "$work"/all.yaml deploy/scylla/*.yaml

step "nats-server takes the bundled NATS's configuration (one server, a cluster)"
for name in default production; do
  "$python" -c 'import sys, yaml
for d in yaml.safe_load_all(sys.stdin):
    if d and d["kind"] == "ConfigMap" and d["metadata"]["name"] == "chat-nats":
        print(d["data"]["nats.conf"])' <"$work/$name.yaml" >"$work/nats-$name.conf"
  POD_NAME=chat-nats-0 nats-server -t -c "$work/nats-$name.conf" >&2
done

step "k8s/: what the chart renders; each overlay valid and the chart's objects"
deploy/render-k8s.sh --check
for overlay in small production; do
  "$bin/kustomize" build "k8s/overlays/$overlay" >"$work/k8s-$overlay.yaml"
  set -- --set auth.existingSecret=chat-secrets
  [ "$overlay" = production ] && set -- "$@" -f "$chart/values-production.yaml"
  "$bin/helm" template chat "$chart" "$@" >"$work/chart-$overlay.yaml"
  kubeconform "$work/k8s-$overlay.yaml"
  "$python" deploy/validate/manifests.py same "$work/chart-$overlay.yaml" "$work/k8s-$overlay.yaml"
done

step "yamllint"
"$bin/yamllint" -s -c deploy/validate/yamllint.yaml "$chart"/values*.yaml "$chart"/charts/*/values.yaml \
  deploy/validate/*.yaml deploy/scylla k8s "$work"

step "every option of the binaries reaches a manifest"
cargo build -q --locked --bin chat-gateway --bin chat-router --bin chat-persistence-worker
for binary in chat-gateway chat-router chat-persistence-worker; do
  "target/debug/$binary" --help
done | grep -o 'env: CHAT_[A-Z_]*' | cut -d' ' -f2 | sort -u >"$work/options"
cat "$work"/{default,all}.yaml | grep -o 'CHAT_[A-Z_]*' | sort -u >"$work/rendered"
missing=$(comm -23 "$work/options" "$work/rendered")
if [ -n "$missing" ]; then
  echo "error: options with no value in the chart: $missing" >&2
  exit 1
fi
step "all valid"
