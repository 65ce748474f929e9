"""The collective weights transport with real gloo process groups: the hub here, receivers in processes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from weights_util import PEER, free_port, make_config, python, state_dict

from rlef.common.protocol.transport import Transport
from rlef.common.weights import make_publisher, state_dict_digest
from rlef.common.weights.collective import CollectivePublisher


NCCL = pytest.param("nccl", marks=pytest.mark.skipif(
    torch.cuda.device_count() < 3, reason="nccl needs one GPU per group member (3); this host has none"))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["gloo", NCCL])
def test_two_receiver_processes_get_identical_tensors(backend: str, transport: Transport, tmp_path: Path) -> None:
    port = free_port()
    overrides = ["weights.type=collective", f"weights.backend={backend}", f"weights.init_port={port}", "weights.actors=2",
                 "weights.bucket_bytes=1000", "weights.timeout_s=60"]
    config = make_config(*overrides)
    # On GPUs each receiver gets its own device (the hub here uses device 0), as actors on a fleet do.
    envs = [dict(os.environ, CUDA_VISIBLE_DEVICES=str(i + 1)) if backend == "nccl" else None for i in range(2)]
    procs = [subprocess.Popen([python(), str(PEER), f"actor-{i}", "3", "90", *overrides], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=envs[i]) for i in range(2)]
    # The learner's own default group lives beside the weights group and must keep working.
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "default-store"), 1), rank=0, world_size=1)
    try:
        sds = {v: state_dict(v, scale=20) for v in (1, 2, 3)}  # bucket 1000 B: dozens of buckets a version
        with make_publisher(config, transport) as pub:
            assert isinstance(pub, CollectivePublisher)
            for version, sd in sds.items():
                pub.publish(version, sd)
                assert pub.wait_broadcast(version, timeout_s=90), pub.error
                total = torch.ones(1)
                dist.all_reduce(total)  # the default group is untouched by the weights group
                assert total.item() == 1.0
            outs = [p.communicate(timeout=90)[0] for p in procs]
    finally:
        dist.destroy_process_group()
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    for out in outs:
        lines = [json.loads(line) for line in out.splitlines()]
        assert lines[-1]["version"] == 3
        for line in lines:
            assert line["digest"] == state_dict_digest(sds[line["version"]])


def test_collective_needs_at_least_one_actor() -> None:
    from rlef.common.errors import WeightsError

    with pytest.raises(WeightsError, match="at least one actor"):
        CollectivePublisher(host="127.0.0.1", port=free_port(), world_size=1)
