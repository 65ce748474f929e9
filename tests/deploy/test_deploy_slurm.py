"""The SLURM scripts on a real 3-virtual-node SLURM cluster on localhost (scripts/slurm-local.sh).

Every sbatch/squeue/scancel call and every wait on a job is bounded by a timeout: a request SLURM cannot
meet waits forever otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from rlef.common.config import load_config
from rlef.deploy.specs import free_port_block, with_free_ports

ROOT = Path(__file__).resolve().parents[2]
SLURM_LOCAL = ROOT / "scripts" / "slurm-local.sh"
SUBMIT = ROOT / "deploy" / "slurm" / "submit.sh"
ADD_ACTORS = ROOT / "deploy" / "slurm" / "add-actors.sbatch"

pytestmark = [
    pytest.mark.services,
    pytest.mark.skipif(shutil.which("slurmctld") is None or os.geteuid() != 0,
                       reason="needs Debian's slurmctld/slurmd/munge (scripts/setup.sh) and root"),
]  # fmt: skip


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory):
    """A private cluster (own state dir and ports); yields the environment its client commands need."""
    state = tmp_path_factory.mktemp("slurm")
    taken: set[int] = set()
    env = {**os.environ, "RLEF_SLURM_DIR": str(state), "RLEF_SLURM_CTLD_PORT": str(free_port_block(1, taken)),
           "RLEF_SLURM_NODE_PORT": str(free_port_block(3, taken))}  # fmt: skip
    started = subprocess.run(["bash", str(SLURM_LOCAL), "start"], env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    env["SLURM_CONF"] = str(state / "slurm.conf")
    try:
        yield env
    finally:
        subprocess.run(["bash", str(SLURM_LOCAL), "stop"], env=env, capture_output=True, text=True, timeout=120)


def run(cmd: list[str], env: dict, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kw)


def job_state(job: str, env: dict) -> str:
    """'' once the job left the queue (done), else its squeue state(s)."""
    out = run(["timeout", "20", "squeue", "-h", "-j", job, "-o", "%T"], env)
    return out.stdout.strip()


def wait_job_done(job: str, env: dict, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not job_state(job, env):
            return
        time.sleep(0.5)
    run(["timeout", "20", "scancel", job], env)
    raise AssertionError(f"job {job} still queued/running after {timeout} s (cancelled)")


def wait_for(predicate, timeout: float, what: str, job: str | None = None, env: dict | None = None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if job is not None and env is not None and not job_state(job, env):
            raise AssertionError(f"job {job} ended before {what}")
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_submit_test_only_accepts_the_tiny_layout(slurm: dict, tmp_path: Path) -> None:
    out = run(["bash", str(SUBMIT), "--test-only", "configs/tiny-cpu.yaml", f"run.output_dir={tmp_path}"], slurm)
    assert out.returncode == 0, out.stderr
    assert re.search(r"Job \d+ to start at .* on n\d", out.stderr), out.stderr


@pytest.mark.slow
def test_hetjob_groups_land_on_distinct_nodes_and_lib_derives_endpoints(slurm: dict, tmp_path: Path) -> None:
    """The mechanics rlef.sbatch relies on: one node per het group, NodeAddr lookup, flock'ed index allocation."""
    (tmp_path / "slurm").mkdir()
    script = tmp_path / "probe.sbatch"
    script.write_text(f"""#!/bin/bash
#SBATCH --nodes=1 --ntasks-per-node=1
#SBATCH hetjob
#SBATCH --nodes=1 --ntasks-per-node=2
#SBATCH hetjob
#SBATCH --nodes=1 --ntasks-per-node=1
set -euo pipefail
source {ROOT}/deploy/slurm/lib.sh
for g in 0 1 2; do
  var=SLURM_JOB_NODELIST_HET_GROUP_$g
  echo "group $g nodes=${{!var}} addrs=$(rlef_addrs_csv "${{!var}}")"
done
echo 5 > {tmp_path}/slurm/next-actor-index
for g in 0 1 2; do
  timeout 60 srun --het-group=$g bash -c "source {ROOT}/deploy/slurm/lib.sh; echo alloc \\$(rlef_alloc_actor_indices {tmp_path} 3) \\$SLURMD_NODENAME" &
done
wait
""")
    out = run(["timeout", "30", "sbatch", "--parsable", f"--output={tmp_path}/probe.out", str(script)], slurm)
    assert out.returncode == 0, out.stderr
    wait_job_done(out.stdout.strip().split("+")[0], slurm, timeout=120)
    text = (tmp_path / "probe.out").read_text()
    groups = dict(re.findall(r"group (\d) nodes=(n\d) addrs=127\.0\.0\.1", text))
    assert len(groups) == 3 and len(set(groups.values())) == 3, text
    allocs = re.findall(r"alloc (\d+) (n\d)", text)
    assert sorted(int(a) for a, _ in allocs) == [5, 8, 11, 14], text  # 4 tasks (1 + 2 + 1), 3 indices each
    assert (tmp_path / "slurm" / "next-actor-index").read_text().strip() == "17"


