"""What the model reads and writes: the paper's prompt and feedback templates and code extraction
(:mod:`.prompts`), and the chat template's token segments of a multi-turn episode (:mod:`.chat`).
"""
