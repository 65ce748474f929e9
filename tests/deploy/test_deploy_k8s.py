"""The Helm chart (deploy/k8s/rlef): rendered offline with helm-python-sdk for each shipped values file,
validated with `kubernetes-validate --strict`, linted, and checked against the real config schema and CLI."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="dev extra: pip install helm-python-sdk")

from rlef.common.cli import build_parser  # noqa: E402
from rlef.common.config import RlefConfig, load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "k8s" / "rlef"
VALUES = {name: ROOT / "deploy" / "k8s" / "values" / f"{name}.yaml" for name in ("tiny", "8b", "70b")}
CONFIGS = {"tiny": "tiny-cpu.yaml", "8b": "llama3.1-8b-h100.yaml", "70b": "llama3.1-70b-h100.yaml"}
KUBE_VALIDATE = Path(sys.executable).with_name("kubernetes-validate")


def render(values_name: str, extra: dict | None = None) -> list[dict]:
    values = yaml.safe_load(VALUES[values_name].read_text())
    for key, value in (extra or {}).items():
        values.setdefault(key, {}).update(value)
    manifests = helm.Chart.load(CHART).render(values, name="run1", namespace="rlef")
    return [doc for text in manifests.values() for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def workload(docs: list[dict], component: str) -> dict:
    (found,) = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")
                and d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == component]  # fmt: skip
    return found


def rendered_config(docs: list[dict], tmp_path: Path) -> RlefConfig:
    (cm,) = by_kind(docs, "ConfigMap")
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    return load_config(path)


@pytest.mark.parametrize("name", sorted(VALUES))
def test_rendered_manifests_pass_strict_validation(name: str, tmp_path: Path) -> None:
    docs = render(name)
    assert {d["kind"] for d in docs} >= {"ConfigMap", "Service", "Deployment", "Job"}
    out = tmp_path / f"{name}.yaml"
    out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    result = subprocess.run([str(KUBE_VALIDATE), "--strict", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(docs), result.stdout


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    docs = render("tiny")
    workload(docs, "actor")["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1  # not a Container field
    out = tmp_path / "bad.yaml"
    out.write_text(yaml.safe_dump_all(docs))
    result = subprocess.run([str(KUBE_VALIDATE), "--strict", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0


@pytest.mark.parametrize("name", sorted(VALUES))
def test_chart_lints_clean(name: str) -> None:
    report = helm.lint(CHART, yaml.safe_load(VALUES[name].read_text()), strict=True)
    assert not report["errors"] and not [m for m in report["messages"] if m["severity"] >= 2], report


@pytest.mark.parametrize("name", sorted(VALUES))
def test_configmap_is_the_shipped_config_plus_deployment_facts(name: str, tmp_path: Path) -> None:
    docs = render(name)
    cfg = rendered_config(docs, tmp_path)
    shipped = load_config(ROOT / "configs" / CONFIGS[name])
    values = yaml.safe_load(VALUES[name].read_text())
    ignore = {"endpoints", "deploy"} | ({"run", "model", "data"} if name == "tiny" else set())
    for section in RlefConfig.model_fields:
        if section not in ignore:
            got, want = getattr(cfg, section).model_dump(), getattr(shipped, section).model_dump()
            got.pop("metrics_port", None), want.pop("metrics_port", None)
            if section == "transport":  # the chart decides where the keys are (test_curve_is_on_by_default)
                got.pop("curve_keys_dir"), want.pop("curve_keys_dir")
            assert got == want, section
    assert cfg.endpoints.learner_host == "run1-rlef-hub.rlef.svc"
    assert cfg.endpoints.broker_host == "run1-rlef-executor-broker.rlef.svc" and cfg.endpoints.bind_host == "0.0.0.0"
    assert cfg.deploy.actors == values["actors"]["replicas"] and cfg.deploy.executors == values["executors"]["replicas"]
    assert (cfg.deploy.learner_nodes, cfg.deploy.learner_ranks) == (values["learner"]["nodes"], values["learner"]["ranksPerNode"])
    services = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
    hub_ports = {p["port"] for p in services["run1-rlef-hub"]["spec"]["ports"]}
    assert {cfg.endpoints.rollout_port, cfg.endpoints.weights_port, cfg.endpoints.control_port} <= hub_ports
    broker_ports = {p["port"] for p in services["run1-rlef-executor-broker"]["spec"]["ports"]}
    assert broker_ports == {cfg.endpoints.broker_frontend_port, cfg.endpoints.broker_backend_port}


def test_gpu_split_of_the_paper_settings() -> None:
    def gpus(docs, component):
        w = workload(docs, component)
        per_pod = w["spec"]["template"]["spec"]["containers"][0]["resources"].get("limits", {}).get("nvidia.com/gpu", 0)
        pods = w["spec"].get("replicas", w["spec"].get("completions"))
        return per_pod * pods

    for name, (train, infer) in {"8b": (128, 160), "70b": (1024, 1280), "tiny": (0, 0)}.items():
        docs = render(name)
        assert (gpus(docs, "learner"), gpus(docs, "actor")) == (train, infer), name
        assert gpus(docs, "executor") == 0


def _command_argv(container: dict) -> list[str]:
    """The `rlef ...` argv a container runs (shell arithmetic replaced by a number, as the shell would)."""
    if container.get("command") != ["/bin/sh", "-c"]:
        return list(container["args"])  # the image's ENTRYPOINT is `rlef`
    script = container["args"][0]
    script = re.sub(r"\$\(\((?:[^()]|\([^()]*\))*\)\)", "7", script.split(";")[-1])
    words = [w.replace('"$i"', "0").replace("$i", "0") for w in shlex.split(script.replace('"$i"', "0"))]
    words = words[1:] if words[0] == "exec" else words
    if words[0] == "torchrun":
        return words[words.index("rlef.common.cli") + 1 :]
    assert words[0] == "rlef", script
    return words[1:]


def test_every_container_runs_a_real_rlef_command() -> None:
    parser = build_parser()
    docs = render("8b")
    seen = set()
    for component in ("learner", "actor", "executor", "executor-broker"):
        (container,) = workload(docs, component)["spec"]["template"]["spec"]["containers"]
        argv = _command_argv(container)
        args = parser.parse_args(argv)  # SystemExit on an unknown command or option
        assert args.command == component and args.config == "/etc/rlef/config/config.yaml"
        for override in args.overrides:
            assert re.fullmatch(r"(learner|actor)\.metrics_port=\d+", override), override
        seen.add(args.command)
    assert seen == {"learner", "actor", "executor", "executor-broker"}


def test_scrape_annotations_point_at_a_container_port_and_services_select_pods() -> None:
    docs = render("70b")
    for w in [*by_kind(docs, "Deployment"), *by_kind(docs, "StatefulSet"), *by_kind(docs, "Job")]:
        template = w["spec"]["template"]
        notes = template["metadata"]["annotations"]
        ports = {p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        assert notes["prometheus.io/scrape"] == "true" and int(notes["prometheus.io/port"]) in ports
    labels = [w["spec"]["template"]["metadata"]["labels"]
              for w in [*by_kind(docs, "Deployment"), *by_kind(docs, "StatefulSet"), *by_kind(docs, "Job")]]
    for svc in by_kind(docs, "Service"):
        selector = {k: v for k, v in svc["spec"]["selector"].items() if k != "batch.kubernetes.io/job-completion-index"}
        assert any(selector.items() <= lab.items() for lab in labels), svc["metadata"]["name"]


def _run_pod_script(container: dict, pod_name: str, tmp_path: Path) -> list[str]:
    """Run a container's /bin/sh script for real, with a stand-in `rlef` that prints the argv it was given."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "rlef").write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    (fake / "rlef").chmod(0o755)
    assert container["command"] == ["/bin/sh", "-c"]
    out = subprocess.run(["/bin/sh", "-c", container["args"][0]], capture_output=True, text=True, check=True,
                         env={"PATH": f"{fake}:/usr/bin:/bin", "POD_NAME": pod_name})
    return out.stdout.splitlines()


