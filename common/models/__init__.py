"""Models built locally (nothing is downloaded): the tiny Llama with its tokenizer (:mod:`.tiny_model`, ``rlef
make-tiny-model``) and the warm start the learning proof trains from (:mod:`.warm_start`).
"""
