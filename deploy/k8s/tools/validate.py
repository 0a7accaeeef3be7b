"""Render every overlay and validate each object offline, strictly.

* built-in kinds: against the Kubernetes OpenAPI schemas that ship with ``kubernetes-validate``
  (strict: unknown fields are errors), for each Kubernetes version given (default: the oldest we
  support, 1.33, where native sidecars are GA, and the newest the package knows);
* custom resources: against their CRD's JSON schema in a kubeconform-layout folder
  (``{group}/{kind}_{version}.json``, default ../shared/k8s-schemas: Strimzi 1.2 v1, KEDA,
  prometheus-operator); a custom resource without a schema there is an error, never a skip.

Prints one JSON report on stdout and exits 1 on any error. Needs kubectl (kustomize) on PATH and the
packages jsonschema and kubernetes-validate (``make k8s-tools`` installs them in a venv of their own):

    python deploy/k8s/tools/validate.py [--overlay dev] [--schemas DIR] [--k8s-version 1.33.0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
BUILTIN_GROUPS = {"", "apps", "batch", "policy", "networking.k8s.io", "rbac.authorization.k8s.io", "autoscaling",
                  "storage.k8s.io", "scheduling.k8s.io", "coordination.k8s.io"}


def render(overlay: Path) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, check=True, timeout=120)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def crd_schema(schemas: Path, api_version: str, kind: str) -> Path:
    group, version = api_version.split("/", 1)
    return schemas / group / f"{kind.lower()}_{version}.json"


def validate_overlay(overlay: Path, schemas: Path, versions: list[str]) -> dict:
    docs = render(overlay)
    report = {"objects": len(docs), "builtin": 0, "custom": 0, "kinds": {}, "schemas": {}, "errors": []}
    kinds: Counter[str] = Counter()
    used_schemas: Counter[str] = Counter()
    for doc in docs:
        api, kind, name = doc.get("apiVersion", ""), doc.get("kind", ""), doc.get("metadata", {}).get("name", "")
        kinds[f"{api} {kind}"] += 1
        group = api.split("/", 1)[0] if "/" in api else ""
        where = f"{kind}/{name}"
        if group in BUILTIN_GROUPS:
            report["builtin"] += 1
            for version in versions:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    report["errors"].append(f"{where} (Kubernetes {version}): {exc.message} at {'/'.join(map(str, exc.path))}")
                except kubernetes_validate.SchemaNotFoundError as exc:
                    report["errors"].append(f"{where}: no Kubernetes {version} schema: {exc}")
            used_schemas[f"kubernetes {'/'.join(versions)} strict"] += 1
            continue
        path = crd_schema(schemas, api, kind)
        if not path.exists():
            report["errors"].append(f"{where}: no schema for {api} {kind} (looked for {path})")
            continue
        report["custom"] += 1
        used_schemas[str(path.relative_to(schemas))] += 1
        schema = json.loads(path.read_text())
        validator = jsonschema.validators.validator_for(schema)(schema)
        for error in validator.iter_errors(doc):
            report["errors"].append(f"{where} ({path.name}): {error.message} at /{'/'.join(map(str, error.absolute_path))}")
    report["kinds"] = dict(sorted(kinds.items()))
    report["schemas"] = dict(sorted(used_schemas.items()))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--overlay", action="append", help="overlay name under deploy/k8s/overlays (default: all)")
    parser.add_argument("--schemas", default=str(ROOT.parent / "shared" / "k8s-schemas"),
                        help="kubeconform-layout folder of CRD JSON schemas (default: %(default)s)")
    parser.add_argument("--k8s-version", action="append",
                        help=f"Kubernetes version(s) to validate against (default: 1.33.0 and {kubernetes_validate.latest_version()})")
    args = parser.parse_args(argv)
    overlays = args.overlay or sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
    versions = args.k8s_version or ["1.33.0", kubernetes_validate.latest_version()]
    schemas = Path(args.schemas)
    if not schemas.is_dir():
        print(json.dumps({"error": f"schema folder not found: {schemas}"}))
        return 2
    result = {"kubernetes_versions": versions, "overlays": {}}
    for name in overlays:
        result["overlays"][name] = validate_overlay(K8S / "overlays" / name, schemas, versions)
    print(json.dumps(result, indent=1))
    return 1 if any(r["errors"] for r in result["overlays"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
