"""``profit-edu train``: build a MobileNet, optionally quantize it, train it, checkpoint it every epoch.

Two ways to say what to train:

``--model NAME``
    one run of :func:`profit_edu.train.fit`. ``--scale`` (:data:`SCALES`) picks the defaults for data, epochs,
    batch size, width, stem and learning rate; every one of them has its own flag. ``--init RUN`` starts from
    another run's weights (a float run before quantizing).
``--recipe RECIPE``
    a whole PROFIT schedule (:func:`profit_edu.pipeline.run_recipe`), resumable phase by phase; only the flags
    that do not change the recipe's meaning combine with it.

Running the same command again resumes from the last checkpoint and ends exactly where an uninterrupted run would.
"""

from __future__ import annotations

import argparse
import textwrap
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import CIFAR10_ENV
from ..models import list_models
from ..pretrained import PRETRAINED
from .common import (
    DATASET_CHOICES,
    CLIError,
    Ranged,
    add_cifar_root,
    apply_cifar_root,
    bit_width,
    bits_label,
    check_finite_state,
    check_run_out,
    choose_device,
    device_name,
    ema_part,
    load_split,
    model_from_args,
    resolve_init,
    say,
    show_progress,
)
from .plan import load_recipe

__all__ = ["BY_SCALE", "SCALES", "TrainScale", "add_train_parser", "cmd_train"]


@dataclass(frozen=True, kw_only=True)
class TrainScale:
    """The defaults that one ``--scale`` picks for ``train --model``; every field can be overridden by its own flag.

    Attributes:
        dataset: ``"cifar10"``, ``"synthetic"``, or ``"auto"`` (CIFAR-10 if a copy is found, else synthetic with a
            banner).
        train_images, val_images: class-balanced subset sizes; None: the whole split.
        epochs, batch_size, width_mult, lr, warmup_epochs, ema_decay: the training defaults (``ema_decay`` None:
            no weight EMA).
        finetune_lr: the default learning rate with ``--init`` (fine-tuning a trained model: at the from-scratch
            lr a converged model loses more than quantization costs).
        stem_stride: None: the builder's default (1 with the CIFAR stem: total stride 8).
        help: one line for ``profit-edu train --help``.
    """

    dataset: str
    train_images: int | None
    val_images: int | None
    epochs: int
    batch_size: int
    width_mult: float
    stem_stride: int | None
    lr: float
    finetune_lr: float
    warmup_epochs: int
    ema_decay: float | None
    help: str


# The experiment scales of the design (DESIGN.md, "Scales of every experiment"). The CPU scales use stem stride 2,
# which cuts the compute 4x at 32x32 (total stride 16 instead of 8).
SCALES: dict[str, TrainScale] = {
    "tiny": TrainScale(
        dataset="synthetic", train_images=256, val_images=128, epochs=1, batch_size=64, width_mult=0.25,
        stem_stride=2, lr=0.05, finetune_lr=0.01, warmup_epochs=0, ema_decay=0.9,
        help="synthetic images made on the fly (256 train, 128 test), 1 epoch, width 0.25, stem stride 2: "
             "checks that the code runs, in seconds"),
    "quick": TrainScale(
        dataset="auto", train_images=2000, val_images=500, epochs=3, batch_size=100, width_mult=0.5,
        stem_stride=2, lr=0.05, finetune_lr=0.002, warmup_epochs=1, ema_decay=0.95,
        help="a class-balanced CIFAR-10 subset (2,000 train, 500 test images), 3 epochs, width 0.5, stem "
             "stride 2: a few minutes on a laptop CPU; without a CIFAR-10 copy it uses synthetic data and "
             "says so"),
    "cifar": TrainScale(
        dataset="cifar10", train_images=None, val_images=None, epochs=30, batch_size=128, width_mult=1.0,
        stem_stride=None, lr=0.05, finetune_lr=0.002, warmup_epochs=3, ema_decay=0.999,
        help="all of CIFAR-10 (50,000 train, 10,000 test images), 30 epochs, width 1.0, stem stride 1: "
             "the book's reported numbers; meant for a GPU"),
}


