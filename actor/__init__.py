"""The actor role: multi-turn RLEF episodes on an inference engine, streamed to the learner hub.

- ``backends/``: the generation interface (``base``) and its engines, ``hf`` (transformers) and ``vllm``;
- ``episodes``: the asyncio episode runner (K episodes in flight, feedback turns, final scoring, rewards);
- ``rewards``: the task reward of each turn; ``problem_stream``: this actor's seeded dataset shard;
- ``weights_sync``: receiving weight versions and the policy-lag gate; ``sinks``: rollout PUSH / JSONL;
- ``main``: one actor process (``rlef actor``); ``cli``: its command line.
"""
