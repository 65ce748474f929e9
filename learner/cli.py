"""`rlef` subcommands of the learner role (found through the rlef.commands entry point; keep imports light).

    torchrun --nproc_per_node N -m rlef.common.cli learner --config FILE [--resume none|auto|PATH] [k=v ...]
    rlef learner --config FILE            (one rank, no torchrun needed)
    rlef export CKPT DIR [--config FILE]  (Hugging Face checkpoint of a learner checkpoint's policy)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rlef.common.cli import add_config_arguments, config_from_args


def _learner(args: argparse.Namespace) -> int:
    from rlef.learner.loop import main

    return main(config_from_args(args), resume=args.resume)


def _export(args: argparse.Namespace) -> int:
    from rlef.learner.checkpoint import CheckpointError, export_hf, resolve_resume

    config = config_from_args(args)
    model_path = args.model_path or config.model.path
    checkpoint = Path(args.checkpoint)
    if args.checkpoint == "latest":
        root = config.learner.checkpoint.dir or config.run.run_dir / "checkpoints"
        checkpoint = resolve_resume("auto", Path(root))
        if checkpoint is None:
            raise CheckpointError(f"rlef export latest: no complete checkpoint under {root}")
    out = export_hf(checkpoint, Path(args.dir), model_path)
    print(f"exported {checkpoint} to {out} (architecture and tokenizer from {model_path})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this role's subcommands (heavy imports stay inside the handlers)."""
    learner = subparsers.add_parser("learner", help="run the FSDP2 PPO learner (launch under torchrun for N ranks)")
    add_config_arguments(learner)
    learner.add_argument("--resume", default="none",
                         help="none: start fresh (default); auto: newest complete checkpoint of the run if any, else "
                              "fresh (spooled rollouts of a crashed run are trained on); or a checkpoint directory")
    learner.set_defaults(func=_learner)

    export = subparsers.add_parser("export", help="write a learner checkpoint's policy as a Hugging Face checkpoint")
    export.add_argument("checkpoint", help="a learner checkpoint directory (…/checkpoints/step-NNNNNNNN), or 'latest': "
                        "the newest complete one of the config's run")
    export.add_argument("dir", help="output directory (safetensors + config + tokenizer)")
    export.add_argument("--model-path", default=None, help="base checkpoint for architecture/tokenizer (default: model.path)")
    add_config_arguments(export)
    export.set_defaults(func=_export)