class _ByScale:
    """The default of ``--ema-decay``: "take it from the scale" (None already means "no EMA")."""

    def __repr__(self) -> str:
        return "by scale"


BY_SCALE: Any = _ByScale()

_POSITIVE_INT = Ranged(int, low=1)
_NON_NEGATIVE_INT = Ranged(int, low=0)
_POSITIVE = Ranged(float, low=0, low_open=True)
_NON_NEGATIVE = Ranged(float, low=0)
_EMA_DECAY = Ranged(float, low=0, high=1, high_open=True, none_word=("none", "no EMA"))


# --------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------
def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data: which images, and where they are")
    g.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                   help="with --recipe: the ImageNet folder (train/ and val/), overriding the recipe's data.root")
    add_cifar_root(g)
    g.add_argument("--scale", choices=tuple(SCALES), default="tiny",
                   help="experiment size that sets the defaults below (see above; default: tiny)")
    g.add_argument("--dataset", choices=DATASET_CHOICES, default=None,
                   help="training data; default: synthetic at tiny scale, CIFAR-10 otherwise. Given explicitly, "
                        "cifar10 never falls back to synthetic data")
    g.add_argument("--download", action="store_true",
                   help="download CIFAR-10 (163 MB, checksummed) if no local copy is found")


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model: the network, its bit widths and its starting weights")
    g.add_argument("--weight-bits", type=bit_width, default=None, metavar="B",
                   help="bits for conv/linear weights, 2..8; omit for float weights")
    g.add_argument("--act-bits", type=bit_width, default=None, metavar="B",
                   help="bits for activations, 2..8; omit for float activations")
    g.add_argument("--width-mult", type=_POSITIVE, default=None, metavar="W",
                   help="channel width multiplier (default: by scale)")
    g.add_argument("--cifar-stem", action=argparse.BooleanOptionalAction, default=True,
                   help="stem for 32x32 images: no downsampling in the stem and the first stride-2 stage, "
                        "total stride 8 instead of 32 (default: on)")
    g.add_argument("--stem-stride", type=int, choices=(1, 2), default=None,
                   help="the stem's stride (default: by scale; 2 at tiny and quick, else 1 with --cifar-stem)")
    g.add_argument("--negative-padding", action="store_true",
                   help="MobileNet-v3 only: pad convs after h-swish with -3/8 in float too (PROFIT's v3)")
    g.add_argument("--init", default=None, metavar="RUN",
                   help="start from trained float weights: a run directory, or a shipped pretrained name ("
                        f"{', '.join(PRETRAINED)}); the model must match. With --recipe it replaces the recipe's "
                        "init; with --model the learning rate defaults to the scale's fine-tuning lr")


