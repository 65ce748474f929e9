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
    (found,) = [d for d in docs if d["kind"] in ("Deployment", "Job")
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
    ignore = {"endpoints", "deploy"} | ({"run", "model"} if name == "tiny" else set())
    for section in RlefConfig.model_fields:
        if section not in ignore:
            got, want = getattr(cfg, section).model_dump(), getattr(shipped, section).model_dump()
            got.pop("metrics_port", None), want.pop("metrics_port", None)
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
    for w in [*by_kind(docs, "Deployment"), *by_kind(docs, "Job")]:
        template = w["spec"]["template"]
        notes = template["metadata"]["annotations"]
        ports = {p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        assert notes["prometheus.io/scrape"] == "true" and int(notes["prometheus.io/port"]) in ports
    labels = [w["spec"]["template"]["metadata"]["labels"] for w in [*by_kind(docs, "Deployment"), *by_kind(docs, "Job")]]
    for svc in by_kind(docs, "Service"):
        selector = {k: v for k, v in svc["spec"]["selector"].items() if k != "batch.kubernetes.io/job-completion-index"}
        assert any(selector.items() <= lab.items() for lab in labels), svc["metadata"]["name"]


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
