"""Writes the JSON schemas kubeconform validates against, into one directory, from two sources:

- `k8s VERSION SOURCE_DIR OUT`: the Kubernetes API's strict schemas of VERSION as the PyPI
  package kubernetes-validate ships them (`SOURCE_DIR` is its kubernetes-json-schema folder).
  They refer to `/api/_definitions.json` under an `$id` on kubernetes.io; rewritten here to
  refer to the `_definitions.json` beside them, so that they resolve offline.
- `crd OUT CRD_FILE...`: the schema of each version of each CustomResourceDefinition in the
  files (as their projects publish them), made strict: an object with `properties` admits no
  other field, as the API server prunes unknown fields and kubeconform's `-strict` expects.

Files are named as kubeconform's default locations name them: `<kind>-<group>-<version>.json`.
"""

import json
import os
import sys

import yaml

DEFINITIONS = "/api/_definitions.json"


def relative_refs(node):
    if isinstance(node, dict):
        if str(node.get("$id", "")).startswith("https://kubernetes.io/"):
            del node["$id"]
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(DEFINITIONS):
            node["$ref"] = "_definitions.json" + ref[len(DEFINITIONS) :]
        for value in node.values():
            relative_refs(value)
    elif isinstance(node, list):
        for value in node:
            relative_refs(value)


def k8s(version, source, out):
    source = os.path.join(source, f"v{version}-local-strict")
    out = os.path.join(out, f"v{version}-local-strict")
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(source):
        if name.endswith(".json"):
            with open(os.path.join(source, name)) as file:
                schema = json.load(file)
            relative_refs(schema)
            with open(os.path.join(out, name), "w") as file:
                json.dump(schema, file)


def strict(node):
    """OpenAPI v3 of a CRD to JSON schema: no unknown fields, and Kubernetes' extensions."""
    if isinstance(node, list):
        return [strict(value) for value in node]
    if not isinstance(node, dict):
        return node
    node = {key: strict(value) for key, value in node.items()}
    if node.pop("x-kubernetes-int-or-string", False):
        node.pop("type", None)
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.pop("nullable", False) and isinstance(node.get("type"), str):
        node["type"] = [node["type"], "null"]
    preserve = node.pop("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in node and "additionalProperties" not in node and not preserve:
        node["additionalProperties"] = False
    return node


def crd(out, files):
    os.makedirs(out, exist_ok=True)
    for path in files:
        with open(path) as file:
            for document in yaml.safe_load_all(file):
                if not document or document.get("kind") != "CustomResourceDefinition":
                    continue
                spec = document["spec"]
                group = spec["group"].split(".")[0]
                kind = spec["names"]["kind"].lower()
                for version in spec["versions"]:
                    schema = strict(version["schema"]["openAPIV3Schema"])
                    name = f"{kind}-{group}-{version['name']}.json"
                    with open(os.path.join(out, name), "w") as file:
                        json.dump(schema, file)


if __name__ == "__main__":
    if sys.argv[1:2] == ["k8s"] and len(sys.argv) == 5:
        k8s(*sys.argv[2:])
    elif sys.argv[1:2] == ["crd"] and len(sys.argv) >= 4:
        crd(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)
