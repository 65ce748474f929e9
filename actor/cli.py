"""`rlef` subcommands of the actor role (found through the rlef.commands entry point; keep imports light)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this role's subcommands (heavy imports stay inside the handlers)."""
