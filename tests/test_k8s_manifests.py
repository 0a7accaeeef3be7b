"""The Kubernetes manifests render offline and keep their contracts with the code."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from services.common import metrics
from services.common.topics import ALL_TOPICS
from tests.conftest import IN_CI, ROOT

K8S = ROOT / "deploy" / "k8s"


def render(overlay: str) -> list[dict]:
    if not shutil.which("kubectl"):
        if IN_CI:
            pytest.fail("kubectl is needed to render the manifests")
        pytest.skip("kubectl not installed")
    out = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.parametrize("overlay", ["dev", "production"])
def test_every_service_has_grpc_probes_and_runs_as_non_root(overlay):
    docs = render(overlay)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {"generator", "verifier", "injector", "assessor", "trainer"}
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        server = next(c for c in pod["containers"] if c["name"] == "server")
        assert server["args"][:2] == ["serve", name]
        for probe in ("readinessProbe", "livenessProbe"):
            assert server[probe]["grpc"]["port"] == 50051, f"{name} {probe}"
        assert server["securityContext"]["allowPrivilegeEscalation"] is False
        assert "memory" in server["resources"]["limits"]


def test_production_puts_model_services_on_the_gpu_pool():
    docs = render("production")
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for name in ("injector", "assessor", "trainer"):
        pod = deployments[name]["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"medserl.io/pool": "gpu"}
        gpus = [c["resources"].get("limits", {}).get("nvidia.com/gpu") for c in pod["containers"]]
        assert 1 in gpus, name


def test_kafka_topics_match_the_code():
    docs = render("production")
    topics = {d["spec"]["topicName"] for d in docs if d["kind"] == "KafkaTopic"}
    assert topics == set(ALL_TOPICS)


def test_dashboard_and_alerts_use_only_metrics_the_code_defines():
    defined = set()
    for value in vars(metrics).values():
        name = getattr(value, "_name", None)
        if name:
            defined |= {name, f"{name}_total", f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    dashboard = json.loads((K8S / "components" / "monitoring" / "dashboards" / "medserl.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += re.findall(r"expr: (.+)", (K8S / "components" / "monitoring" / "rules.yaml").read_text())
    used = {m for e in exprs for m in re.findall(r"\b(medserl_[a-z_]+)", e)}
    assert used, "no MedSeRL metric on the dashboard"
    assert used <= defined, f"dashboard/alerts use metrics no service exports: {sorted(used - defined)}"


def test_every_config_file_in_the_manifests_is_valid_for_its_service():
    """A typo in a ConfigMap setting fails here, not in a crash-looping pod."""
    from medserl_cli.registry import load_service_class
    from services.common.settings import load_settings

    for path in sorted((K8S / "base" / "config").glob("*.yaml")):
        cls = load_service_class(path.stem)
        settings = load_settings(cls.settings_cls, path, env={})
        assert settings.grpc_port == 50051 and settings.metrics_port == 9100


def test_example_assessor_configs_load():
    from services.assessor.service import AssessorSettings
    from services.common.settings import load_settings

    backends = {load_settings(AssessorSettings, p, env={}).backend for p in (ROOT / "configs").glob("assessor*.yaml")}
    assert backends == {"transformers", "openai_chat", "baseline_last_sentence"}
