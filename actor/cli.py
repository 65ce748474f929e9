"""`rlef` subcommands of the actor role (found through the rlef.commands entry point; keep imports light)."""

from __future__ import annotations

import argparse
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