def test_actors_and_executors_are_statefulsets_with_ordinal_shards(tmp_path: Path) -> None:
    """Issue 11 item 11: a pod's shard is its StatefulSet ordinal, not a hash of a random pod name (which let
    two pods take one shard): the pod scripts run for real on each pod name of the set."""
    docs = render("8b")
    headless = {s["metadata"]["name"] for s in by_kind(docs, "Service") if s["spec"].get("clusterIP") == "None"}
    replicas = {}
    for component in ("actor", "executor"):
        w = workload(docs, component)
        assert w["kind"] == "StatefulSet" and w["spec"]["podManagementPolicy"] == "Parallel"
        assert w["spec"]["serviceName"] in headless
        replicas[component] = w["spec"]["replicas"]
    actor = workload(docs, "actor")
    (container,) = actor["spec"]["template"]["spec"]["containers"]
    name = actor["metadata"]["name"]
    indices = []
    for ordinal in range(replicas["actor"]):
        argv = _run_pod_script(container, f"{name}-{ordinal}", tmp_path)
        indices.append(int(argv[argv.index("--actor-index") + 1]))
        assert f"actor.metrics_port={9300 - indices[-1]}" in argv or any(a.startswith("actor.metrics_port=") for a in argv)
    assert indices == list(range(replicas["actor"]))  # every shard once, in ordinal order
    cfg = rendered_config(docs, tmp_path)
    assert cfg.deploy.actors == replicas["actor"] == 160
    # Scaled past deploy.actors without a helm upgrade: wraps around instead of failing the shard check.
    argv = _run_pod_script(container, f"{name}-{replicas['actor'] + 3}", tmp_path)
    assert argv[argv.index("--actor-index") + 1] == "3"
    executor = workload(docs, "executor")
    (container,) = executor["spec"]["template"]["spec"]["containers"]
    ids = [_run_pod_script(container, f"{executor['metadata']['name']}-{k}", tmp_path) for k in range(3)]
    assert [argv[argv.index("--id") + 1] for argv in ids] == ["executor-0", "executor-1", "executor-2"]
    assert all(argv[0] == "executor" and "--index" not in argv for argv in ids)


