"""The ``rlef`` command line.

Built-in commands live here; each role adds its own subcommands through the ``rlef.commands`` entry-point
group (pyproject.toml), so ``common/`` never imports a role. A command module exposes
``register(subparsers) -> None`` and keeps heavy imports (torch, transformers, vllm) inside its handlers, so
``rlef --help`` answers without importing torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path

from rlef.common.errors import RlefError
from rlef.common.models.warm_start import RETRIES

log = logging.getLogger("rlef")

DEFAULT_CONFIG = "configs/tiny-cpu.yaml"


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The `--config FILE` + trailing `key=value` overrides every role command takes."""
    parser.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=f"YAML config (default: {DEFAULT_CONFIG})")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides, e.g. learner.lr=1e-6")


def config_from_args(args: argparse.Namespace):  # -> RlefConfig, kept unannotated to avoid importing pydantic here
    """Load the command's config; its ``run.log_level`` becomes the process' level unless ``--log-level`` was given.

    Every role command loads its config here, so one key sets the level of every role of a run (the launcher
    starts them with the same file); the command line still wins for one process."""
    from rlef.common.config import load_config

    config = load_config(args.config, args.overrides)
    if getattr(args, "log_level", None) is None:
        logging.getLogger().setLevel(config.run.log_level)
    return config


def _config_show(args: argparse.Namespace) -> int:
    from rlef.common.config import dump_config, load_config

    sys.stdout.write(dump_config(load_config(args.file, args.overrides)))
    return 0


def _make_tiny_model(args: argparse.Namespace) -> int:
    from rlef.common.models.tiny_model import is_current, make_tiny_model

    if args.if_stale and args.sft_steps is None and is_current(Path(args.dir), seed=args.seed):
        print(f"tiny model in {args.dir} is current; not rebuilt")
        return 0
    out = make_tiny_model(Path(args.dir), seed=args.seed, **({} if args.sft_steps is None else {"sft_steps": args.sft_steps}))
    print(f"tiny model written to {out}")
    return 0


def _make_warm_start(args: argparse.Namespace) -> int:
    from rlef.common.models.warm_start import DEFAULT_STEPS, is_current, make_warm_start

    if args.if_stale and is_current(Path(args.dir), Path(args.tasks), seed=args.seed, steps=args.steps or DEFAULT_STEPS,
                                    retry=args.retry):
        print(f"warm start in {args.dir} is current; not rebuilt")
        return 0
    given = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr}
    out = make_warm_start(Path(args.dir), Path(args.tasks), seed=args.seed, threads=args.threads, retry=args.retry,
                          **{k: v for k, v in given.items() if v is not None})
    print(f"warm start written to {out}")
    return 0


def _make_feedback_tasks(args: argparse.Namespace) -> int:
    from rlef.common.data.feedback_tasks import (
        GENERATOR_VERSION, check_hold_out, draw_conventions, held_out_spec, make_feedback_tasks, read_manifest,
    )

    out = Path(args.dir)
    combinations = check_hold_out(args.held_out_combinations, args.held_out_per_operation, args.held_out_inputs)
    if args.if_stale:
        old = read_manifest(out)
        if old is not None:  # manifests before --conventions used all of them
            old.setdefault("conventions", [f.name for f in draw_conventions(args.seed, None)])
        wanted = {"seed": args.seed, "counts": {"train": args.train, "valid": args.valid, "test": args.test},
                  "hidden_fraction": args.hidden_fraction, "generator_version": GENERATOR_VERSION,
                  "conventions": [f.name for f in draw_conventions(args.seed, args.conventions)]}
        held_out = held_out_spec(combinations, args.held_out_per_operation, args.held_out_inputs)
        if old is not None and all(old.get(k) == v for k, v in wanted.items()) and \
                old.get("held_out", held_out_spec(8, 0)) == held_out:
            print(f"feedback tasks in {out} are current; not rebuilt")
            return 0
    manifest = make_feedback_tasks(out, seed=args.seed, train=args.train, valid=args.valid, test=args.test,
                                   hidden_fraction=args.hidden_fraction, held_out_combinations=args.held_out_combinations,
                                   held_out_per_operation=args.held_out_per_operation,
                                   held_out_inputs=args.held_out_inputs, conventions=args.conventions)
    kinds = ", ".join(f"{s} {k['shown']} shown + {k['hidden']} hidden" for s, k in manifest["kinds"].items())
    held = ("disjoint input pairs, every combination in every split" if args.held_out_inputs
            else f"held-out test combinations: {', '.join(manifest['combinations']['test'])}")
    print(f"feedback tasks written to {out} (seed {args.seed}): {kinds}; {held}")
    return 0


def _data_inspect(args: argparse.Namespace) -> int:
    from rlef.common.data.loaders import inspect_dataset

    print(inspect_dataset(args.path, dataset=args.dataset, split=args.split))
    return 0


