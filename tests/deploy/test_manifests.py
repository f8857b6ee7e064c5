"""deploy/kubernetes: every overlay renders with kustomize, each object validates against the
Kubernetes schemas (built-in kinds) or the pinned CRD schemas (KEDA, CloudNativePG), offline,
and the fleet keeps the promises docs/deploy.md makes (probes, drain, headless workers, ...)."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import typer.main

from pixelrouter.cli import app
from pixelrouter.config import SERVER_KEYS, Settings
from pixelrouter.providers.config import load_providers

from .kube import (
    CRD_FILES,
    KUBERNETES_VERSIONS,
    OVERLAYS,
    ROOT,
    SCHEMAS,
    crd_schema,
    find,
    render,
)

SRC = ROOT / "src" / "pixelrouter"


def _containers(objects: tuple[dict[str, Any], ...]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            for container in obj["spec"]["template"]["spec"]["containers"]:
                out.append((obj["metadata"]["name"], container))
    return out


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# ------------------------------------------------------------------------------ schemas


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_builtin_kinds_validate_against_the_kubernetes_schemas(overlay: str, version: str) -> None:
    checked = 0
    for obj in render(overlay):
        group = obj["apiVersion"].partition("/")[0]
        if (group, obj["kind"]) in CRD_FILES:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {obj['kind']}/{obj['metadata']['name']} on {version}: {exc}")
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_validate_against_the_pinned_crd_schemas(overlay: str) -> None:
    custom = [
        o for o in render(overlay) if (o["apiVersion"].partition("/")[0], o["kind"]) in CRD_FILES
    ]
    kinds = {o["kind"] for o in custom}
    assert "ScaledObject" in kinds
    if overlay == "gpu":
        assert {"Cluster", "Pooler", "Database"} <= kinds
    for obj in custom:
        schema = crd_schema(obj["apiVersion"], obj["kind"])
        errors = sorted(
            jsonschema.Draft7Validator(schema).iter_errors(obj), key=lambda e: list(e.path)
        )
        assert not errors, f"{obj['kind']}/{obj['metadata']['name']}: " + "; ".join(
            f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors
        )


def test_the_validators_refuse_what_the_api_server_would() -> None:
    """A misspelt field fails both validators, so passing above means something."""
    deployment = find(render("demo"), "Deployment", "pixelrouter-gateway")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)
    scaled = find(render("demo"), "ScaledObject", "pixelrouter-workers")
    scaled["spec"]["minReplicas"] = 1
    assert list(
        jsonschema.Draft7Validator(crd_schema(scaled["apiVersion"], "ScaledObject")).iter_errors(
            scaled
        )
    )  # noqa: E501
    pooler = find(render("gpu"), "Pooler", "pixelrouter-postgres")
    pooler["spec"]["pgbouncer"]["poolMode"] = "statement-ish"
    assert list(
        jsonschema.Draft7Validator(crd_schema(pooler["apiVersion"], "Pooler")).iter_errors(pooler)
    )  # noqa: E501


def test_the_vendored_crds_are_the_pinned_upstream_files() -> None:
    readme = (SCHEMAS / "README.md").read_text()
    for path in CRD_FILES.values():
        digest = hashlib.sha256((SCHEMAS / path).read_bytes()).hexdigest()
        assert f"`{path}` | `{digest}`" in readme, f"{path}: digest {digest} not in README"


# ------------------------------------------------------------------------------ the fleet


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateways_scale_on_cpu_and_survive_a_node_drain(overlay: str) -> None:
    objects = render(overlay)
    hpa = find(objects, "HorizontalPodAutoscaler", "pixelrouter-gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "pixelrouter-gateway"
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = find(objects, "PodDisruptionBudget", "pixelrouter-gateway")
    gateway = find(objects, "Deployment", "pixelrouter-gateway")
    assert pdb["spec"]["selector"]["matchLabels"] == gateway["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_sit_behind_a_headless_service(overlay: str) -> None:
    objects = render(overlay)
    service = find(objects, "Service", "pixelrouter-workers")
    workers = find(objects, "Deployment", "pixelrouter-workers")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == workers["spec"]["selector"]["matchLabels"]
    assert [p["port"] for p in service["spec"]["ports"]] == [8000]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_a_grace_period_longer_than_the_drain(overlay: str) -> None:
    objects = render(overlay)
    for name in ("pixelrouter-gateway", "pixelrouter-workers"):
        deployment = find(objects, "Deployment", name)
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        drain = float(_env(container)["PIXELROUTER_DRAIN_TIMEOUT_S"])
        assert pod["terminationGracePeriodSeconds"] >= drain + 10, name
        startup = container["startupProbe"]
        budget = startup["periodSeconds"] * startup["failureThreshold"]
        if name == "pixelrouter-workers" and overlay == "gpu":
            assert budget >= 600, "a GPU worker gets minutes to load klein 4B"
        assert budget >= 60
        assert pod["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_gateway_signs_stored_images_with_one_secret(overlay: str) -> None:
    """A stored image's URL made by one gateway replica must pass on the others."""
    objects = render(overlay)
    gateway = find(objects, "Deployment", "pixelrouter-gateway")
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    reference = _env(container)["PIXELROUTER_STORAGE_SECRET"]["secretKeyRef"]
    secret = find(objects, "Secret", reference["name"])
    assert len(secret["stringData"][reference["key"]]) >= 32


