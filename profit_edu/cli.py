"""The ``profit-edu`` command line. Each subcommand is a thin layer over the library."""

from __future__ import annotations

import argparse
import sys

from . import __version__

DESCRIPTION = """\
profit-edu: train, evaluate and export sub-4-bit MobileNets with PROFIT (Park & Yoo, ECCV 2020).

The library behind this command is profit_edu; the textbook that explains it is in book/.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="profit-edu", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"profit-edu {__version__}")
    parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
