"""``profit-edu reproduce``: an ImageNet recipe on one or many GPUs, launched by torchrun (chapter 9).

The options and what the command does are :mod:`profit_edu.reproduce`'s (``python -m profit_edu.reproduce`` is
the same command); under torchrun use ``torchrun --no-python ... profit-edu reproduce ...`` or ``torchrun ... -m
profit_edu.reproduce ...``.
"""

from __future__ import annotations

import argparse

from .common import CLIError

__all__ = ["add_reproduce_parser", "cmd_reproduce"]

EPILOG = """\
examples:
  profit-edu reproduce --recipe mobilenet_v2_w4a4_imagenet --data /data/imagenet --dry-run
  torchrun --standalone --nproc-per-node 8 -m profit_edu.reproduce \\
      --recipe mobilenet_v2_w4a4_imagenet --data /data/imagenet --out runs/v2_w4a4
"""


def add_reproduce_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``reproduce`` on the ``profit-edu`` subparsers (its handler: :func:`cmd_reproduce`)."""
    from ..reproduce import add_arguments

    p = commands.add_parser(
        "reproduce", help="train an ImageNet recipe on one or many processes (torchrun, DDP), resumably",
        description=("Train a PROFIT ImageNet recipe with DistributedDataParallel: one process per GPU under "
                     "torchrun (NCCL), or processes on a CPU (gloo). Checks the inputs first; rerun to resume."),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(handler=cmd_reproduce)


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run ``profit-edu reproduce``."""
    from ..recipe import RecipeError
    from ..reproduce import reproduce

    try:
        reproduce(args)
    except (FileNotFoundError, RecipeError) as err:
        raise CLIError(str(err)) from err
    return 0