def _keys_generate(args: argparse.Namespace) -> int:
    from rlef.common.protocol.transport import generate_keys

    out = generate_keys(Path(args.dir))
    print(f"CURVE keys written to {out}; set transport.curve_keys_dir={out} on every role")
    return 0


def _register_builtins(sub: argparse._SubParsersAction) -> None:
    config = sub.add_parser("config", help="show the resolved config")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print a config file with overrides applied and defaults filled in")
    show.add_argument("file")
    show.add_argument("overrides", nargs="*", metavar="key.path=value")
    show.set_defaults(func=_config_show)

    tiny = sub.add_parser("make-tiny-model", help="build the tiny Llama + byte-level BPE test model (no download)")
    tiny.add_argument("dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--sft-steps", type=int, default=None, help="warm-start steps (default: the builder's; 0 = random weights)")
    tiny.add_argument("--if-stale", action="store_true", help="do nothing when DIR already holds what this would build")
    tiny.set_defaults(func=_make_tiny_model)

    warm = sub.add_parser("make-warm-start", help="the learning proof's warm start: the tiny model trained on "
                          "multi-turn traces that do NOT use the feedback (see rlef.common.models.warm_start)")
    warm.add_argument("dir")
    warm.add_argument("--tasks", required=True, help="a directory made by `rlef data make-feedback-tasks` (its train split is used)")
    warm.add_argument("--seed", type=int, default=0)
    warm.add_argument("--steps", type=int, default=None, help="supervised steps (default: the builder's)")
    warm.add_argument("--batch-size", type=int, default=None)
    warm.add_argument("--lr", type=float, default=None)
    warm.add_argument("--threads", type=int, default=None, help="torch threads during the build (default: all cores)")
    warm.add_argument("--retry", choices=RETRIES, default="uniform",
                      help="how a hidden trace's later turns guess: any convention, or one the trace has not tried yet "
                      "(neither reads the feedback's expected output)")
    warm.add_argument("--if-stale", action="store_true", help="do nothing when DIR already holds what this would build")
    warm.set_defaults(func=_make_warm_start)

    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    inspect = data_sub.add_parser("inspect", help="summarise a dataset: problems kept, dropped and why, test counts")
    inspect.add_argument("path", help="dataset directory/file, or 'sample' / 'humaneval' for the bundled ones")
    inspect.add_argument("--dataset", choices=["codecontests", "humaneval", "sample"], default=None)
    inspect.add_argument("--split", default="train")
    inspect.set_defaults(func=_data_inspect)
    tasks = data_sub.add_parser("make-feedback-tasks", help="generate the learning proof's problem family (CodeContests "
                                "layout): conventions that only the feedback reveals, mixed with first-turn-solvable ones")
    tasks.add_argument("dir")
    tasks.add_argument("--seed", type=int, default=0, help="a new seed draws new held-out combinations and inputs")
    tasks.add_argument("--train", type=int, default=2000, help="problems in the train split")
    tasks.add_argument("--valid", type=int, default=96, help="problems in the valid split")
    tasks.add_argument("--test", type=int, default=192, help="problems in the test split")
    tasks.add_argument("--hidden-fraction", type=float, default=0.75, help="share of problems whose convention is hidden")
    tasks.add_argument("--held-out-combinations", type=int, default=None,
                       help="(operation, convention) pairs held out for each of valid and test (default 8)")
    tasks.add_argument("--held-out-per-operation", type=int, default=0,
                       help="instead: each operation holds out this many conventions for each of valid and test (balanced: "
                       "every operation keeps the same number in train)")
    tasks.add_argument("--held-out-inputs", action="store_true",
                       help="instead: hold out input pairs (a, b), not combinations; every split draws from all "
                       "(operation, convention) combinations alike, so no convention is one training never rewards")
    tasks.add_argument("--conventions", type=int, default=None,
                       help="use this many of the 8 output conventions, drawn for the seed (with --held-out-inputs); "
                       "a blind guess then hits 1 in this many; 1 is learnable without the feedback (CI's reward test)")
    tasks.add_argument("--if-stale", action="store_true", help="do nothing when DIR holds the same seed, counts and mix")
    tasks.set_defaults(func=_make_feedback_tasks)

    keys = sub.add_parser("keys", help="CURVE key management")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    gen = keys_sub.add_parser("generate", help="write a server and a client CURVE key pair into DIR")
    gen.add_argument("dir")
    gen.set_defaults(func=_keys_generate)


def _register_roles(sub: argparse._SubParsersAction) -> None:
    for ep in sorted(entry_points(group="rlef.commands"), key=lambda e: e.name):
        module = ep.load()
        module.register(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlef",
        description="RLEF: reinforcement learning from execution feedback for code LLMs.",
    )
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log level of this process (default: the config's run.log_level, INFO until it is read)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _register_builtins(sub)
    _register_roles(sub)
    return parser


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level or "INFO")
    try:
        return int(args.func(args) or 0)
    except RlefError as exc:
        print(f"rlef {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
