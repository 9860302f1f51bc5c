#!/usr/bin/env bash
# Installs the tools that render and validate the deployment files, once, into a cache; prints
# the cache directory (its bin/ has helm, kustomize, kubeconform and yamllint, venv/bin/python has PyYAML;
# its schemas/ the Kubernetes API schemas and those of the custom resources used).
#
#   tools=$(deploy/validate/tools.sh)
#
# helm, kustomize and kubeconform are built from the Go module proxy (helm takes about 3.5
# minutes of 2 cores the first time); yamllint and the Kubernetes API schemas (the strict
# ones that kubernetes-validate ships) come from PyPI; the custom resources' definitions from
# their projects' Go modules: ServiceMonitor and PrometheusRule (prometheus-operator), HTTPRoute (Gateway API),
# ScyllaCluster (scylla-operator). Environment: CHAT_TOOLS (the cache; default
# ${XDG_CACHE_HOME:-$HOME/.cache}/chat/deploy-tools).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tools=${CHAT_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/chat/deploy-tools}
helm=helm.sh/helm/v4/cmd/helm@v4.3.2
kustomize=sigs.k8s.io/kustomize/kustomize/v5@v5.8.1
kubeconform=github.com/yannh/kubeconform/cmd/kubeconform@v0.7.0
python_packages=(kubernetes-validate==1.37.0 yamllint==1.38.0)
crd_modules=(
  github.com/prometheus-operator/prometheus-operator@v0.88.0:example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml
  github.com/prometheus-operator/prometheus-operator@v0.88.0:example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml
  sigs.k8s.io/gateway-api@v1.6.3:config/crd/standard/gateway.networking.k8s.io_httproutes.yaml
  github.com/scylladb/scylla-operator@v1.18.0:deploy/operator.yaml
)
# The Kubernetes versions validated against: the oldest the chart supports, and the newest.
k8s_versions=(1.30.0 1.37.0)

say() { echo "deploy tools: $*" >&2; }
stamp() { [ "$(cat "$tools/$1.installed" 2>/dev/null)" = "$2" ]; }
mark() { echo "$2" >"$tools/$1.installed"; }
mkdir -p "$tools/bin"

for module in "$helm" "$kustomize" "$kubeconform"; do
  name=${module%@*}
  name=${name##*/}
  [ "$name" = v5 ] && name=kustomize
  stamp "$name" "$module" && continue
  say "building $module (Go module proxy)"
  GOBIN="$tools/bin" GOFLAGS=-trimpath go install "$module" >&2
  mark "$name" "$module"
done

if ! stamp python "${python_packages[*]}"; then
  say "installing ${python_packages[*]} (PyPI)"
  rm -rf "$tools/venv"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install -q "${python_packages[@]}" >&2
  ln -sf ../venv/bin/yamllint "$tools/bin/"
  mark python "${python_packages[*]}"
fi

if ! stamp schemas "${k8s_versions[*]} ${crd_modules[*]}"; then
  say "writing the schemas"
  rm -rf "$tools/schemas"
  source=$("$tools/venv/bin/python" -c 'import kubernetes_validate, os; print(os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema"))')
  for version in "${k8s_versions[@]}"; do
    "$tools/venv/bin/python" "$here/schemas.py" k8s "$version" "$source" "$tools/schemas"
  done
  files=()
  for entry in "${crd_modules[@]}"; do
    dir=$(go mod download -json "${entry%%:*}" | "$tools/venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
    files+=("$dir/${entry#*:}")
  done
  "$tools/venv/bin/python" "$here/schemas.py" crd "$tools/schemas/crd" "${files[@]}"
  mark schemas "${k8s_versions[*]} ${crd_modules[*]}"
fi
echo "$tools"
