"""The Kubernetes manifests under k8s/, made from the Helm chart's renderings, and their check.

- `split OUT SMALL PRODUCTION`: SMALL and PRODUCTION are the chart rendered with its default
  and its production values. Objects the two share go to OUT/base, the others to
  OUT/overlays/small and OUT/overlays/production, one file per component, each folder with its
  kustomization.yaml. Helm's own labels are dropped.
- `same RENDERED BUILT`: exits 1 unless the objects of BUILT (a `kustomize build`) are those of
  RENDERED (a `helm template`), but for Helm's labels and the namespace kustomize sets.
"""

import os
import sys

import yaml

HEADER = "# Made by deploy/render-k8s.sh from the Helm chart (deploy/helm/chat): do not edit.\n"
NAMESPACE = "chat"


class Dumper(yaml.SafeDumper):
    """Writes multi-line strings (an embedded file: the NATS configuration, the dashboard) as
    literal blocks, as the chart does, instead of escaped one-line strings."""


def literal_blocks(dumper, value):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


Dumper.add_representer(str, literal_blocks)


def load(path):
    with open(path) as file:
        return [document for document in yaml.safe_load_all(file) if document]


def without_helm(node):
    """The object as kustomize users get it: no Helm chart label, managed by kustomize."""
    if isinstance(node, dict):
        node = {key: without_helm(value) for key, value in node.items()}
        labels = node.get("labels")
        if isinstance(labels, dict) and "helm.sh/chart" in labels:
            del labels["helm.sh/chart"]
            labels["app.kubernetes.io/managed-by"] = "kustomize"
        return node
    if isinstance(node, list):
        return [without_helm(value) for value in node]
    return node


def key(document):
    return (document["kind"], document["metadata"]["name"])


def component(document):
    labels = document["metadata"].get("labels", {})
    if labels.get("app.kubernetes.io/name") == "nats":
        return "nats"
    return labels.get("app.kubernetes.io/component", "chat")


def write(folder, documents, resources, intro):
    os.makedirs(folder, exist_ok=True)
    files = {}
    for document in documents:
        files.setdefault(component(document) + ".yaml", []).append(document)
    for name, group in sorted(files.items()):
        with open(os.path.join(folder, name), "w") as file:
            file.write(HEADER)
            yaml.dump_all(group, file, Dumper=Dumper, sort_keys=False, explicit_start=True)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
    }
    if resources:
        kustomization["namespace"] = NAMESPACE
    kustomization["resources"] = resources + sorted(files)
    with open(os.path.join(folder, "kustomization.yaml"), "w") as file:
        file.write(HEADER + intro)
        yaml.safe_dump(kustomization, file, sort_keys=False)


def split(out, small, production):
    small = {key(d): without_helm(d) for d in load(small)}
    production = {key(d): without_helm(d) for d in load(production)}
    shared = [d for k, d in small.items() if production.get(k) == d]
    write(
        os.path.join(out, "base"),
        shared,
        [],
        "# What the small and the production deployments share.\n",
    )
    for name, objects, intro in [
        ("small", small, "# One NATS server, one worker on the embedded SQLite store.\n"),
        (
            "production",
            production,
            "# ScyllaDB (deploy/scylla), a NATS cluster of three, the stream replicated three\n"
            "# times, three routers, autoscaled gateways, an Ingress and a ServiceMonitor.\n",
        ),
    ]:
        own = [d for k, d in objects.items() if d not in shared]
        write(os.path.join(out, "overlays", name), own, ["../../base"], intro)


def same(rendered, built):
    def normal(document):
        document = without_helm(document)
        document["metadata"].pop("namespace", None)
        return document

    rendered = {key(d): normal(d) for d in load(rendered)}
    built = {key(d): normal(d) for d in load(built)}
    differ = sorted(k for k in rendered.keys() | built.keys() if rendered.get(k) != built.get(k))
    for kind, name in differ:
        print(f"differs from the chart: {kind} {name}", file=sys.stderr)
    return not differ


if __name__ == "__main__":
    if sys.argv[1:2] == ["split"] and len(sys.argv) == 5:
        split(*sys.argv[2:])
    elif sys.argv[1:2] == ["same"] and len(sys.argv) == 4:
        sys.exit(0 if same(*sys.argv[2:]) else 1)
    else:
        sys.exit(__doc__)
