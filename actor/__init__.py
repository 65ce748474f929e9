"""The actor role: multi-turn RLEF episodes on an inference engine, streamed to the learner hub.

- ``backends/``: the generation interface (``base``) and its engines, ``hf`` (transformers) and ``vllm``;
- ``episodes``: the slot scheduler (K episodes in flight); ``episode``: one episode (feedback turns, final
  scoring); ``episode_records``: what a finished episode leaves (rollout, rewards, timings);
  ``random_feedback``: the random-feedback ablation;
- ``evaluate``: ``rlef evaluate``, with ``evaluation_scores`` (n@k, the report) and ``evaluation_episodes``
  (episodes.jsonl and resume); ``evaluator``: the in-training evaluator;
- ``rewards``: the task reward of each turn; ``problem_stream``: this actor's seeded dataset shard;
- ``weights_sync``: receiving weight versions and the policy-lag gate; ``sinks``: rollout PUSH / JSONL;
- ``main``: one actor process (``rlef actor``); ``cli``: its command line.
"""
