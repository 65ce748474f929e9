"""The wire between roles: message schemas (:mod:`.messages`, on :mod:`.base`) and their validating decoder
(:mod:`.decoding`), ZeroMQ sockets with CURVE (:mod:`.transport`), the control channel (:mod:`.control_hub`,
:mod:`.control_client`, with the config agreement of :mod:`.config_digest`), the ROUTER serving loop hubs
share (:mod:`.router_loop`) and the executor broker's requester (:mod:`.execution_client`). Weights travel
on their own channel: :mod:`rlef.common.weights`.
"""
