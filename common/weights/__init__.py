"""Weight publishing (learner rank 0) and receiving (actors) behind one interface, three transports.

Learner rank 0::

    publisher = make_publisher(config, transport)        # binds / forms the group / prepares the directory
    publisher.publish(version, full_state_dict)          # HF names, CPU tensors; versions increase
    publisher.close()

Actor::

    receiver = make_receiver(config, transport, actor_id)
    got = receiver.poll(timeout_s=0.0)                   # ReceivedWeights | None: whole, verified, newest
    if got: backend.load_weights(got)                    # got.version, got.tensors, got.path (filesystem)
    receiver.notify(hub_version)                         # optional hint from the control channel
    receiver.close()

``config.weights.type`` picks the transport: ``zmq`` (default, elastic; :mod:`.zmq`),
``collective`` (torch.distributed broadcast, fixed group; :mod:`.collective`), ``filesystem`` (shared
directory of safetensors; :mod:`.filesystem`).
"""

from __future__ import annotations

import socket

from rlef.common.config import CollectiveWeights, FilesystemWeights, RlefConfig, ZmqWeights
from rlef.common.errors import ConfigError
from rlef.common.protocol.transport import Transport
from rlef.common.weights.base import ReceivedWeights, WeightPublisher, WeightReceiver
from rlef.common.weights.packing import state_dict_digest

__all__ = [
    "ReceivedWeights",
    "WeightPublisher",
    "WeightReceiver",
    "make_publisher",
    "make_receiver",
    "state_dict_digest",
]


def _filesystem_path(config: RlefConfig, weights: FilesystemWeights):
    return weights.path if weights.path is not None else config.run.run_dir / "weights"


def _collective_world(config: RlefConfig, weights: CollectiveWeights) -> int:
    return 1 + (weights.actors if weights.actors is not None else config.deploy.actors)


def make_publisher(config: RlefConfig, transport: Transport) -> WeightPublisher:
    """The publisher of ``config.weights.type``, for learner rank 0 only."""
    weights = config.weights
    if isinstance(weights, ZmqWeights):
        from rlef.common.weights.zmq.hub import ZmqPublisher

        return ZmqPublisher(transport, config.endpoints.bind(config.endpoints.weights_port), chunk_bytes=weights.chunk_bytes)
    if isinstance(weights, CollectiveWeights):
        from rlef.common.weights.collective import CollectivePublisher

        return CollectivePublisher(
            host=config.endpoints.learner_host, port=weights.init_port, world_size=_collective_world(config, weights),
            backend=weights.backend, bucket_bytes=weights.bucket_bytes, timeout_s=weights.timeout_s,
        )
    if isinstance(weights, FilesystemWeights):
        from rlef.common.weights.filesystem import FilesystemPublisher

        return FilesystemPublisher(_filesystem_path(config, weights), keep=weights.keep)
    raise ConfigError(f"weights.type: unknown transport {type(weights).__name__}")


def make_receiver(config: RlefConfig, transport: Transport, receiver_id: str) -> WeightReceiver:
    """The receiver of ``config.weights.type`` for one actor (``receiver_id``: the actor id)."""
    weights = config.weights
    if isinstance(weights, ZmqWeights):
        from rlef.common.weights.zmq.receiver import ZmqReceiver

        relay_bind, relay_host = None, None
        if weights.relay:
            loopback = config.endpoints.learner_host in ("127.0.0.1", "localhost", "::1")
            relay_host = weights.relay_host or ("127.0.0.1" if loopback else socket.gethostname())
            relay_bind = "tcp://127.0.0.1:0" if loopback and weights.relay_host is None else "tcp://*:0"
        return ZmqReceiver(
            transport, config.endpoints.learner(config.endpoints.weights_port), receiver_id,
            credit=weights.credit, poll_interval_s=weights.poll_interval_s, stall_timeout_s=weights.stall_timeout_s,
            relay_bind=relay_bind, relay_host=relay_host, relay_stall_s=weights.relay_stall_s,
        )
    if isinstance(weights, CollectiveWeights):
        from rlef.common.weights.collective import CollectiveReceiver

        return CollectiveReceiver(
            host=config.endpoints.learner_host, port=weights.init_port, world_size=_collective_world(config, weights),
            backend=weights.backend, bucket_bytes=weights.bucket_bytes, timeout_s=weights.timeout_s,
            receiver_id=receiver_id,
        )
    if isinstance(weights, FilesystemWeights):
        from rlef.common.weights.filesystem import FilesystemReceiver

        return FilesystemReceiver(_filesystem_path(config, weights), receiver_id)
    raise ConfigError(f"weights.type: unknown transport {type(weights).__name__}")