def _up_jobs(port: int) -> set[str]:
    """Jobs with a target Prometheus scraped successfully (up == 1)."""
    url = f"http://127.0.0.1:{port}/api/v1/query?query=up"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            result = json.load(resp)["data"]["result"]
    except (OSError, ValueError, KeyError):
        return set()  # not up yet
    return {r["metric"].get("job", "") for r in result if r["value"][1] == "1"}


def _batches(run_dir: Path) -> list[dict]:
    path = run_dir / "learner" / "batches.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_hetjob_trains_and_added_actor_feeds_the_learner(slurm: dict, tmp_path: Path, tiny_model_dir: Path) -> None:
    """The real heterogeneous job with the tiny CPU config, then an add-actors job whose rollouts the learner trains on."""
    free = with_free_ports(load_config(ROOT / "configs" / "tiny-cpu.yaml"))
    ep = free.endpoints
    prom_port = free_port_block(1, set())
    overrides = [
        f"run.output_dir={tmp_path}", "run.name=slurm", f"model.path={tiny_model_dir}", "learner.total_updates=1000",
        "deploy.max_batches=1000", f"endpoints.rollout_port={ep.rollout_port}", f"endpoints.weights_port={ep.weights_port}",
        f"endpoints.control_port={ep.control_port}", f"endpoints.broker_frontend_port={ep.broker_frontend_port}",
        f"endpoints.broker_backend_port={ep.broker_backend_port}", f"learner.metrics_port={free.learner.metrics_port}",
        f"executor.metrics_port={free.executor.metrics_port}", f"actor.metrics_port={free.actor.metrics_port}",
        "learner.batch_rollouts=4", "learner.updates_per_batch=2",
        "monitoring.start_prometheus=true", f"monitoring.prometheus_port={prom_port}", "monitoring.scrape_interval_s=1",
    ]  # fmt: skip
    env = {**slurm, "RLEF_RDZV_PORT": str(free_port_block(1, set()))}
    out = run(["bash", str(SUBMIT), "configs/tiny-cpu.yaml", *overrides], env)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split("+")[0]
    run_dir = tmp_path / "slurm"
    added_job = None
    try:
        wait_for(lambda: len(_batches(run_dir)) >= 2, 420, "two learner batches", job, env)
        assert _batches(run_dir)[1]["step"] > _batches(run_dir)[0]["step"]
        # Prometheus started by the job on the batch host scrapes every role through the allocation's targets.
        wait_for(lambda: _up_jobs(prom_port) >= {"learner", "actor", "executor", "executor-broker"}, 120,
                 "Prometheus to scrape every role", job, env)  # fmt: skip
        add = run(["timeout", "30", "sbatch", "--parsable", "--ntasks=1", f"--output={run_dir}/slurm/add-%j.out",
                   f"--export=ALL,RLEF_HOME={ROOT}", str(ADD_ACTORS), str(run_dir)], env)  # fmt: skip
        assert add.returncode == 0, add.stderr
        added_job = add.stdout.strip()
        assert (run_dir / "slurm" / "next-actor-index").read_text().strip() in ("1", "2")  # allocated once it runs
        wait_for(lambda: (run_dir / "logs" / "actor-1.log").exists(), 120, "the added actor to start", added_job, env)
        seen = wait_for(
            lambda: [b for b in _batches(run_dir) if any(r.startswith("actor-1-") for r in b["rollout_ids"])],
            420, "a learner batch with a rollout of the added actor-1", added_job, env,
        )  # fmt: skip
        assert seen[0]["step"] > 0
    finally:
        for j in (added_job, job):
            if j:
                run(["timeout", "20", "scancel", j], env)
        for j in (added_job, job):
            if j:
                wait_job_done(j, env, timeout=120)
    targets = sorted(p.name for p in (run_dir / "prometheus" / "targets").glob("*.json"))
    assert "slurm.json" in targets