def test_the_drain_variable_is_the_one_the_server_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIXELROUTER_DRAIN_TIMEOUT_S", "120")
    assert Settings.from_env().drain_timeout_s == 120.0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pixelrouter_variable_is_one_the_server_reads(overlay: str) -> None:
    source = "\n".join(p.read_text() for p in SRC.rglob("*.py"))
    known = set(re.findall(r"PIXELROUTER_[A-Z0-9_]+", source))
    config = (ROOT / "deploy/kubernetes/base/pixelrouter.toml").read_text()
    known |= set(re.findall(r'"env:(PIXELROUTER_[A-Z0-9_]+)"', config))  # read by the config
    for name, container in _containers(render(overlay)):
        for variable in _env(container):
            if variable.startswith("PIXELROUTER_"):
                assert variable in known, f"{name}: {variable} is read by nothing"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_container_arguments_parse_as_pixelrouter_commands(overlay: str) -> None:
    """The args each Deployment gives the image's `pixelrouter` entrypoint are options the
    command has (parsed by the real CLI, not run)."""
    command = typer.main.get_command(app)
    for name, container in _containers(render(overlay)):
        if not name.startswith("pixelrouter-") or name == "pixelrouter-postgres":
            continue
        args = container["args"]
        sub = command.commands[args[0]]  # type: ignore[attr-defined]
        sub.make_context(args[0], list(args[1:]), resilient_parsing=False)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_scale_on_the_queue_with_keda(overlay: str) -> None:
    scaled = find(render(overlay), "ScaledObject", "pixelrouter-workers")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == "pixelrouter-workers"
    assert spec["minReplicaCount"] == 1
    queries = " ".join(t["metadata"]["query"] for t in spec["triggers"])
    assert {t["type"] for t in spec["triggers"]} == {"prometheus"}
    for metric in (
        "pixelrouter_engine_queued_images",
        "pixelrouter_engine_running_images",
        "pixelrouter_engine_estimated_wait_seconds",
    ):
        assert metric in queries
    docs = (ROOT / "docs" / "deploy.md").read_text()
    for trigger in spec["triggers"]:
        query = " ".join(trigger["metadata"]["query"].split())
        assert query in " ".join(docs.split()), f"docs/deploy.md lacks the query {query}"


def test_gpu_workers_ask_for_a_gpu_and_read_weights_from_a_volume() -> None:
    objects = render("gpu")
    workers = find(objects, "Deployment", "pixelrouter-workers")
    pod = workers["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith("worker-cuda:0.1.0")
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
    assert find(objects, "PersistentVolumeClaim", "pixelrouter-models")


def test_gpu_postgres_is_cloudnativepg_behind_pgbouncer_in_transaction_mode() -> None:
    objects = render("gpu")
    cluster = find(objects, "Cluster", "pixelrouter-db")
    pooler = find(objects, "Pooler", "pixelrouter-postgres")
    assert pooler["spec"]["cluster"]["name"] == cluster["metadata"]["name"]
    assert pooler["spec"]["pgbouncer"]["poolMode"] == "transaction"
    assert pooler["spec"]["type"] == "rw"
    # The Pooler's Service is the host the gateways connect to.
    gateway = find(objects, "Deployment", "pixelrouter-gateway")
    url = _env(gateway["spec"]["template"]["spec"]["containers"][0])["PIXELROUTER_DATABASE_URL"]
    assert "@pixelrouter-postgres:5432/" in url
    database = find(objects, "Database", "pixelrouter-workers")
    assert database["spec"]["cluster"]["name"] == "pixelrouter-db"


def test_demo_runs_cpu_demo_workers_and_one_postgres() -> None:
    objects = render("demo")
    workers = find(objects, "Deployment", "pixelrouter-workers")
    (container,) = workers["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["serve", "--demo"]
    assert "nvidia.com/gpu" not in str(container["resources"])
    assert container["image"].endswith("worker-cpu:0.1.0")
    postgres = find(objects, "StatefulSet", "pixelrouter-postgres")
    assert postgres["spec"]["replicas"] == 1
    assert find(objects, "Service", "pixelrouter-postgres")
    init = find(objects, "ConfigMap", "pixelrouter-postgres-init")
    assert "CREATE DATABASE pixelrouter_workers" in "".join(init["data"].values())


# ------------------------------------------------------------------------------ pixelrouter.toml


def test_the_gateway_configuration_is_one_pixelrouter_reads(monkeypatch, tmp_path: Path) -> None:
    """The ConfigMap's pixelrouter.toml: [server] keys the CLI knows and a `pixelrouter`
    provider that finds the workers by DNS through the headless Service."""
    objects = render("demo")
    (config_map,) = [o for o in objects if o["metadata"]["name"].startswith("pixelrouter-config")]
    text = config_map["data"]["pixelrouter.toml"]
    data = tomllib.loads(text)
    assert set(data["server"]) <= SERVER_KEYS
    (workers,) = data["providers"]
    assert workers["type"] == "pixelrouter"
    assert workers["discovery"] == "dns"
    assert workers["url"].startswith(
        "http://pixelrouter-workers.pixelrouter.svc.cluster.local:8000"
    )
    gateway = find(objects, "Deployment", "pixelrouter-gateway")
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["config"]
    assert container["args"][container["args"].index("--config") + 1] == f"{mount}/pixelrouter.toml"
    monkeypatch.setenv("PIXELROUTER_WORKER_KEY", "sk-pr-v1-" + "3" * 64)
    (provider,) = load_providers(text)
    assert provider.api_key == "sk-pr-v1-" + "3" * 64
    assert provider.discovery is not None and provider.discovery.type == "dns"
