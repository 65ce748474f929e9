"""The default weights transport: chunked, checksummed, credit-flow-controlled transfer over ZeroMQ, with
receivers relaying chunks to each other so the hub's egress per version does not grow with the fleet.

Protocol (ROUTER bound on the hub at ``endpoints.weights_port``, one DEALER per receiver; frames are
messages of rlef.common.protocol.messages):

    receiver -> hub   WeightsRequest(op="get", version=<newest held, -1 none>, relay=<its relay endpoint or "">)
    hub -> receiver   WeightsSource(v, endpoint) + WeightsManifest of the current version v when it is newer,
                      else Control(op="ack", version=<hub's current version, -1 none>)
    receiver -> src   WeightsRequest(op="fetch", version=v, index=i)        (``credit`` of them in flight)
    src -> receiver   [WeightsChunk(v, i), <chunk bytes>] (two frames)  or, when v was superseded, the newer manifest

``src`` is the hub itself (``endpoint == ""``) or a peer. This is the ZeroMQ guide's "file transfer" model 3:
the receiver pulls, keeping ``credit`` requests in flight, so a server holds no per-receiver state beyond
``credit`` chunks. The chunk bytes are their own frame: the hub sends them zero-copy from the packed
version, and the receiver reads them straight into the version's buffer (``recv_into``), then checks the
chunk's xxh3-64 against the manifest (:mod:`rlef.common.weights.packing`).

Fan-out (relay): a receiver built with ``relay_bind`` binds its own ROUTER and serves every chunk it holds
(of the version in transfer, or the last complete one) with the same fetch protocol; a fetch of a chunk it
does not have yet waits in a queue until the chunk lands (a pipeline: chunk i travels down the chain while
chunk i+1 arrives). The hub keeps the relaying receivers in a chain in order of arrival: the first fetches
from the hub, each other one from its predecessor, and a late joiner is appended at the end, so it is
served by a peer holding the whole version. The hub sends one copy per version whatever the fleet size;
receivers without a relay fetch from the hub directly.

Failures: a receiver watches the connection to its peer source (a socket monitor). When the peer dies
(connection closed or refused) it tells the hub (``get`` with ``dead=<endpoint>``); the hub drops the peer
from the chain and answers with the new predecessor, and the transfer continues there with the chunks
still missing (chunks already verified are kept). A peer that stays connected but sends nothing for
``relay_stall_s`` is bypassed: the receiver fetches the rest from the hub. Only the dead peer's successor
waits, and only until the disconnect is seen; everyone further down keeps being served by that successor.

Versions, verification, threads, memory: as before the fan-out. An idle receiver sends ``get`` every
``poll_interval_s``; ``notify(v)`` makes it ask at once. A version is handed out only whole with every
chunk checksum matching; a mismatch is counted, logged, and the version requested again (with back-off
when it keeps failing). A transfer without progress for ``stall_timeout_s`` is restarted. The hub serves
from a background thread (``publish`` only packs, once per version); each receiver transfers and relays in
one background thread; each socket is used by exactly one thread. Payload buffers are recycled
(:func:`~rlef.common.weights.packing.populated`) once every tensor view of them is gone, so drop a

Modules: :mod:`.hub` (:class:`~.hub.ZmqPublisher`, the hub side), :mod:`.receiver` (:class:`~.receiver.ZmqReceiver`,
a receiver's transfer thread), :mod:`.relay` (the fan-out half of a receiver: fetching from a peer relay and
serving peers), :mod:`.wire` (the chunk frames and the send helper both ends use).
"""