def _add_optim_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimisation: defaults by --scale")
    g.add_argument("--epochs", type=_POSITIVE_INT, default=None, metavar="N", help="epochs (default: by scale)")
    g.add_argument("--lr", type=_POSITIVE, default=None,
                   help="base learning rate of SGD with Nesterov momentum (default: by scale); the quantizers' "
                        "clip and scale learn at 1/100 of it, as in PROFIT")
    g.add_argument("--weight-decay", type=_NON_NEGATIVE, default=4e-5, metavar="WD",
                   help="L2 weight decay on conv/linear weights (default: 4e-5, PROFIT's)")
    g.add_argument("--warmup-epochs", type=_NON_NEGATIVE_INT, default=None, metavar="N",
                   help="epochs of linear learning-rate warm-up before the cosine decay (default: by scale)")
    g.add_argument("--ema-decay", type=_EMA_DECAY, default=BY_SCALE, metavar="D",
                   help="decay of the weight moving average evaluated beside the model, or 'none' "
                        "(default: by scale; PROFIT used 0.9997 on ImageNet)")
    g.add_argument("--batch-size", type=_POSITIVE_INT, default=None, metavar="N", help="default: by scale")


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run: where, on what, how")
    g.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="run directory: checkpoint.json + tensors are written here every epoch")
    g.add_argument("--seed", type=_NON_NEGATIVE_INT, default=0, metavar="S",
                   help="seeds the model initialisation, the data subset and order, and dropout (default: 0)")
    g.add_argument("--device", type=device_name, default=None,
                   help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    g.add_argument("--restart", action="store_true",
                   help="ignore (and overwrite) a checkpoint already in --out instead of resuming it")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars (default: on when the output is a terminal)")
    g.add_argument("--compile", action="store_true",
                   help="train through torch.compile: minutes of compilation first, then faster steps (for long runs; "
                        "benchmarks/train_step.py --compile measures the gain on your machine)")
    g.add_argument("--channels-last", action="store_true",
                   help="train in the NHWC memory layout: the same numbers up to float rounding; on a CPU a float "
                        "MobileNet step takes about 0.6x as long, a quantized one gains less "
                        "(benchmarks/train_step.py --channels-last measures it)")


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``train`` on the ``profit-edu`` subparsers (its handler: :func:`cmd_train`)."""
    scales = "\n".join(textwrap.fill(s.help, 100, initial_indent=f"  {name:7s}", subsequent_indent=" " * 9)
                       for name, s in SCALES.items())
    p = commands.add_parser(
        "train", help="train a (quantized) MobileNet and checkpoint it every epoch",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train a MobileNet on CIFAR-10 or synthetic images, optionally quantized with DuQ (PROFIT's\n"
            "quantizer), and write a checkpoint to --out after every epoch. Running the same command again\n"
            "resumes from the last checkpoint and ends exactly where an uninterrupted run would.\n\n"
            "Scales (--scale) set the defaults for data, epochs, batch size, width, stem and learning rate:\n"
            f"{scales}\n\n"
            "Bit widths: --weight-bits and --act-bits take an integer in 2..8. Leave a flag out to keep that\n"
            "part in floating point (both out: a plain float model)."
        ),
        epilog=(
            "examples:\n"
            "  profit-edu train --model mobilenet_v2 --scale tiny --out runs/tiny\n"
            "  profit-edu train --model mobilenet_v2 --scale quick --out runs/fp\n"
            "  profit-edu train --model mobilenet_v2 --scale quick --weight-bits 4 --act-bits 4 \\\n"
            "      --init cifar10-mobilenet_v2-w0.5-s2 --out runs/w4a4     # from the shipped float model\n"
            "  profit-edu train --recipe quick --out runs/profit-quick      # PROFIT, from the recipe's init\n"
            "  profit-edu evaluate runs/w4a4\n\n"
            f"CIFAR-10 is read from --cifar-root DIR, else ${CIFAR10_ENV}, else the decode cache and the offline\n"
            "copy; without one, --scale quick and --dataset auto train on synthetic images and say so."
        ),
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", choices=list_models(), help="which MobileNet to build")
    what.add_argument("--recipe", metavar="RECIPE",
                      help="instead of --model: run a whole PROFIT schedule from a recipe (a YAML file or a shipped "
                           "name: tiny, quick, mobilenet_v2_w4a4_cifar10, mobilenet_v2_w4a4_imagenet, ...; see "
                           "'profit-edu plan RECIPE'); only --out, --init, --device, --data-root, --cifar-root, "
                           "--download, --batch-size, --seed, --restart and --progress combine with it")
    _add_data_arguments(p)
    _add_model_arguments(p)
    _add_optim_arguments(p)
    _add_run_arguments(p)
    p.set_defaults(handler=cmd_train)


# --------------------------------------------------------------------------------------------
# train --model
# --------------------------------------------------------------------------------------------
def _train_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings of a ``--model`` run: each flag given, else its scale's default."""
    scale = SCALES[args.scale]
    if args.negative_padding and not args.model.startswith("mobilenet_v3"):
        raise CLIError(f"--negative-padding applies to MobileNet-v3 only (h-swish), not {args.model}")
    epochs = args.epochs or scale.epochs
    warmup = scale.warmup_epochs if args.warmup_epochs is None else args.warmup_epochs
    if args.warmup_epochs is None:
        warmup = min(warmup, epochs - 1) if epochs > 1 else 0
    if warmup > epochs:
        raise CLIError(f"--warmup-epochs {warmup} exceeds --epochs {epochs}")
    return {
        "dataset": args.dataset or scale.dataset,
        "train_images": scale.train_images, "val_images": scale.val_images,
        "epochs": epochs, "warmup_epochs": warmup,
        "lr": args.lr or (scale.finetune_lr if args.init is not None else scale.lr),
        "ema_decay": scale.ema_decay if args.ema_decay is BY_SCALE else args.ema_decay,
        "batch_size": args.batch_size or scale.batch_size,
        "width_mult": args.width_mult or scale.width_mult,
        "stem_stride": args.stem_stride if args.stem_stride is not None else scale.stem_stride,
    }


def _init_from(run: Path, model_args: dict[str, Any]) -> nn.Module:
    """Build the model of ``model_args`` starting from the weights of the run in ``run``."""
    from ..checkpoint import CheckpointError, load_checkpoint
    from ..layers import quantize_model, set_bits

    try:
        state = load_checkpoint(run)
    except CheckpointError as err:
        raise CLIError(f"--init {run}: {err}") from err
    check_finite_state(state.model_state, f"--init {run}")
    saved = state.meta.get("model_args")
    if not isinstance(saved, dict):
        raise CLIError(f"--init {run}: the checkpoint has no model arguments; was it written by profit-edu train?")
    structural = ("model", "num_classes", "width_mult", "cifar_stem", "stem_stride", "negative_padding")
    differ = [f"{k}: {saved.get(k)!r} there, {model_args.get(k)!r} here" for k in structural
              if saved.get(k) != model_args.get(k)]
    if differ:
        raise CLIError(f"--init {run} holds a different model ({'; '.join(differ)}); pass matching flags")
    model = model_from_args(saved)
    state.restore(model)
    wb, ab = model_args["weight_bits"], model_args["act_bits"]
    if (wb, ab) != (saved["weight_bits"], saved["act_bits"]):
        if saved["weight_bits"] is None and saved["act_bits"] is None:
            quantize_model(model, weight_bits=wb, act_bits=ab)  # float run -> quantized: keeps every weight
        else:
            set_bits(model, weight_bits=wb, act_bits=ab)  # keeps the learned a and c
    return model


def _identity(field: Any) -> Any:
    """A run's meta field without ``source``: a first run decodes the JPEGs, its resumption reads the cache.

    The images themselves still count, through the ``sha256`` of their content recorded beside it.
    """
    return {k: v for k, v in field.items() if k != "source"} if isinstance(field, dict) else field


def _changed(theirs: Any, ours: Any) -> Any:
    """The part of the stored field that differs from ours (for dicts, only the differing keys), for messages."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        return {k: theirs.get(k) for k in sorted(set(_identity(theirs)) | set(_identity(ours)))
                if theirs.get(k) != ours.get(k)}
    return theirs


def _check_same_run(out: Path, meta: dict[str, Any]) -> None:
    """Refuse to resume a run in ``out`` made with another model, data or batch size than ``meta`` describes."""
    from .. import checkpoint

    if not checkpoint.has_checkpoint(out):
        return
    previous = checkpoint.load_checkpoint(out).meta
    differ = [k for k in ("model_args", "data", "batch_size") if _identity(previous.get(k)) != _identity(meta[k])]
    if differ:
        theirs = {k: _changed(previous.get(k), meta[k]) for k in differ}
        raise CLIError(f"--out {out} holds a run with other {', '.join(differ)} ({theirs}); use another --out, "
                       "or --restart to overwrite it")


def _report_epoch(epoch: int, r: dict[str, Any], *, epochs: int) -> None:
    """One line per finished epoch: learning rate, train loss, test top-1 (and top-5, EMA top-1), time."""
    ema = f", EMA top-1 {r['ema_val_top1']:.2f}%" if r["ema_val_top1"] is not None else ""
    top5 = f", top-5 {r['val_top5']:.2f}%" if r["val_top5"] is not None else ""
    say(f"epoch {epoch + 1}/{epochs}: lr {r['lr']:.4g}, train loss {r['train_loss']:.4f}, "
        f"test top-1 {r['val_top1']:.2f}%{top5}{ema} ({r['wall_s']:.1f} s)")


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``profit-edu train``."""
    from .. import checkpoint, data, ledger
    from ..train import TrainConfig, fit

    check_run_out(args.out, inputs=(args.init,))  # before any work: an --out that cannot hold a run costs nothing
    apply_cifar_root(args)
    args.progress = show_progress(args.progress)
    if args.recipe is not None:
        return _train_recipe(args)
    s = _train_settings(args)
    device = choose_device(args.device)
    fallback = s["dataset"] == "auto"
    dataset = "cifar10" if fallback else s["dataset"]
    train_data, used = load_split(dataset, True, s["train_images"], args.seed, download=args.download,
                                  allow_fallback=fallback)
    val_data, _ = load_split(used, False, s["val_images"], args.seed, download=args.download)
    if used != dataset:
        say(f"WARNING: {data.data_banner(True)}")
    model_args = {
        "model": args.model, "num_classes": train_data.num_classes, "width_mult": s["width_mult"],
        "cifar_stem": args.cifar_stem, "stem_stride": s["stem_stride"], "negative_padding": args.negative_padding,
        "weight_bits": args.weight_bits, "act_bits": args.act_bits,
    }
    meta = {
        "model_args": model_args,
        "data": {"dataset": used, "train_images": len(train_data), "val_images": len(val_data),
                 "val_subset": s["val_images"], "seed": args.seed, "source": train_data.source,
                 "sha256": train_data.sha256()},
        "scale": args.scale, "batch_size": s["batch_size"], "command": "profit-edu " + " ".join(args.argv),
        "commit": ledger.git_commit(),
    }
    out: Path = args.out
    resume = not args.restart
    if resume:
        _check_same_run(out, meta)

    torch.manual_seed(args.seed)  # the model's random initialisation
    model = _init_from(resolve_init(args.init), model_args) if args.init is not None else model_from_args(model_args)
    config = TrainConfig(epochs=s["epochs"], lr=s["lr"], weight_decay=args.weight_decay,
                         warmup_epochs=s["warmup_epochs"], ema_decay=s["ema_decay"], seed=args.seed, device=device,
                         progress=args.progress, compile=args.compile, channels_last=args.channels_last)
    train_loader = data.DeviceLoader(train_data, s["batch_size"], train=True, device=device, seed=args.seed,
                                     drop_last=len(train_data) >= s["batch_size"])
    val_loader = data.DeviceLoader(val_data, 256, train=False, device=device)

    say(f"profit-edu train: {args.model} (width {s['width_mult']}, {bits_label(args.weight_bits, args.act_bits)})"
        f" on {used} ({len(train_data)} train / {len(val_data)} test images), {s['epochs']} epochs, "
        f"batch {s['batch_size']}, lr {s['lr']}, device {device}")
    if resume and checkpoint.has_checkpoint(out):
        say(f"resuming from {out / checkpoint.JSON_NAME}")
    history = fit(model, train_loader, val_loader, config, out_dir=out, resume=resume,
                  callback=partial(_report_epoch, epochs=config.epochs), meta=meta)
    last = history[-1]
    say(f"done: test top-1 {last['val_top1']:.2f}%{ema_part(last)}; checkpoint in {out}")
    return 0


# --------------------------------------------------------------------------------------------
# train --recipe
# --------------------------------------------------------------------------------------------
def _train_recipe(args: argparse.Namespace) -> int:
    """Run ``profit-edu train --recipe RECIPE``: every phase of a PROFIT schedule, resumable phase by phase."""
    import dataclasses

    from .. import builders, pipeline
    from ..recipe import RecipeError
    from ..schedule import format_plan

    given = [flag for flag, value in (
        ("--epochs", args.epochs), ("--lr", args.lr), ("--weight-bits", args.weight_bits),
        ("--act-bits", args.act_bits), ("--warmup-epochs", args.warmup_epochs), ("--width-mult", args.width_mult),
        ("--dataset", args.dataset), ("--stem-stride", args.stem_stride),
    ) if value is not None]
    given += ["--ema-decay"] * (args.ema_decay is not BY_SCALE) + ["--negative-padding"] * args.negative_padding
    if given:
        raise CLIError(f"--recipe runs the recipe's own settings; {', '.join(given)} would contradict it: edit a copy "
                       "of the recipe instead (profit-edu plan RECIPE shows what it does)")
    speedups = ["--compile"] * args.compile + ["--channels-last"] * args.channels_last
    if speedups:
        raise CLIError(f"{' and '.join(speedups)}: not available with --recipe (recipe runs train eagerly in the "
                       "default memory layout); use them with --model runs")
    recipe = load_recipe(args.recipe)
    data = recipe.data
    if args.data_root is not None:
        data = dataclasses.replace(data, root=str(args.data_root))
    if args.batch_size is not None:
        data = dataclasses.replace(data, batch_size=args.batch_size)
    recipe = dataclasses.replace(recipe, data=data, seed=args.seed if "--seed" in args.argv else recipe.seed)
    device = choose_device(args.device)
    torch.manual_seed(recipe.seed)  # the model's random initialisation
    try:
        init = args.init if args.init is not None else recipe.init
        model = builders.load_init(recipe, resolve_init(init)) if init is not None else builders.build_model(recipe)
        if init is not None:
            say(f"starting from the float model in {init}")
        teacher = builders.build_teacher(recipe)
        train_loader, val_loader, what = builders.build_loaders(recipe, device=device, download=args.download)
        say(format_plan(recipe))
        say(f"\ndata: {what}; device {device}; run directory {args.out}")

        def report(phase: Any, epoch: int, r: dict[str, Any]) -> None:
            ema = f", EMA top-1 {r['ema_val_top1']:.2f}%" if r["ema_val_top1"] is not None else ""
            top1 = f", test top-1 {r['val_top1']:.2f}%" if r["val_top1"] is not None else ""
            say(f"{phase.name} epoch {epoch + 1}/{phase.epochs}: lr {r['lr']:.4g}, train loss {r['train_loss']:.4f}"
                f"{top1}{ema}, {len(r['frozen'])} frozen ({r['wall_s']:.1f} s)")

        result = pipeline.run_recipe(recipe, model, train_loader, val_loader, out_dir=args.out, teacher=teacher,
                                     device=device, progress=args.progress, resume=not args.restart, callback=report)
    except RecipeError as err:
        raise CLIError(str(err)) from err
    skipped = [p.phase.name for p in result.phases if p.skipped]
    if skipped:
        say(f"skipped {len(skipped)} phases finished earlier: {', '.join(skipped)}")
    if result.ranking:
        top = ", ".join(f"{name} ({value:.3g})" for name, value in result.ranking[:5])
        say(f"AIWQ ranking (top 5 of {len(result.ranking)}): {top}; all in {args.out / 'aiwq_ranking.json'}")
    last = result.phases[-1].history[-1]
    say(f"done: test top-1 {last['val_top1']:.2f}%{ema_part(last)}; checkpoints in {args.out}")
    return 0

