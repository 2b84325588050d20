"""Train and score the accuracy benchmark's variants from one float checkpoint; one ledger line per number.

    python benchmarks/accuracy/run.py [--init RUN_DIR] [--recipe quick] [--seeds 0 1 2] \\
        [--variants fp duq_w4a4 profit_w4a4 ...] [--out runs/accuracy] [--set schedule.ft_epochs=2]

Variants (default: all, in this order; ``fp`` is scored once, whatever the seeds):

{variants}

Every (variant, seed) trains in ``OUT/<variant>/seed<k>/`` and resumes there when the command is run again; a
run whose numbers are already in the ledger is skipped (``--force`` measures again). Seeds are the outer loop,
so an interrupted matrix has whole seeds done first. ``--dry-run`` prints the runs and their epochs and stops.
Then ``python benchmarks/accuracy/summary.py`` prints mean +- std over seeds. See benchmarks/accuracy/README.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from variants import VARIANTS, InitError, apply_overrides, check_init, load_init, parse_set, run_variant, variant_recipe

from profit_edu.checkpoint import CheckpointError
from profit_edu.pretrained import pretrained_dir
from profit_edu.profit import expand_phases, load_recipe

SHIPPED = "cifar10-mobilenet_v2-w0.5-s2"  # the quick recipe's model, trained by `profit-edu train` on CIFAR-10

__doc__ = __doc__.format(variants="\n".join(f"    {v.name:12s} {v.description}" for v in VARIANTS.values()))


class _Print(logging.Handler):
    """Prints log messages to the current ``sys.stdout`` (looked up at each message, so captures work)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), flush=True)


def _show_progress() -> None:
    """Print this benchmark's progress (the ``accuracy`` logger); the library's INFO messages stay quiet."""
    log = logging.getLogger("accuracy")
    log.setLevel(logging.INFO)
    log.propagate = False
    if not any(isinstance(h, _Print) for h in log.handlers):
        log.addHandler(_Print())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", type=Path, default=None, metavar="DIR",
                   help="the float 'profit-edu train' run every variant starts from (its model must be the recipe's; "
                        f"default: the shipped data/pretrained/{SHIPPED}, sha256-checked)")
    p.add_argument("--recipe", default="quick", help="a recipe file or shipped name (default: quick)")
    p.add_argument("--variants", nargs="+", default=["all"], metavar="NAME",
                   help=f"which variants, or 'all' (default): {', '.join(VARIANTS)}")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="S", help="default: 0 1 2")
    p.add_argument("--out", type=Path, default=Path("runs/accuracy"), metavar="DIR",
                   help="run directories go to DIR/<variant>/seed<k>/ (default: runs/accuracy)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="edit the recipe, e.g. --set schedule.ft_epochs=2 --set data.train_images=5000 (repeatable)")
    p.add_argument("--test-images", type=int, default=None, metavar="N",
                   help="score on a class-balanced subset of N test images (default: the whole test split)")
    p.add_argument("--scale", default=None, help="the ledger's scale (default: the recipe's name, tiny or quick)")
    p.add_argument("--device", default="cpu", help="default: cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--force", action="store_true", help="measure again runs already in the ledger")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their epochs; train nothing")
    return p


def plan(args: argparse.Namespace, variants: list[str]) -> list[tuple[str, int, int]]:
    """(variant, seed, epochs) of every run, in the order they run; checks the init against each recipe."""
    base = apply_overrides(load_recipe(args.recipe), parse_set(args.overrides))
    if args.scale is None and base.name not in ("tiny", "quick"):
        raise ValueError(f"recipe {base.name!r} is neither tiny nor quick: say its scale with --scale")
    init = load_init(args.init)
    runs = []
    if "fp" in variants:
        check_init(init, base)
        runs.append(("fp", int(init.state.config.get("seed", 0)), 0))
    for seed in args.seeds:
        for name in variants:
            if name != "fp":
                recipe = variant_recipe(base, name, seed=seed)
                check_init(init, recipe)
                runs.append((name, seed, sum(p.epochs for p in expand_phases(recipe))))
    return runs


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _show_progress()
    variants = list(VARIANTS) if args.variants == ["all"] else args.variants
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"run.py: error: unknown variants {unknown}; known: {', '.join(VARIANTS)} (or all)", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        if args.init is None:
            shipped = pretrained_dir(SHIPPED)
            args.init = shipped.relative_to(Path.cwd()) if shipped.is_relative_to(Path.cwd()) else shipped
        runs = plan(args, variants)
    except (InitError, ValueError, FileNotFoundError, CheckpointError) as err:
        print(f"run.py: error: {err}", file=sys.stderr)
        return 2
    overrides = parse_set(args.overrides)
    if overrides and "name" not in overrides:
        print(f"run.py: warning: --set edits recipe {args.recipe!r} but keeps its name, so these ledger lines share "
              "ids with the unedited recipe's (the newest line of an id is what the book reads); an ablation "
              "should say --set name=<recipe>_<what it removes>", file=sys.stderr)
    total = sum(e for _, _, e in runs)
    print(f"{len(runs)} runs, {total} epochs in all, from {args.init} with recipe {args.recipe}:")
    for name, seed, epochs in runs:
        print(f"  {name:12s} seed {seed}: {epochs} epochs")
    if args.dry_run:
        return 0
    start = time.perf_counter()
    for name, seed, _ in runs:
        try:
            run_variant(args.recipe, name, seed=seed, init_dir=args.init, out_dir=args.out,
                        overrides=overrides, test_images=args.test_images, scale=args.scale,
                        device=args.device, force=args.force)
        except (InitError, ValueError) as err:
            print(f"run.py: error: {name} seed {seed}: {err}", file=sys.stderr)
            return 2
    print(f"done in {time.perf_counter() - start:.0f} s; summary: python benchmarks/accuracy/summary.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
