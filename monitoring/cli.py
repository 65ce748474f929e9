"""`rlef` subcommands of the monitoring role (found through the rlef.commands entry point; keep imports light).

- ``rlef report RUN_DIR [--prometheus URL] [--out DIR]``: PNG plots + markdown summary of a run.
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
