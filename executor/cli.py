"""`rlef` subcommands of the executor role (found through the rlef.commands entry point; keep imports light).

- ``rlef executor [--index N] [--id ID] [-c CONFIG] [key=value ...]``: a pool of ``executor.workers``
  sandboxes connected to the broker backend ``tcp://endpoints.broker_host:endpoints.broker_backend_port``;
  metrics on ``executor.metrics_port + N`` (0 = none).
- ``rlef executor-broker [-c CONFIG] [key=value ...]``: binds the frontend (requesters) on
  ``endpoints.bind_host:broker_frontend_port`` and the backend (workers) on ``broker_backend_port``; metrics
  on ``executor.metrics_port - 1``.
Both stop cleanly on SIGINT/SIGTERM.
- ``rlef sandbox run PROGRAM --input FILE --expected FILE [--time-limit S] [--memory-limit BYTES] [--json]``:
  one program through the real sandbox as a training job runs it (executor/sandbox_run.py).
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket

from rlef.common.cli import add_config_arguments, config_from_args

log = logging.getLogger(__name__)


def _metrics_port(base: int, offset: int) -> int:
    return base + offset if base > 0 else 0


def _run_executor(args: argparse.Namespace) -> int:
    import asyncio

    from rlef.common.protocol.transport import Transport
    from rlef.executor.worker import ExecutorPool
    from rlef.monitoring.metrics import serve_metrics

    config = config_from_args(args)
    executor_id = args.id or f"executor-{socket.gethostname()}-{args.index}"
    endpoints = config.endpoints
    backend = endpoints.broker(endpoints.broker_backend_port)
    serve_metrics("executor", executor_id, _metrics_port(config.executor.metrics_port, args.index))

    async def main() -> None:
        transport = Transport(config.transport, asyncio=True)
        try:
            pool = ExecutorPool(transport, backend, config.executor, executor_id)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, pool.stop)
            await pool.serve()
        finally:
            transport.close()

    asyncio.run(main())
    return 0


def _run_broker(args: argparse.Namespace) -> int:
    from rlef.common.protocol.transport import Transport
    from rlef.executor.broker import Broker
    from rlef.monitoring.metrics import serve_metrics

    config = config_from_args(args)
    endpoints = config.endpoints
    serve_metrics("executor-broker", "broker", _metrics_port(config.executor.metrics_port, -1))
    transport = Transport(config.transport)
    try:
        broker = Broker(
            transport,
            endpoints.bind(endpoints.broker_frontend_port),
            endpoints.bind(endpoints.broker_backend_port),
            config.executor,
        )
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: broker.stop())
        log.info("executor broker: frontend %s, backend %s", endpoints.broker_frontend_port, endpoints.broker_backend_port)
        broker.run()
        broker.close()
    finally:
        transport.close()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this role's subcommands (heavy imports stay inside the handlers)."""
    executor = subparsers.add_parser("executor", help="run a pool of nsjail sandboxes serving the executor broker")
    executor.add_argument("--index", type=int, default=0, help="executor number on this host (metrics port offset)")
    executor.add_argument("--id", default=None, help="executor id (default: executor-HOST-INDEX)")
    add_config_arguments(executor)
    executor.set_defaults(func=_run_executor)

    broker = subparsers.add_parser("executor-broker", help="run the load-balancing broker between actors and executors")
    add_config_arguments(broker)
    broker.set_defaults(func=_run_broker)

    from rlef.executor import sandbox_run

    sandbox_run.register(subparsers)
