"""`rlef` subcommands of the deploy role (found through the rlef.commands entry point; keep imports light)."""

from __future__ import annotations

import argparse

from rlef.common.cli import add_config_arguments, config_from_args


def _launch(args: argparse.Namespace) -> int:
    from rlef.deploy.launcher import launch
    from rlef.deploy.process import Backoff
    from rlef.deploy.specs import with_free_ports

    config = config_from_args(args)
    if args.free_ports:
        config = with_free_ports(config)
    backoff = Backoff(base_s=args.backoff_base, max_s=args.backoff_max)
    progress = {"auto": None, "live": True, "log": False}[args.progress]
    return launch(config, resume=args.resume, progress=progress, report=not args.no_report, backoff=backoff, grace_s=args.grace)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this role's subcommands (heavy imports stay inside the handlers)."""
    launch = subparsers.add_parser(
        "launch",
        help="run learner (torchrun), executor broker, executors and actors on this machine, supervised",
        description="Start every role as its own process (own session, log in RUN_DIR/logs/), restart dead actors "
        "and executors with backoff, stop everything on Ctrl-C/SIGTERM; the run ends when the learner exits.",
    )
    add_config_arguments(launch)
    launch.add_argument("--free-ports", action="store_true", help="replace every endpoint and metrics port by a free one")
    launch.add_argument("--resume", action="store_true", help="pass --resume auto to the learner (continue from its newest checkpoint)")
    launch.add_argument("--progress", choices=["auto", "live", "log"], default="auto", help="live table (terminal) or log lines")
    launch.add_argument("--no-report", action="store_true", help="do not run `rlef report RUN_DIR` at the end")
    launch.add_argument("--grace", type=float, default=15.0, help="seconds between SIGTERM and SIGKILL when stopping")
    launch.add_argument("--backoff-base", type=float, default=1.0, help="first restart delay (s), doubled per quick crash")
    launch.add_argument("--backoff-max", type=float, default=60.0, help="cap on the restart delay (s)")
    launch.set_defaults(func=_launch)
