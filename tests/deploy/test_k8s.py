"""deploy/k8s: every manifest valid against the Kubernetes schema in strict mode (unknown
fields refused), the shape OPERATIONS.md promises (probes, HPA, a GPU per worker, Redis with a
volume and AOF), and the api and worker pods given exactly the settings docker-compose.yml's
x-app-env passes, so a setting added to compose and not here (or the reverse) fails. No
cluster runs here: this is what can be checked without one."""
from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def resources() -> list[dict]:
    return [d for p in MANIFESTS for d in yaml.safe_load_all(p.read_text()) if d]


def one(kind: str, name: str) -> dict:
    found = [d for d in resources() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_is_valid_in_strict_mode(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_the_kustomization_applies_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]


def test_a_manifest_with_an_unknown_field_is_refused():
    # strict mode is what catches a misspelt field: proven on a copy of the api Deployment
    bad = yaml.safe_load(yaml.safe_dump(one("Deployment", "slt-api")))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)


def container(deployment: dict) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def test_api_replicas_probes_resources_and_autoscaling():
    api = one("Deployment", "slt-api")
    c = container(api)
    assert api["spec"]["replicas"] >= 2 and c["args"] == ["api"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    service = one("Service", "slt-api")
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]
    hpa = one("HorizontalPodAutoscaler", "slt-api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "slt-api"}


def test_workers_get_a_gpu_each_and_redis_a_persistent_volume_with_aof():
    c = container(one("Deployment", "slt-worker"))
    assert c["args"] == ["worker"] and c["resources"]["limits"]["nvidia.com/gpu"] == 1
    redis = one("StatefulSet", "slt-redis")
    rc = container(redis)
    args = rc["args"]
    assert args[0] == "redis" and args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in rc["volumeMounts"]
    assert one("Service", "slt-redis")["spec"]["clusterIP"] == "None"
    assert redis["spec"]["serviceName"] == "slt-redis"


def pod_env_names(deployment: dict) -> set[str]:
    """Every variable the pod can receive: its envFrom ConfigMaps' and Secrets' keys, and its
    env entries (a key referenced with optional: true reaches it only when set, as a bare
    name does in compose)."""
    c = container(deployment)
    names = {e["name"] for e in c.get("env", [])}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            names |= set(one("ConfigMap", source["configMapRef"]["name"]).get("data") or {})
        if "secretRef" in source:
            names |= set(one("Secret", source["secretRef"]["name"]).get("stringData") or {})
    return names


@pytest.mark.parametrize("name", ["slt-api", "slt-worker"])
def test_the_pods_get_the_settings_compose_passes(name):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["x-app-env"]
    assert {"SLT_REDIS_URL", "SLT_ADMIN_TOKEN", "SLT_S3_BUCKET"} <= set(compose)  # the source
    got = pod_env_names(one("Deployment", name))
    assert sorted(set(compose) - got) == [], f"{name} never receives these compose settings"
    assert sorted(got - set(compose)) == [], f"{name} receives settings compose does not pass"
    # every reference names a ConfigMap or Secret that the manifests ship, the admin token a Secret
    for e in container(one("Deployment", name)).get("env", []):
        ref = e.get("valueFrom", {})
        for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
            if key in ref:
                one(kind, ref[key]["name"])
                assert ref[key]["key"] == e["name"]
        if e["name"].startswith("AWS_SECRET") or e["name"] in ("SLT_ADMIN_TOKEN", "SLT_READ_TOKEN"):
            assert "secretKeyRef" in ref, e
