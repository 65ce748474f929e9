"""`rlef` subcommands of the actor role (found through the rlef.commands entry point; keep imports light)."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from rlef.common.cli import add_config_arguments, config_from_args


def _actor(args: argparse.Namespace) -> int:
    import asyncio

    from rlef.actor.main import run_actor

    config = config_from_args(args)
    if args.dry_run and args.output is None:
        raise SystemExit("rlef actor --dry-run needs --output FILE.jsonl")
    summary = asyncio.run(
        run_actor(config, index=args.actor_index, dry_run=args.dry_run, output=args.output, episodes=args.episodes)
    )
    print(summary.line())
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import asyncio

    from rlef.actor.evaluate import PROTOCOLS, default_rollouts, run_evaluation

    _, _, temperature, top_p = PROTOCOLS[args.protocol]
    temperature = args.temperature if args.temperature is not None else temperature
    top_p = args.top_p if args.top_p is not None else top_p
    # Explicit flags win over the protocol; trailing key=value overrides win over both (they come last).
    pre = [f"actor.sampling.temperature={temperature}", f"actor.sampling.top_p={top_p}"]
    if args.model is not None:
        pre.append(f"model.path={args.model}")
    if args.executors:
        from rlef.actor.local_sandboxes import private_endpoints

        pre += private_endpoints()
    args.overrides = pre + list(args.overrides)
    config = config_from_args(args)
    split = args.split or config.data.eval_split
    rollouts = args.rollouts_per_problem or default_rollouts(args.protocol, config.actor.max_turns)
    output = args.output or Path(config.run.output_dir) / config.run.name / f"eval-{split}-{args.protocol}"
    models = [_named_model(spec) for spec in args.compare] if args.compare else None
    turn_limits = _int_list(args.turn_limits, "--turn-limits") if args.turn_limits else None
    if models is not None and (turn_limits or args.budget_curve):
        raise SystemExit("rlef evaluate: --compare runs with neither --turn-limits nor --budget-curve (sweep each model "
                         "with --model DIR into its own --output)")
    with contextlib.ExitStack() as stack:
        children = []
        if args.executors:
            from rlef.actor.local_sandboxes import local_sandboxes

            children = stack.enter_context(local_sandboxes(Path(args.config), args.executors, output / "logs", list(args.overrides)))
        from rlef.actor.local_sandboxes import probe

        # Local sandboxes: their start-up (minutes on a loaded machine) is waited for while they live.
        probe(config, timeout_s=args.probe_timeout, children=children, log_dir=output / "logs" if children else None)
        if args.random_feedback and models is None:
            config.actor.random_feedback = True
        if turn_limits or args.budget_curve:
            from rlef.actor import sweeps

            common = dict(output=output, split=split, protocol=args.protocol, limit=args.limit,
                          rollouts=args.rollouts_per_problem)
            if turn_limits:
                sweeps.turn_limit_sweep(config, limits=turn_limits, budget=args.sample_budget, **common)
                print((output / "turn-limits.md").read_text())
            if args.budget_curve:
                sweeps.budget_curve(config, max_k=args.max_k, **common)
                print((output / "budget-curve.md").read_text())
        elif models is not None:
            from rlef.actor.analyses import comparison_plot
            from rlef.actor.compare import comparison_markdown, run_comparison

            result = asyncio.run(run_comparison(config, models=models, split=split, rollouts=rollouts, protocol=args.protocol,
                                                output=output, random_feedback=args.random_feedback, limit=args.limit,
                                                fresh=args.fresh))
            comparison_plot(result, output / "comparison.png")
            print(comparison_markdown(result, result["settings"]))
            print(f"written to {output}/comparison.json, comparison.md, comparison.png and one folder per model and feedback mode")
        else:
            report = asyncio.run(run_evaluation(config, rollouts=rollouts, protocol=args.protocol, output=output,
                                                split=split, limit=args.limit, fresh=args.fresh))
            print(report.markdown())
            print(f"written to {output}/evaluation.json, evaluation.md, episodes.jsonl")
    if args.chrf:
        from rlef.actor.sweeps import chrf_analysis

        chrf_analysis(output, seed=config.run.seed)
        print((output / "analysis-chrf.md").read_text())
    return 0


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"rlef evaluate {flag}: expected comma-separated integers such as 1,3,5,10, got {text!r}") from None
    if not values or min(values) < 1:
        raise SystemExit(f"rlef evaluate {flag}: expected positive integers, got {text!r}")
    return values


def _evaluator(args: argparse.Namespace) -> int:
    import asyncio

    from rlef.actor.evaluator import run_evaluator

    config = config_from_args(args)
    selection = asyncio.run(run_evaluator(config, index=args.index))
    best = selection.best
    print(f"evaluator: {len(selection.history)} evaluations; best version on {selection.key}: "
          f"{'none' if best is None else best['version']} (see {config.run.run_dir / 'eval' / 'best.json'})")
    return 0


def _named_model(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path or "/" in name:
        raise SystemExit(f"rlef evaluate --compare: expected NAME=PATH (for example warm-start=artifacts/warm-start), got {spec!r}")
    return name, path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this role's subcommands (heavy imports stay inside the handlers)."""
    actor = subparsers.add_parser(
        "actor",
        help="run an actor: multi-turn episodes on vLLM or transformers, rollouts streamed to the learner hub",
        description="Run actor i of deploy.actors. With --dry-run: no learner, rollouts written as JSONL.",
    )
    add_config_arguments(actor)
    actor.add_argument("--actor-index", type=int, default=0, help="this actor's index i in 0..deploy.actors-1 (picks its dataset shard)")
    actor.add_argument("--dry-run", action="store_true", help="run against an executor only and write rollouts to --output")
    actor.add_argument("--output", type=Path, default=None, help="JSONL file of --dry-run rollouts (decoded, readable)")
    actor.add_argument("--episodes", type=int, default=None, help="stop after this many episodes (default: run until stopped)")
    actor.set_defaults(func=_actor)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="the paper's evaluation: n@k (1@3, 10@100) with bootstrap CIs and per-turn error analysis",
        description="Run R episodes per problem of a split with a fixed model (no learner) against the executor "
                    "broker; final programs are scored on public + private + generated tests. Writes "
                    "evaluation.json, evaluation.md and episodes.jsonl into --output.",
    )
    add_config_arguments(evaluate)
    evaluate.add_argument("--model", default=None, help="checkpoint directory (default: model.path)")
    evaluate.add_argument("--split", default=None, help="split to evaluate (default: data.eval_split)")
    evaluate.add_argument("--protocol", choices=("1@3", "10@100"), default="1@3",
                          help="sampling of the paper's protocol: 1@3 = temperature 0.2, 10@100 = 1.0; top-p 0.95")
    evaluate.add_argument("--rollouts-per-problem", "-R", type=int, default=None,
                          help="episodes per problem (default: what the protocol needs: 3 for 1@3, k//max_turns = 33 "
                               "for 10@100; the paper uses 200; single-turn 10@100 needs 100)")
    evaluate.add_argument("--limit", type=int, default=None, help="only the first N problems of the split")
    evaluate.add_argument("--temperature", type=float, default=None, help="override the protocol's temperature")
    evaluate.add_argument("--top-p", type=float, default=None, help="override the protocol's top-p")
    evaluate.add_argument("--output", type=Path, default=None,
                          help="output directory (default: <run.output_dir>/<run.name>/eval-<split>-<protocol>)")
    evaluate.add_argument("--compare", nargs="+", metavar="NAME=PATH", default=None,
                          help="evaluate several models on the same problems and write a side-by-side comparison with "
                               "paired bootstrap CIs of the differences (the first model is the baseline)")
    evaluate.add_argument("--random-feedback", action="store_true",
                          help="the paper's ablation: feedback of another problem (with --compare: both real and random)")
    evaluate.add_argument("--executors", type=int, default=0,
                          help="start a local broker and N executors for this evaluation (default 0: use the configured ones)")
    evaluate.add_argument("--probe-timeout", type=float, default=30.0,
                          help="seconds one trivial job may take before the evaluation fails naming the broker endpoint (with "
                               "--executors N it is resent while the local sandboxes start, for up to 5 minutes)")
    evaluator = subparsers.add_parser(
        "evaluator",
        help="the in-training evaluator: receives weights like an actor, evaluates the valid split every N versions, "
             "marks the best checkpoint (RUN_DIR/eval/best.json)",
        description="An actor in evaluation mode (config section `evaluator`): registers with the learner hub, receives "
                    "every weight version, evaluates evaluator.split every evaluator.every_versions versions and "
                    "writes RUN_DIR/eval/curve.jsonl, best.json and best-model/. Sends no rollouts.",
    )
    add_config_arguments(evaluator)
    evaluator.add_argument("--index", type=int, default=0, help="evaluator index (its id is evaluator-<index>)")
    evaluator.set_defaults(func=_evaluator)

    evaluate.add_argument("--fresh", action="store_true",
                          help="single evaluation and --compare: start over, dropping the episodes a previous run left in --output "
                               "(default, and always for the sweeps: resume, running only the episodes missing; a resume refuses "
                               "episodes of another model, settings or checkpoint files)")
    analyses = evaluate.add_argument_group("the paper's analyses (section 5); each writes a table (.md), a plot (.png) and .json")
    analyses.add_argument("--chrf", action="store_true",
                          help="1 - chrF between successive programs per turn (and a per-turn error plot) of every "
                               "evaluation under --output, after the evaluation (a finished output is resumed: nothing runs again)")
    analyses.add_argument("--turn-limits", default=None, metavar="1,3,5,10",
                          help="turn-limit sweep at a fixed budget of --sample-budget samples (a turn is a sample)")
    analyses.add_argument("--sample-budget", type=int, default=30, help="samples per problem of the turn-limit sweep (default 30)")
    analyses.add_argument("--budget-curve", action="store_true",
                          help="solve rate against sample budget: pass@k, 1@k, 10@k for k up to --max-k, multi-turn "
                               "against independent single-turn sampling")
    analyses.add_argument("--max-k", type=int, default=100, help="largest budget of --budget-curve (default 100, as the paper)")
    evaluate.set_defaults(func=_evaluate)
