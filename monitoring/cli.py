"""`rlef` subcommands of the monitoring role (found through the rlef.commands entry point; keep imports light).

- ``rlef report RUN_DIR [--prometheus URL] [--out DIR]``: PNG plots + markdown summary of a run.
- ``rlef rollouts RUN_DIR [filters]``: the run's sampled episodes, turn by turn (rlef.monitoring.rollouts_view).
- ``rlef monitoring catalogue [--write docs/metrics.md]``: the metric catalogue generated from the code.
- ``rlef monitoring dashboards``: regenerate the Grafana dashboard JSON from monitoring/dashboards.py.
- ``rlef monitoring targets FILE JOB@HOST:PORT[,label=value...] ...``: write a file_sd targets file.
- ``rlef monitoring prometheus-config OUT_DIR --targets FILE [--deployment local|slurm]``: a run's config copy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _report(args: argparse.Namespace) -> int:
    from rlef.monitoring.report import make_report

    summary = make_report(Path(args.run_dir), prometheus=args.prometheus, out_dir=Path(args.out) if args.out else None, window_s=args.window)
    print(f"report written to {summary}")
    return 0


def _rollouts(args: argparse.Namespace) -> int:
    from rlef.common.errors import ConfigError
    from rlef.monitoring.episode_samples import SampleFilter, parse_version_range, read_samples, samples_dir, select
    from rlef.monitoring.rollouts_view import print_rollouts

    run_dir = Path(args.run_dir)
    if not samples_dir(run_dir).is_dir():
        raise ConfigError(f"{run_dir}: no sampled episodes (no {samples_dir(run_dir)}); actors write them during "
                          "training unless monitoring.episode_samples.enabled is false")
    lo, hi = parse_version_range(args.versions) if args.versions else (None, None)
    keep = SampleFilter(problems=tuple(args.problem), statuses=tuple(args.status), actors=tuple(args.actor),
                        min_version=lo, max_version=hi, fixed_by_feedback=args.fixed_by_feedback,
                        ignored_feedback=args.ignored_feedback, never_code=args.no_code)
    samples = read_samples(run_dir)
    chosen = list(select(samples, keep))
    chosen = chosen[:args.limit] if args.oldest_first else chosen[::-1][:args.limit]
    print_rollouts(chosen, total=len(samples), as_list=args.list, full=args.full)
    return 0


def _catalogue(args: argparse.Namespace) -> int:
    from rlef.monitoring.catalogue import catalogue_text

    text = catalogue_text()
    if args.write:
        Path(args.write).write_text(text)
        print(f"catalogue written to {args.write}")
    else:
        sys.stdout.write(text)
    return 0


def _dashboards(args: argparse.Namespace) -> int:
    from rlef.monitoring.dashboards import write_dashboards

    for path in write_dashboards():
        print(f"dashboard written to {path}")
    return 0


def parse_target(spec: str) -> tuple[str, str, dict[str, str]]:
    """``job@host:port[,k=v...]`` -> (job, "host:port", {k: v})."""
    from rlef.common.errors import ConfigError

    head, *pairs = spec.split(",")
    job, sep, address = head.partition("@")
    if not sep or not job:
        raise ConfigError(f"target {spec!r}: expected JOB@HOST:PORT[,label=value...]")
    labels = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq:
            raise ConfigError(f"target {spec!r}: label {pair!r} is not label=value")
        labels[key] = value
    return job, address, labels


def _targets(args: argparse.Namespace) -> int:
    from rlef.monitoring.targets import write_targets

    path = write_targets(args.file, [parse_target(s) for s in args.targets])
    print(f"{len(args.targets)} target(s) written to {path}")
    return 0


def _prometheus_config(args: argparse.Namespace) -> int:
    from rlef.monitoring.promconfig import write_prometheus_config

    path = write_prometheus_config(args.out_dir, args.targets, deployment=args.deployment, scrape_interval_s=args.scrape_interval)
    print(f"prometheus config written to {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this role's subcommands (heavy imports stay inside the handlers)."""
    report = subparsers.add_parser("report", help="render PNG plots and a markdown summary of a run")
    report.add_argument("run_dir", help="the run directory (holds metrics/*.jsonl)")
    report.add_argument("--prometheus", default=None, metavar="URL", help="read series from this Prometheus when reachable (e.g. http://127.0.0.1:9090)")
    report.add_argument("--out", default=None, help="output directory (default: RUN_DIR/report)")
    report.add_argument("--window", type=float, default=None, metavar="SECONDS", help="Prometheus: time range to plot, ending now (default: the run's metrics log span, else 1 h)")
    report.set_defaults(func=_report)

    rollouts = subparsers.add_parser(
        "rollouts", help="read a run's sampled episodes turn by turn (code highlighted, feedback as the model saw it)",
        description="Print the sampled episodes of RUN_DIR (RUN_DIR/samples, written by the actors), newest first. "
                    "Filters combine (all must hold).",
    )
    rollouts.add_argument("run_dir", help="the run directory (holds samples/<actor>/episodes-*.jsonl)")
    rollouts.add_argument("--problem", action="append", default=[], metavar="ID", help="only this problem id (repeatable)")
    rollouts.add_argument("--status", action="append", default=[], metavar="STATUS",
                          help="final status: pass, wrong_answer, runtime_error, timeout, no_code, ..., or solved / unsolved (repeatable)")
    rollouts.add_argument("--actor", action="append", default=[], metavar="ID", help="only episodes of this actor (actor-0, ...)")
    rollouts.add_argument("--versions", default=None, metavar="A:B", help="policy versions of every turn within A..B (A:, :B, N)")
    rollouts.add_argument("--fixed-by-feedback", action="store_true", help="failed at turn 1, solved at a later turn")
    rollouts.add_argument("--ignored-feedback", action="store_true", help="wrote the same program again after its failure was shown")
    rollouts.add_argument("--no-code", action="store_true", help="never produced a python block")
    rollouts.add_argument("--limit", "-n", type=int, default=5, help="show at most N episodes (default 5)")
    rollouts.add_argument("--oldest-first", action="store_true", help="start from the oldest sampled episode")
    rollouts.add_argument("--list", action="store_true", help="one table row per episode instead of whole conversations")
    rollouts.add_argument("--full", action="store_true", help="do not shorten long problem statements and feedback")
    rollouts.set_defaults(func=_rollouts)

    mon = subparsers.add_parser("monitoring", help="metric catalogue, Prometheus targets and config")
    mon_sub = mon.add_subparsers(dest="monitoring_command", required=True)
    cat = mon_sub.add_parser("catalogue", help="print (or --write) the metric catalogue generated from the metric modules")
    cat.add_argument("--write", metavar="FILE", default=None, help="write it here (docs/metrics.md)")
    cat.set_defaults(func=_catalogue)

    dash = mon_sub.add_parser("dashboards", help="regenerate monitoring/grafana/dashboards/*.json from monitoring/dashboards.py (needs the dev extra)")
    dash.set_defaults(func=_dashboards)

    tgt = mon_sub.add_parser("targets", help="write a Prometheus file_sd targets file (SLURM batch scripts use this)")
    tgt.add_argument("file")
    tgt.add_argument("targets", nargs="+", metavar="JOB@HOST:PORT[,label=value...]")
    tgt.set_defaults(func=_targets)

    cfg = mon_sub.add_parser("prometheus-config", help="write a run's prometheus.yml + rules scraping file_sd targets")
    cfg.add_argument("out_dir")
    cfg.add_argument("--targets", nargs="+", required=True, metavar="FILE_OR_GLOB")
    cfg.add_argument("--deployment", choices=["local", "slurm"], default="local")
    cfg.add_argument("--scrape-interval", type=float, default=None, metavar="SECONDS")
    cfg.set_defaults(func=_prometheus_config)