@pytest.mark.parametrize("name", sorted(VALUES))
def test_curve_is_on_by_default(name: str, tmp_path: Path) -> None:
    """Issue 11 item 9: every shipped values file runs with CURVE unless told otherwise: the config every pod
    reads names the mounted keys and every workload mounts the Secret."""
    docs = render(name)
    assert str(rendered_config(docs, tmp_path).transport.curve_keys_dir) == "/etc/rlef/curve"
    for w in [*by_kind(docs, "Deployment"), *by_kind(docs, "StatefulSet"), *by_kind(docs, "Job")]:
        spec = w["spec"]["template"]["spec"]
        assert any(v.get("secret", {}).get("secretName") == "rlef-curve" for v in spec["volumes"]), w["metadata"]["name"]
        assert all(any(m["mountPath"] == "/etc/rlef/curve" for m in c["volumeMounts"]) for c in spec["containers"])
    off = render(name, {"curve": {"enabled": False}})
    assert rendered_config(off, tmp_path).transport.curve_keys_dir is None


def test_curve_secret_is_mounted_at_the_configured_keys_dir(tmp_path: Path) -> None:
    keys = {n: f"key {n}" for n in ("server.key", "server.key_secret", "client.key", "client.key_secret")}
    docs = render("tiny", {"curve": {"enabled": True, "keys": keys}})
    cfg = rendered_config(docs, tmp_path)
    assert str(cfg.transport.curve_keys_dir) == "/etc/rlef/curve"
    (secret,) = by_kind(docs, "Secret")
    assert secret["stringData"] == keys
    for w in [*by_kind(docs, "Deployment"), *by_kind(docs, "Job")]:
        spec = w["spec"]["template"]["spec"]
        (vol,) = [v for v in spec["volumes"] if v["name"] == "curve"]
        assert vol["secret"]["secretName"] == secret["metadata"]["name"]
        assert {"path": "authorized/client.key", "key": "client.key"} in vol["secret"]["items"]
        mounts = spec["containers"][0]["volumeMounts"]
        assert {"name": "curve", "mountPath": "/etc/rlef/curve", "readOnly": True} in mounts
