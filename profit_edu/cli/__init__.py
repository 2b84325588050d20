"""The ``profit-edu`` command line. Each subcommand is a thin layer over the library.

Command families, one module each (an ``add_<name>_parser`` function and a ``cmd_<name>`` handler per command,
wired in :func:`build_parser`; add new ones, such as ``aiwq``, the same way):

* :mod:`.train` - ``train``: build a MobileNet, optionally quantize it, train it with
  :func:`profit_edu.train.fit` (``--model``) or a whole PROFIT recipe (``--recipe``), checkpoint every epoch;
* :mod:`.evaluate` - ``evaluate``: rebuild a run's model, print top-1/top-5 (and record them in the ledger);
  ``release``: copy a run's last checkpoint with the weights only (how ``data/pretrained`` is made);
* :mod:`.plan` - ``plan``: print the phase timeline of a PROFIT recipe (:mod:`profit_edu.schedule`);
* :mod:`.packed` - ``pack``: a trained quantized run -> a packed integer model file; ``run-packed``: classify
  images with it (:mod:`profit_edu.packed`);
* :mod:`.samples` - ``samples``: a few CIFAR-10 test images as PNG files, to try ``run-packed`` on;
* :mod:`.reproduce` - ``reproduce``: an ImageNet recipe on one or many processes under torchrun
  (:mod:`profit_edu.reproduce`);
* :mod:`.assignments` - ``assignments build``: the student and instructor editions of the book's assignments
  (and Otter-Grader tests) from their source notebooks;
* :mod:`.common` - what they share: argument types (:class:`~.common.Ranged`), :class:`CLIError`, the device
  choice, the model a run recorded.

Only the command line (and the book's plotting helpers) print; the library logs.

Every failure ends in one line on stderr, never a traceback (``-v`` shows the traceback of an unexpected
``ValueError``): exit 2 for a bad request, 1 for a damaged input, a failed write or a library error, 130 for Ctrl-C.
An interrupted or failed ``train`` says where its last checkpoint is and which command resumes it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from .. import __version__
from .assignments import add_assignments_parser
from .common import CLIError, os_error_line, resume_hint
from .evaluate import add_evaluate_parser, add_release_parser, cmd_evaluate, cmd_release
from .packed import add_pack_commands
from .plan import add_plan_parser, cmd_plan
from .reproduce import add_reproduce_parser
from .samples import add_samples_parser
from .train import SCALES, TrainScale, add_train_parser, cmd_train

__all__ = ["SCALES", "CLIError", "TrainScale", "build_parser", "cmd_evaluate", "cmd_plan", "cmd_release",
           "cmd_train", "main"]

DESCRIPTION = """\
profit-edu: train, evaluate and export sub-4-bit MobileNets with PROFIT (Park & Yoo, ECCV 2020).

The library behind this command is profit_edu; the textbook that explains it is in book/.
Run "profit-edu COMMAND --help" for the options of one command.
"""


def build_parser() -> argparse.ArgumentParser:
    """The full ``profit-edu`` parser; each subcommand sets ``handler`` to the function that runs it."""
    parser = argparse.ArgumentParser(prog="profit-edu", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"profit-edu {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the library's progress messages")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    add_train_parser(commands)
    add_evaluate_parser(commands)
    add_plan_parser(commands)
    add_release_parser(commands)
    add_pack_commands(commands)
    add_samples_parser(commands)
    add_reproduce_parser(commands)
    add_assignments_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the chosen subcommand, return the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("profit_edu.data").setLevel(logging.INFO)  # say where decoded data sets are cached
    from ..checkpoint import CheckpointError
    from ..train import DivergenceError, ResumeError

    start, started = time.perf_counter(), time.time()
    try:
        status = args.handler(args)
    except KeyboardInterrupt:
        sys.stderr.write(f"profit-edu: interrupted{_where_to_resume(args, started)}\n")
        return 130
    except CLIError as err:
        parser.exit(2, f"profit-edu: error: {err}\n")
    except ResumeError as err:
        parser.exit(2, f"profit-edu: error: {err}\n(pass the flags of the original run, another --out, or --restart)\n")
    except (CheckpointError, DivergenceError) as err:
        parser.exit(1, f"profit-edu: error: {err}\n")
    except OSError as err:  # disk full, read-only or vanished folder, ...
        parser.exit(1, f"profit-edu: error: {os_error_line(err)}{_where_to_resume(args, started)}\n")
    except ValueError as err:  # the library's checks: their messages name the value and what is allowed
        if args.verbose:
            raise
        parser.exit(1, f"profit-edu: error: {err}\n")
    logging.getLogger(__name__).info("finished in %.1f s", time.perf_counter() - start)
    return status


def _where_to_resume(args: argparse.Namespace, started: float) -> str:
    """For a ``train`` that stopped: ``; the last checkpoint is ...; resume with ...`` (else nothing)."""
    if args.command != "train":
        return ""
    # with --restart, older checkpoints in --out belong to the run being replaced (2 s: coarse file-system clocks)
    return "; " + resume_hint(args.out, args.argv, since=started - 2.0 if args.restart else None)
