"""The Kubernetes scrape job's relabelling, applied by Debian's real Prometheus.

Debian builds Prometheus without Kubernetes discovery, but Prometheus applies a job's ``relabel_configs``
to file_sd targets just the same, and file_sd target groups may carry any label, ``__meta_kubernetes_*``
included. So each test writes the target groups that pod-role Kubernetes SD would produce for some pods
(one target per container port, the bare pod IP for a container without ports, the pod's labels and
annotations sanitised into ``__meta_kubernetes_pod_label_*`` / ``..._annotation_*``, as
discovery/kubernetes/pod.go does) into a file_sd file, runs the shipped job's relabel_configs on it, and
reads the kept targets' labels and the dropped targets from ``/api/v1/targets``.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
import yaml
from rlef.monitoring.promconfig import PROMETHEUS_DIR, free_port, start_prometheus
from rlef.monitoring.prometheus_api import PrometheusAPI

pytestmark = [
    pytest.mark.services,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus missing: run scripts/setup.sh (apt prometheus)"),
]

ROOT = Path(__file__).resolve().parents[2]
META = "__meta_kubernetes_"


def _sanitise(name: str) -> str:
    """Prometheus' strutil.SanitizeLabelName: every character outside [a-zA-Z0-9_] becomes '_'."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _pod_sd_groups(pod: dict) -> list[dict]:
    """The file_sd groups (one per target) Kubernetes pod-role SD makes of ``pod``, a Pod with a status.

    Group labels as in pod.go's podLabels (plus the namespace); per-target labels for each container port,
    or the bare pod IP as address for a container without ports.
    """
    meta, spec, status = pod["metadata"], pod["spec"], pod["status"]
    group = {
        f"{META}namespace": meta["namespace"],
        f"{META}pod_name": meta["name"],
        f"{META}pod_ip": status["podIP"],
        f"{META}pod_ready": "true" if status["phase"] == "Running" else "false",
        f"{META}pod_phase": status["phase"],
        f"{META}pod_node_name": spec["nodeName"],
        f"{META}pod_host_ip": status["hostIP"],
        f"{META}pod_uid": meta["uid"],
    }
    for prefix, present, items in (("pod_label_", "pod_labelpresent_", meta.get("labels", {})),
                                   ("pod_annotation_", "pod_annotationpresent_", meta.get("annotations", {}))):  # fmt: skip
        for key, value in items.items():
            group[f"{META}{prefix}{_sanitise(key)}"] = str(value)
            group[f"{META}{present}{_sanitise(key)}"] = "true"
    containers = [(c, False) for c in spec["containers"]] + [(c, True) for c in spec.get("initContainers", [])]
    groups = []
    for container, is_init in containers:
        base = {f"{META}pod_container_name": container["name"], f"{META}pod_container_image": container.get("image", ""),
                f"{META}pod_container_init": str(is_init).lower()}  # fmt: skip
        ports = container.get("ports", [])
        if not ports:
            groups.append({"targets": [status["podIP"]], "labels": {**group, **base}})
        for port in ports:
            labels = {**group, **base, f"{META}pod_container_port_name": port.get("name", ""),
                      f"{META}pod_container_port_number": str(port["containerPort"]),
                      f"{META}pod_container_port_protocol": port.get("protocol", "TCP")}  # fmt: skip
            groups.append({"targets": [f"{status['podIP']}:{port['containerPort']}"], "labels": labels})
    return groups


def _pod(name: str, ip: str, node: str, template: dict, phase: str = "Running") -> dict:
    """A scheduled Pod made from a pod template (the chart's or a hand-written one)."""
    meta = {**template["metadata"], "name": name, "namespace": "rlef", "uid": f"uid-{name}"}
    return {"metadata": meta, "spec": {**template["spec"], "nodeName": node}, "status": {"phase": phase, "podIP": ip, "hostIP": "192.0.2.1"}}


def _relabelled(tmp_path: Path, pods: list[dict]) -> tuple[list[dict], list[dict]]:
    """Run the shipped Kubernetes job's relabelling on ``pods`` in a real Prometheus: (active, dropped) targets."""
    shipped = yaml.safe_load((PROMETHEUS_DIR / "prometheus-kubernetes.yml").read_text())
    (job,) = shipped["scrape_configs"]
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    sd_file = tmp_path / "pods.json"
    sd_file.write_text(json.dumps([g for pod in pods for g in _pod_sd_groups(pod)], indent=1))
    job["file_sd_configs"] = [{"files": [str(sd_file)]}]
    # Rules are promtool's business (test_monitoring_promtool.py); only discovery + relabelling run here.
    config = {"global": shipped["global"], "scrape_configs": [job]}
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    prom = start_prometheus(config_path, tmp_path / "tsdb", port, tmp_path / "prometheus.log")
    try:
        api = PrometheusAPI(f"http://127.0.0.1:{port}")
        names = {p["metadata"]["name"] for p in pods}
        # The discovery manager hands targets to the scrape pool a few seconds after start: wait until every
        # pod shows up, kept or dropped (deduplicated targets keep the discovered labels of one of theirs).
        deadline = time.monotonic() + 120
        while True:
            data = api.targets()
            active, dropped = data["activeTargets"], data["droppedTargets"]
            seen = {t["discoveredLabels"].get(f"{META}pod_name") for t in active + dropped}
            if seen == names:
                return active, dropped
            if prom.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Prometheus (exit {prom.poll()}) saw pods {sorted(map(str, seen))} of {sorted(names)}:\n"
                            f"{(tmp_path / 'prometheus.log').read_text(errors='replace')[-3000:]}")  # fmt: skip
            time.sleep(0.5)
    finally:
        prom.terminate()
        prom.wait(30)


