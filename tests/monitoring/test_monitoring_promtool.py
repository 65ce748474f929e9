"""Prometheus scrape configs and rules, checked by Debian's promtool (real binary, no Prometheus server)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from rlef.monitoring.promconfig import PROMETHEUS_DIR, write_prometheus_config
from rlef.monitoring.targets import write_targets

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing: run scripts/setup.sh (apt prometheus)")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ["prometheus-local.yml", "prometheus-slurm.yml"])
def test_shipped_file_sd_configs_are_valid(name):
    res = promtool("check", "config", str(PROMETHEUS_DIR / name))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 2 rule files found" in res.stdout


def test_kubernetes_config_is_valid_apart_from_the_sd_block(tmp_path):
    """Debian's build leaves kubernetes_sd out; with a different SD block, promtool must accept the rest."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus-kubernetes.yml").read_text())
    res = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus-kubernetes.yml"))
    if res.returncode != 0:
        assert "kubernetes_sd_configs not found" in res.stdout + res.stderr, res.stdout + res.stderr
    job = config["scrape_configs"][0]
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    job["static_configs"] = [{"targets": ["10.0.0.1:9300"]}]
    config["rule_files"] = [str(PROMETHEUS_DIR / r) for r in config["rule_files"]]
    patched = tmp_path / "k8s.yml"
    patched.write_text(yaml.safe_dump(config))
    res = promtool("check", "config", str(patched))
    assert res.returncode == 0, res.stdout + res.stderr


def test_run_config_copy_is_valid(tmp_path):
    targets = write_targets(tmp_path / "targets" / "local.json", [("executor", "127.0.0.1:9200", {"id": "0"})])
    path = write_prometheus_config(tmp_path / "prom", [targets.parent / "*.json"], scrape_interval_s=1.0)
    res = promtool("check", "config", str(path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "WARNING" not in res.stdout + res.stderr  # the targets file exists and is found
    config = yaml.safe_load(path.read_text())
    assert config["global"]["scrape_interval"] == "1000ms"
    assert all(Path(r).is_file() and Path(r).parent == tmp_path / "prom" / "rules" for r in config["rule_files"])


def test_rules_are_valid():
    res = promtool("check", "rules", *map(str, sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))))
    assert res.returncode == 0, res.stdout + res.stderr


def test_rule_unit_tests_pass():
    files = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
    assert files
    res = subprocess.run(["promtool", "test", "rules", *(f.name for f in files)], cwd=PROMETHEUS_DIR / "tests", capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_alert_has_a_unit_test():
    alerts = {r["alert"] for g in yaml.safe_load((PROMETHEUS_DIR / "rules" / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    tested = set()
    for f in (PROMETHEUS_DIR / "tests").glob("*.yml"):
        for case in yaml.safe_load(f.read_text())["tests"]:
            for t in case.get("alert_rule_test", []):
                if t.get("exp_alerts"):
                    tested.add(t["alertname"])
    assert alerts - tested == set(), f"alerts without a firing unit test: {sorted(alerts - tested)}"
