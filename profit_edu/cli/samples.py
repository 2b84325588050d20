"""``profit-edu samples``: write a few CIFAR-10 test images as PNG files, to try ``run-packed`` on.

The images come from the user's CIFAR-10 copy (``--cifar-root``, ``$PROFIT_EDU_CIFAR10``, the decode cache or the
offline copy); the repository ships none. Without a copy the command writes synthetic images and says so.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import CLIError, Ranged, add_cifar_root, apply_cifar_root, say

__all__ = ["add_samples_parser", "cmd_samples"]


def add_samples_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``samples`` on the ``profit-edu`` subparsers (its handler: :func:`cmd_samples`)."""
    p = commands.add_parser("samples", help="write a few CIFAR-10 test images as PNG files (inputs for run-packed)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/samples"), metavar="DIR",
                   help="where to write <index>_<class>.png (default: runs/samples)")
    p.add_argument("-n", "--count", type=Ranged(int, low=1, high=10_000), default=10, metavar="N",
                   help="how many images, one class after another (default: 10, one of each class)")
    add_cifar_root(p)
    p.set_defaults(handler=cmd_samples)


def cmd_samples(args: argparse.Namespace) -> int:
    """Run ``profit-edu samples``."""
    from PIL import Image

    from ..data import cifar10_or_synthetic, data_banner

    apply_cifar_root(args)
    test, fell_back = cifar10_or_synthetic(False)
    if fell_back:
        say(f"WARNING: {data_banner(True)}")
    # the first image of each class in turn: 0_airplane, 1_automobile, ... (the test split is in class order)
    per_class = [(test.labels == c).nonzero().flatten().tolist() for c in range(test.num_classes)]
    picks = [per_class[i % test.num_classes][i // test.num_classes] for i in range(args.count)]
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        for index in picks:
            name = f"{index}_{test.classes[int(test.labels[index])]}.png"
            Image.fromarray(test.images[index].permute(1, 2, 0).numpy()).save(args.out / name)
    except OSError as err:
        raise CLIError(f"--out {args.out}: {err.strerror or err}") from err
    say(f"wrote {len(picks)} {'synthetic' if fell_back else 'CIFAR-10 test'} images (32x32 RGB PNG) to {args.out}")
    return 0
