"""The deployment files parse, set only variables cms-sync reads, and probe real routes."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route

from cms_sync.app import create_app
from cms_sync.mapping import default_mapping
from cms_sync.metrics import Metrics
from cms_sync.ratelimit import RateLimiter
from cms_sync.settings import Settings
from wiring import make_settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
#: Variables of other programs the files set (the PostgreSQL image's).
FOREIGN = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "PYTHONDONTWRITEBYTECODE"}
FOREIGN |= {"PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK"}


def settings_names() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


def get_routes() -> set[str]:
    app = create_app(make_settings(sanity_webhook_secret="whsec-test"), mapping=default_mapping())
    return {
        route.path
        for route in app.routes
        if isinstance(route, Route) and route.methods is not None and "GET" in route.methods
    }


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def compose() -> dict[str, Any]:
    (document,) = yaml_documents(DEPLOY / "docker-compose.yml")
    return document


def kubernetes() -> dict[str, dict[str, Any]]:
    documents = [d for f in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in yaml_documents(f)]
    return {d["kind"]: d for d in documents}


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments), continuation lines joined, comments left out."""
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = [line.strip() for line in joined.splitlines()]
    return [
        (line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def probed_paths(command: str) -> list[str]:
    return re.findall(r"http://127\.0\.0\.1:8080(/[a-z]+)", command)


def test_the_compose_file_has_the_service_and_optional_postgres_with_two_replicas() -> None:
    services = compose()["services"]
    assert set(services) == {"cms-sync", "postgres", "replica-a", "replica-b"}
    assert "profiles" not in services["cms-sync"]
    for replica in ("replica-a", "replica-b"):
        assert services[replica]["profiles"] == ["postgres"]
        database = services[replica]["environment"]["CMS_SYNC_DATABASE"]
        assert database.startswith("postgresql://") and "@postgres:5432/" in database
        assert services[replica]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["postgres"]["image"] == "postgres:15"


def test_every_variable_the_files_set_is_a_setting() -> None:
    known = settings_names() | FOREIGN
    set_here: dict[str, set[str]] = {}
    for name, service in compose()["services"].items():
        set_here[f"compose {name}"] = set(service.get("environment", {}))
    k8s = kubernetes()
    (container,) = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    set_here["deployment"] = {item["name"] for item in container["env"]}
    secret_text = (DEPLOY / "k8s" / "secret.example.yaml").read_text(encoding="utf-8")
    set_here["secret"] = set(k8s["Secret"]["stringData"]) | set(
        re.findall(r"^\s*#\s*([A-Z][A-Z0-9_]+):", secret_text, re.M)
    )
    set_here["dockerfile"] = {
        pair.split("=", 1)[0]
        for kind, args in dockerfile()
        if kind == "ENV"
        for pair in shlex.split(args)
    }
    unit = (DEPLOY / "cms-sync.service").read_text(encoding="utf-8")
    set_here["systemd"] = set(re.findall(r"^Environment=([A-Z_]+)=", unit, re.M))
    example = (DEPLOY / "cms-sync.env.example").read_text(encoding="utf-8")
    set_here["env example"] = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, re.M))
    for where, names in set_here.items():
        assert names <= known, f"{where}: {sorted(names - known)} are not settings"
    assert set_here["dockerfile"] and set_here["deployment"] and set_here["systemd"]
    # Every secret a deployment needs has its place in the Secret.
    secrets = {"SANITY_WRITE_TOKEN", "SANITY_WEBHOOK_SECRET", "FILESTACK_API_KEY"}
    assert secrets | {"FILESTACK_APP_SECRET"} <= set(k8s["Secret"]["stringData"])
    assert not secrets & set_here["deployment"], "secrets belong in the Secret, not in env"


def test_every_probe_and_healthcheck_hits_a_real_route() -> None:
    routes = get_routes()
    assert {"/healthz", "/readyz", "/metrics"} <= routes
    (container,) = kubernetes()["Deployment"]["spec"]["template"]["spec"]["containers"]
    probes = {container[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")}
    assert probes == {"/healthz", "/readyz"}
    annotations = kubernetes()["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    probed = {annotations["prometheus.io/path"]}
    (health,) = [args for kind, args in dockerfile() if kind == "HEALTHCHECK"]
    probed |= set(probed_paths(health))
    probed |= set(probed_paths(" ".join(compose()["services"]["cms-sync"]["healthcheck"]["test"])))
    assert probed <= routes and len(probed) == 3


def test_the_image_runs_as_a_user_and_installs_as_the_readme_does() -> None:
    instructions = dockerfile()
    users = [args for kind, args in instructions if kind == "USER"]
    assert users and users[-1] not in ("root", "0")
    runs = " ".join(args for kind, args in instructions if kind == "RUN")
    assert "pip install ." in runs
    readme = (DEPLOY.parent / "README.md").read_text(encoding="utf-8")
    assert "pip install -e '.[dev]'" in readme  # the same package; the image skips the extras
    env = dict(
        pair.split("=", 1)
        for kind, args in instructions
        if kind == "ENV"
        for pair in shlex.split(args)
    )
    assert env["CMS_SYNC_DATABASE"].startswith("/data/")
    assert ("VOLUME", '["/data"]') in instructions
    assert env["CMS_SYNC_HOST"] == "0.0.0.0"  # noqa: S104 - a container listens on all


@pytest.mark.parametrize("kind", ["Deployment", "Service", "PersistentVolumeClaim", "Secret"])
def test_the_kubernetes_manifests_parse_and_agree(kind: str) -> None:
    manifests = kubernetes()
    assert kind in manifests
    deployment = manifests["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    if kind == "Service":
        assert manifests[kind]["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    elif kind == "PersistentVolumeClaim":
        claims = {
            v["persistentVolumeClaim"]["claimName"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert claims == {manifests[kind]["metadata"]["name"]}
    elif kind == "Secret":
        (container,) = pod["containers"]
        refs = {e["secretRef"]["name"] for e in container["envFrom"]}
        assert refs == {manifests[kind]["metadata"]["name"]}
    else:
        assert pod["securityContext"]["runAsNonRoot"] is True
        grace = int(
            next(
                e["value"]
                for e in pod["containers"][0]["env"]
                if e["name"] == "CMS_SYNC_SHUTDOWN_GRACE"
            )
        )
        assert pod["terminationGracePeriodSeconds"] > grace


def test_the_systemd_unit_runs_serve_with_a_stop_timeout_above_the_grace() -> None:
    unit = (DEPLOY / "cms-sync.service").read_text(encoding="utf-8")
    sections = re.findall(r"^\[(\w+)\]", unit, re.M)
    assert sections == ["Unit", "Service", "Install"]
    assert re.search(r"^ExecStart=\S+/cms-sync serve$", unit, re.M)
    timeout = int(re.search(r"^TimeoutStopSec=(\d+)", unit, re.M)[1])  # type: ignore[index]
    assert timeout > Settings.model_fields["cms_sync_shutdown_grace"].default


def test_the_grafana_dashboard_uses_only_metrics_the_service_exports() -> None:
    families = text_string_to_metric_families(
        generate_latest(Metrics(RateLimiter()).registry).decode()
    )
    suffixes = ("", "_total", "_bucket", "_count", "_sum")
    exported = {family.name + suffix for family in families for suffix in suffixes}
    dashboard = json.loads((DEPLOY / "grafana" / "cms-sync.json").read_text(encoding="utf-8"))
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bcms_sync_[a-z_]+", target["expr"])
    }
    assert len(used) >= 12
    assert used <= exported, sorted(used - exported)
