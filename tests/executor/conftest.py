"""Fixtures of the executor tests: a real broker + executor (processes) and clients to it.

Other areas can reuse the same service through ``tests/helpers/executor_service.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


from helpers.executor_service import ExecutorService, start_executor_service

from rlef.common.config import ExecutorConfig, TransportConfig
from rlef.common.protocol.execution_client import ExecutionClient
from rlef.common.protocol.transport import Transport
from rlef.executor.sandbox import Sandbox

# Small caps so oversize jobs are cheap to build.
SERVICE_OVERRIDES = ["executor.max_tests_per_job=500", "executor.max_code_bytes=200000"]


@pytest.fixture(scope="session")
def executor_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExecutorService]:
    """A broker and one executor of 2 sandboxes, shared by the session; yields the service (``.frontend``)."""
    with start_executor_service(tmp_path_factory.mktemp("executor-service"), workers=2, overrides=SERVICE_OVERRIDES) as service:
        yield service


@pytest.fixture(scope="session")
def executor_endpoint(executor_service: ExecutorService) -> str:
    return executor_service.frontend


@pytest.fixture
def sync_client(executor_endpoint: str) -> Iterator[ExecutionClient]:
    with Transport(TransportConfig()) as transport:
        client = ExecutionClient(transport, executor_endpoint, client_id="test", timeout_s=120)
        yield client
        client.close()


@pytest.fixture(scope="session")
def sandbox() -> Sandbox:
    return Sandbox(ExecutorConfig())