def _by_id(active: list[dict]) -> dict[str, dict]:
    out = {t["labels"]["id"]: t for t in active}
    assert len(out) == len(active), [t["labels"] for t in active]
    return out


# Pod IPs are on loopback so that the scrapes Prometheus makes of these pretend pods stay on this machine.
SCRAPED = {"prometheus.io/scrape": "true", "prometheus.io/port": "9300"}


def _template(labels: dict[str, str], annotations: dict[str, str], ports: list[int]) -> dict:
    container = {"name": "actor", "image": "ghcr.io/rlef/rlef:0.1.0", "ports": [{"name": f"p{p}", "containerPort": p} for p in ports]}
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": {"containers": [container]}}


def test_kubernetes_relabelling_picks_annotated_pods(tmp_path):
    actor = {"app.kubernetes.io/component": "actor"}
    pods = [
        _pod("rlef-actor-3", "127.0.0.3", "gpu-node-7", _template({**actor, "rlef.io/id": "3"}, SCRAPED, [8080])),
        # No container port: SD gives the bare pod IP; an empty rlef.io/id falls back to the pod name.
        _pod("rlef-actor-4", "127.0.0.4", "gpu-node-8", _template({**actor, "rlef.io/id": ""}, {**SCRAPED, "prometheus.io/path": "/custom"}, [])),
        _pod("rlef-actor-5", "127.0.0.5", "gpu-node-7", _template(actor, {**SCRAPED, "prometheus.io/scrape": "false"}, [9300])),
        _pod("rlef-actor-6", "127.0.0.6", "gpu-node-7", _template(actor, {}, [9300])),
        _pod("rlef-actor-7", "127.0.0.7", "gpu-node-7", _template(actor, SCRAPED, [9300]), phase="Succeeded"),
        _pod("rlef-actor-8", "127.0.0.8", "gpu-node-7", _template(actor, SCRAPED, [9300]), phase="Pending"),
    ]
    active, dropped = _relabelled(tmp_path, pods)
    targets = _by_id(active)
    assert set(targets) == {"3", "rlef-actor-4"}
    three, four = targets["3"], targets["rlef-actor-4"]
    # The container port (8080) is replaced by the annotated one; labels are exactly these five.
    assert three["labels"] == {"instance": "127.0.0.3:9300", "job": "actor", "id": "3", "namespace": "rlef", "node": "gpu-node-7"}
    assert three["scrapeUrl"] == "http://127.0.0.3:9300/metrics"
    assert four["labels"] == {"instance": "127.0.0.4:9300", "job": "actor", "id": "rlef-actor-4", "namespace": "rlef", "node": "gpu-node-8"}
    assert four["scrapeUrl"] == "http://127.0.0.4:9300/custom"
    # scrape "false", no scrape annotation at all, and finished or pending pods are dropped, each exactly once.
    assert sorted(t["discoveredLabels"][f"{META}pod_name"] for t in dropped) == ["rlef-actor-5", "rlef-actor-6", "rlef-actor-7", "rlef-actor-8"]


def test_the_charts_pods_give_one_target_each_with_role_and_pod_name(tmp_path):
    helm = pytest.importorskip("helm_python", reason="dev extra: pip install helm-python-sdk")
    values = yaml.safe_load((ROOT / "deploy" / "k8s" / "values" / "tiny.yaml").read_text())
    manifests = helm.Chart.load(ROOT / "deploy" / "k8s" / "rlef").render(values, name="run1", namespace="rlef")
    workloads = [d for text in manifests.values() for d in yaml.safe_load_all(text) if d and d["kind"] in ("Deployment", "StatefulSet", "Job")]
    # Pod names as their controllers make them: StatefulSet ordinal, Deployment hash + suffix, indexed Job.
    suffix = {"StatefulSet": "-0", "Deployment": "-5d8c7b9f4-x2x7q", "Job": "-0-h7kq2"}
    pods = [_pod(w["metadata"]["name"] + suffix[w["kind"]], f"127.0.1.{i + 1}", f"node-{i}", w["spec"]["template"]) for i, w in enumerate(workloads)]
    assert len(pods) == 4
    active, dropped = _relabelled(tmp_path, pods)
    assert dropped == []
    targets = _by_id(active)
    expected = {}
    for pod in pods:
        name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
        port = pod["metadata"]["annotations"]["prometheus.io/port"]
        role = pod["metadata"]["labels"]["app.kubernetes.io/component"]
        expected[name] = ({"instance": f"{ip}:{port}", "job": role, "id": name, "namespace": "rlef", "node": pod["spec"]["nodeName"]},
                          f"http://{ip}:{port}/metrics")  # fmt: skip
    # Exactly one target per pod although the learner and broker pods expose several container ports.
    assert {k: (t["labels"], t["scrapeUrl"]) for k, t in targets.items()} == expected
    assert {t["labels"]["job"] for t in active} == {"actor", "executor", "executor-broker", "learner"}
    multi_port = {p["metadata"]["name"] for p in pods if len(p["spec"]["containers"][0]["ports"]) > 1}
    assert len(multi_port) == 2
