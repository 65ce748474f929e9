"""Prometheus config for one run: copy the shipped scrape config and rules into the run directory.

Scope: the local launcher and the SLURM batch script start Debian's ``prometheus`` against a self-contained
copy (``RUN_DIR/prometheus/prometheus.yml`` + ``rules/``) whose file_sd files point at the targets file they
write with :func:`rlef.monitoring.targets.write_targets`. Kubernetes uses
monitoring/prometheus/prometheus-kubernetes.yml as shipped (as a ConfigMap). Nothing here starts processes
except :func:`start_prometheus`, which tests and the launcher use.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from rlef.common.errors import ConfigError

PROMETHEUS_DIR = Path(__file__).parent / "prometheus"
CONFIGS = {"local": "prometheus-local.yml", "slurm": "prometheus-slurm.yml", "kubernetes": "prometheus-kubernetes.yml"}


def _duration(seconds: float) -> str:
    return f"{int(round(seconds * 1000))}ms"


def write_prometheus_config(
    out_dir: str | os.PathLike,
    targets_files: list[str | os.PathLike],
    deployment: str = "local",
    scrape_interval_s: float | None = None,
) -> Path:
    """Write ``out_dir/prometheus.yml`` (+ ``out_dir/rules/``) scraping the file_sd ``targets_files``; returns it.

    ``targets_files`` may hold globs (``.../targets/*.json``); relative paths are taken from the caller's cwd
    and written absolute. ``scrape_interval_s`` overrides scrape and rule evaluation intervals.
    """
    if deployment not in ("local", "slurm"):
        raise ConfigError(f"deployment {deployment!r}: file_sd configs exist for local and slurm (kubernetes ships as is)")
    out = Path(out_dir)
    (out / "rules").mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((PROMETHEUS_DIR / CONFIGS[deployment]).read_text())
    rule_files = []
    for rel in config.get("rule_files", []):
        dest = out / "rules" / Path(rel).name
        shutil.copyfile(PROMETHEUS_DIR / rel, dest)
        rule_files.append(str(dest.resolve()))
    config["rule_files"] = rule_files
    if scrape_interval_s is not None:
        config["global"]["scrape_interval"] = _duration(scrape_interval_s)
        config["global"]["evaluation_interval"] = _duration(scrape_interval_s)
        config["global"]["scrape_timeout"] = _duration(scrape_interval_s * 0.8)
    files = [str(Path(f).absolute()) for f in targets_files]
    for job in config["scrape_configs"]:
        for sd in job.get("file_sd_configs", []):
            sd["files"] = files
            if scrape_interval_s is not None:
                sd["refresh_interval"] = _duration(max(scrape_interval_s, 1.0))
    path = out / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def prometheus_command(config: str | os.PathLike, tsdb_dir: str | os.PathLike, port: int, host: str = "127.0.0.1") -> list[str]:
    """The ``prometheus`` command line for ``config`` (lifecycle API on so tests/launchers can reload)."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise ConfigError("prometheus is not installed: apt-get install -y --no-install-recommends prometheus (scripts/setup.sh)")
    return [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tsdb_dir}",
        f"--web.listen-address={host}:{port}",
        "--web.enable-lifecycle",
        "--storage.tsdb.retention.time=30d",
    ]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (bind to 0, read it back)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout_s: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Block until ``url``/-/ready answers 200; raise ConfigError on timeout or if ``proc`` exits first."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ConfigError(f"prometheus exited with {proc.returncode} before it was ready at {url}")
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.2)
    raise ConfigError(f"prometheus at {url} not ready after {timeout_s:.0f} s (last error: {last})")


def start_prometheus(config: str | os.PathLike, tsdb_dir: str | os.PathLike, port: int, log_path: str | os.PathLike) -> subprocess.Popen:
    """Start prometheus (output to ``log_path``) and wait until it is ready; the caller stops it."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(prometheus_command(config, tsdb_dir, port), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc=proc)
    except BaseException:
        proc.terminate()
        proc.wait(10)
        raise
    return proc
