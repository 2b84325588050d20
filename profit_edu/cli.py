"""The ``profit-edu`` command line. Each subcommand is a thin layer over the library.

Subcommands (one ``_add_<name>_parser`` function and one ``cmd_<name>`` function each, wired in
:func:`build_parser`; add new ones, such as ``aiwq``, the same way):

``train``
    build a MobileNet, optionally quantize it, train it with :func:`profit_edu.train.fit`, checkpoint every epoch.
``evaluate``
    rebuild the model a ``train`` run saved, load its checkpoint, print top-1/top-5.
``plan``
    print the phase timeline of a PROFIT recipe (:mod:`profit_edu.profit`); ``train --recipe`` runs it.
``release``
    copy a run's last checkpoint with the weights only (how ``data/pretrained`` checkpoints are made).
``pack``, ``run-packed``
    turn a trained quantized run into a packed integer model file, and classify images with it
    (:mod:`profit_edu.packed.cli`).

Only this module (and the plotting helpers) print; the library logs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .packed.cli import add_pack_commands

__all__ = ["SCALES", "CLIError", "Scale", "build_model", "build_parser", "cmd_evaluate", "cmd_plan", "cmd_release",
           "cmd_train", "main"]

DESCRIPTION = """\
profit-edu: train, evaluate and export sub-4-bit MobileNets with PROFIT (Park & Yoo, ECCV 2020).

The library behind this command is profit_edu; the textbook that explains it is in book/.
Run "profit-edu COMMAND --help" for the options of one command.
"""

MODELS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small")
DATASETS = ("cifar10", "synthetic")


@dataclass(frozen=True)
class Scale:
    """Defaults that one ``--scale`` picks; every field can be overridden by its own flag."""

    dataset: str  # "cifar10" or "synthetic"; "auto" = CIFAR-10 if a copy is found, else synthetic with a banner
    train_images: int | None  # None: the whole split
    val_images: int | None
    epochs: int
    batch_size: int
    width_mult: float
    stem_stride: int | None  # None: the builder's default (1 with the CIFAR stem: total stride 8)
    lr: float
    warmup_epochs: int
    ema_decay: float | None
    help: str


# The experiment scales of the design (DESIGN.md, "Scales of every experiment"). The CPU scales use stem stride 2,
# which cuts the compute 4x at 32x32 (total stride 16 instead of 8).
SCALES: dict[str, Scale] = {
    "tiny": Scale("synthetic", 256, 128, 1, 64, 0.25, 2, 0.05, 0, 0.9,
                  "synthetic images made on the fly (256 train, 128 test), 1 epoch, width 0.25, stem stride 2: "
                  "checks that the code runs, in seconds"),
    "quick": Scale("auto", 2000, 500, 3, 100, 0.5, 2, 0.05, 1, 0.95,
                   "a class-balanced CIFAR-10 subset (2,000 train, 500 test images), 3 epochs, width 0.5, stem "
                   "stride 2: a few minutes on a laptop CPU; without a CIFAR-10 copy it uses synthetic data and "
                   "says so"),
    "cifar": Scale("cifar10", None, None, 30, 128, 1.0, None, 0.05, 3, 0.999,
                   "all of CIFAR-10 (50,000 train, 10,000 test images), 30 epochs, width 1.0, stem stride 1: "
                   "the book's reported numbers; meant for a GPU"),
}
SYNTHETIC_FULL = (50_000, 10_000)  # synthetic stand-in sizes when a scale asks for "the whole split"
BY_SCALE: Any = type("ByScale", (), {"__repr__": lambda self: "by scale"})()  # "flag not given" for --ema-decay


class CLIError(Exception):
    """A problem with the user's request found after parsing; printed as ``profit-edu: error: ...`` (exit 2)."""


# --------------------------------------------------------------------------------------------
# Argument types: each says what is allowed
# --------------------------------------------------------------------------------------------
def _bits(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 2 <= value <= 8:
        raise argparse.ArgumentTypeError(f"must be an integer bit width in 2..8 (omit the flag for float), "
                                         f"got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def _ema_decay(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), or 'none' for no EMA, got {text!r}")
    return value


def _device(text: str) -> str:
    try:
        torch.device(text)
    except (RuntimeError, ValueError) as err:
        raise argparse.ArgumentTypeError(f"must be a torch device such as cpu, cuda or cuda:1, got {text!r}") from err
    return text


# --------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------
def _add_train_parser(commands: argparse._SubParsersAction) -> None:
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
            "      --init runs/fp --lr 0.01 --out runs/w4a4\n"
            "  profit-edu evaluate runs/w4a4"
        ),
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", choices=MODELS, help="which MobileNet to build")
    what.add_argument("--recipe", metavar="RECIPE",
                      help="instead of --model: run a whole PROFIT schedule from a recipe (a YAML file or a shipped "
                           "name: tiny, quick, mobilenet_v2_w4a4_cifar10, mobilenet_v2_w4a4_imagenet, ...; see "
                           "'profit-edu plan RECIPE'); only --out, --device, --data-root, --download, --batch-size, "
                           "--seed, --restart and --progress combine with it")
    p.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                   help="with --recipe: the ImageNet folder (train/ and val/), overriding the recipe's data.root")
    p.add_argument("--scale", choices=tuple(SCALES), default="tiny",
                   help="experiment size that sets the defaults below (see above; default: tiny)")
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="training data; default: synthetic at tiny scale, CIFAR-10 otherwise. Given explicitly, "
                        "cifar10 never falls back to synthetic data")
    p.add_argument("--download", action="store_true",
                   help="download CIFAR-10 (163 MB, checksummed) if no local copy is found")
    p.add_argument("--weight-bits", type=_bits, default=None, metavar="B",
                   help="bits for conv/linear weights, 2..8; omit for float weights")
    p.add_argument("--act-bits", type=_bits, default=None, metavar="B",
                   help="bits for activations, 2..8; omit for float activations")
    p.add_argument("--seed", type=_non_negative_int, default=0, metavar="S",
                   help="seeds the model initialisation, the data subset and order, and dropout (default: 0)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="run directory: checkpoint.json + tensors are written here every epoch")
    p.add_argument("--epochs", type=_positive_int, default=None, metavar="N", help="epochs (default: by scale)")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="base learning rate of SGD with Nesterov momentum (default: by scale); the quantizers' "
                        "clip and scale learn at 1/100 of it, as in PROFIT")
    p.add_argument("--weight-decay", type=_non_negative_float, default=4e-5, metavar="WD",
                   help="L2 weight decay on conv/linear weights (default: 4e-5, PROFIT's)")
    p.add_argument("--warmup-epochs", type=_non_negative_int, default=None, metavar="N",
                   help="epochs of linear learning-rate warm-up before the cosine decay (default: by scale)")
    p.add_argument("--ema-decay", type=_ema_decay, default=BY_SCALE, metavar="D",
                   help="decay of the weight moving average evaluated beside the model, or 'none' "
                        "(default: by scale; PROFIT used 0.9997 on ImageNet)")
    p.add_argument("--batch-size", type=_positive_int, default=None, metavar="N", help="default: by scale")
    p.add_argument("--width-mult", type=_positive_float, default=None, metavar="W",
                   help="channel width multiplier (default: by scale)")
    p.add_argument("--cifar-stem", action=argparse.BooleanOptionalAction, default=True,
                   help="stem for 32x32 images: no downsampling in the stem and the first stride-2 stage, "
                        "total stride 8 instead of 32 (default: on)")
    p.add_argument("--stem-stride", type=int, choices=(1, 2), default=None,
                   help="the stem's stride (default: by scale; 2 at tiny and quick, else 1 with --cifar-stem)")
    p.add_argument("--negative-padding", action="store_true",
                   help="MobileNet-v3 only: pad convs after h-swish with -3/8 in float too (PROFIT's v3)")
    p.add_argument("--device", type=_device, default=None,
                   help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    p.add_argument("--init", type=Path, default=None, metavar="CHECKPOINT",
                   help="start from the weights of another run's directory (e.g. a float run before quantizing); "
                        "its model arguments must match")
    p.add_argument("--restart", action="store_true",
                   help="ignore (and overwrite) a checkpoint already in --out instead of resuming it")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.add_argument("--compile", action="store_true",
                   help="train through torch.compile: minutes of compilation first, then faster steps (for long runs; "
                        "benchmarks/train_step.py --compile measures the gain on your machine)")
    p.add_argument("--channels-last", action="store_true",
                   help="train in the NHWC memory layout: the same numbers up to float rounding; on a CPU a float "
                        "MobileNet step takes about 0.6x as long, a quantized one gains less "
                        "(benchmarks/train_step.py --channels-last measures it)")
    p.set_defaults(handler=cmd_train)


def _add_evaluate_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "evaluate", help="print the top-1/top-5 accuracy of a trained run",
        description=("Rebuild the model that 'profit-edu train' saved in CHECKPOINT_DIR, load its last checkpoint "
                     "and print its top-1 and top-5 accuracy (and its weight EMA's) on the test split of the data "
                     "it was trained on, or of --dataset."),
    )
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT_DIR", help="a run directory written by train --out")
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="test data (default: the run's own dataset and test subset)")
    p.add_argument("--images", type=_positive_int, default=None, metavar="N",
                   help="evaluate on a class-balanced subset of N test images (default: the run's own choice)")
    p.add_argument("--batch-size", type=_positive_int, default=256, metavar="N", help="default: 256")
    p.add_argument("--device", type=_device, default=None, help="default: cuda when available, else cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--ledger", action="store_true",
                   help="append the top-1 of the model and its EMA to benchmarks/results/ledger.jsonl, with the "
                        "run's training command and seed (how every number the book reports is recorded)")
    p.add_argument("--ledger-id", default=None, metavar="ID",
                   help="with --ledger: the line's id (default: scale/dataset/model/stem-width/method/bits/"
                        "copy); an EMA copy gets ID/ema")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.set_defaults(handler=cmd_evaluate)


def _add_plan_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "plan", help="print the phase timeline of a PROFIT recipe (a dry run)",
        description=("Load a PROFIT recipe, check it, and print its phases: name, epochs, activation/weight bits, "
                     "what trains, how many layers are frozen, and the learning rate. Nothing is trained."),
        epilog="examples:\n  profit-edu plan mobilenet_v2_w4a4_imagenet\n  profit-edu plan my_recipe.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("recipe", metavar="RECIPE", help="a recipe file, or the name of a shipped recipe")
    p.add_argument("--json", action="store_true", help="print the recipe and its phases as JSON")
    p.set_defaults(handler=cmd_plan)


def _add_release_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "release", help="copy a run's checkpoint with its weights only, for shipping",
        description="Copy the last checkpoint of a 'profit-edu train' run to OUT with the model weights only "
                    "(no momentum, RNG or EMA copy; --ema ships the EMA weights as the model), plus SHA256SUMS. "
                    "The copy loads like any run directory: 'profit-edu evaluate OUT', --init OUT.")
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="a run directory written by train --out")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="DIR", help="where to write the copy")
    p.add_argument("--ema", action="store_true", help="release the EMA weights instead of the model's")
    p.set_defaults(handler=cmd_release)


def cmd_release(args: argparse.Namespace) -> int:
    """Run ``profit-edu release``."""
    from .checkpoint import release_checkpoint

    path = release_checkpoint(args.run, args.out, use_ema=args.ema)
    doc = json.loads(path.read_text())
    _say(f"released {args.run} ({'EMA' if args.ema else 'model'} weights, epoch {doc['epoch'] + 1}) to {path.parent}: "
         f"{doc['tensors']['file']}, {doc['tensors']['bytes']:,} bytes, sha256 {doc['tensors']['sha256']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full ``profit-edu`` parser; each subcommand sets ``handler`` to the function that runs it."""
    parser = argparse.ArgumentParser(prog="profit-edu", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"profit-edu {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the library's progress messages")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    _add_train_parser(commands)
    _add_evaluate_parser(commands)
    _add_plan_parser(commands)
    _add_release_parser(commands)
    add_pack_commands(commands)
    return parser


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------
def _ema_part(record: dict[str, Any]) -> str:
    """`` (EMA 71.20%)`` for an epoch record with an EMA score, else nothing."""
    ema = record.get("ema_val_top1")
    return "" if ema is None else f" (EMA {ema:.2f}%)"


def _say(text: str = "") -> None:
    print(text, flush=True)


def _choose_device(name: str | None) -> str:
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(name).type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    return name


def _bits_label(weight_bits: int | None, act_bits: int | None) -> str:
    if weight_bits is None and act_bits is None:
        return "float"
    return f"W{weight_bits or 'fp'}A{act_bits or 'fp'}"


def build_model(args: dict[str, Any]) -> nn.Module:
    """Build (and quantize) the model that a run's ``meta["model_args"]`` describes.

    ``method`` (the quantizer: duq, pact or lsq) is recorded by recipe runs; plain ``train`` runs use DuQ.
    """
    from . import models
    from .layers import quantize_model

    builders: dict[str, Callable[..., nn.Module]] = {
        "mobilenet_v1": models.mobilenet_v1, "mobilenet_v2": models.mobilenet_v2,
        "mobilenet_v3_large": models.mobilenet_v3_large, "mobilenet_v3_small": models.mobilenet_v3_small,
    }
    if args["model"] not in builders:
        raise CLIError(f"unknown model {args['model']!r}; one of {MODELS}")
    kwargs = {"width_mult": args["width_mult"], "cifar_stem": args["cifar_stem"], "stem_stride": args["stem_stride"]}
    if args.get("negative_padding"):
        kwargs["negative_padding"] = True
    model = builders[args["model"]](args["num_classes"], **kwargs)
    if args["weight_bits"] is not None or args["act_bits"] is not None:
        quantize_model(model, weight_bits=args["weight_bits"], act_bits=args["act_bits"],
                       method=args.get("method", "duq"))
    return model


def _load_split(dataset: str, train: bool, n: int | None, seed: int, *, download: bool = False,
                allow_fallback: bool = False) -> tuple[Any, str]:
    """One split as ImageArrays, plus the dataset name actually used ("cifar10" or "synthetic")."""
    from . import data

    if dataset == "synthetic":
        size = n if n is not None else SYNTHETIC_FULL[0 if train else 1]
        return data.synthetic(size, seed=2 * seed + (0 if train else 1)), "synthetic"
    try:
        full = data.cifar10(train=train, download=download)
    except FileNotFoundError as err:
        if not allow_fallback:
            raise CLIError(f"{err}\n(or pass --dataset synthetic)") from err
        size = n if n is not None else SYNTHETIC_FULL[0 if train else 1]
        return data.synthetic(size, seed=2 * seed + (0 if train else 1)), "synthetic"
    return (data.subset(full, n, seed=seed) if n is not None else full), "cifar10"


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------
def _train_settings(args: argparse.Namespace) -> dict[str, Any]:
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
        "lr": args.lr or scale.lr,
        "ema_decay": scale.ema_decay if args.ema_decay is BY_SCALE else args.ema_decay,
        "batch_size": args.batch_size or scale.batch_size,
        "width_mult": args.width_mult or scale.width_mult,
        "stem_stride": args.stem_stride if args.stem_stride is not None else scale.stem_stride,
    }


def _init_from(run: Path, model_args: dict[str, Any]) -> nn.Module:
    """Build the model of ``model_args`` starting from the weights of the run in ``run``."""
    from .checkpoint import CheckpointError, load_checkpoint
    from .layers import quantize_model, set_bits

    try:
        state = load_checkpoint(run)
    except CheckpointError as err:
        raise CLIError(f"--init {run}: {err}") from err
    saved = state.meta.get("model_args")
    if not isinstance(saved, dict):
        raise CLIError(f"--init {run}: the checkpoint has no model arguments; was it written by profit-edu train?")
    structural = ("model", "num_classes", "width_mult", "cifar_stem", "stem_stride", "negative_padding")
    differ = [f"{k}: {saved.get(k)!r} there, {model_args.get(k)!r} here" for k in structural
              if saved.get(k) != model_args.get(k)]
    if differ:
        raise CLIError(f"--init {run} holds a different model ({'; '.join(differ)}); pass matching flags")
    model = build_model(saved)
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


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``profit-edu train``."""
    from . import checkpoint, data, ledger
    from .runtime import data_banner
    from .train import TrainConfig, fit

    if args.recipe is not None:
        return _train_recipe(args)
    s = _train_settings(args)
    device = _choose_device(args.device)
    fallback = s["dataset"] == "auto"
    dataset = "cifar10" if fallback else s["dataset"]
    train_data, used = _load_split(dataset, True, s["train_images"], args.seed, download=args.download,
                                   allow_fallback=fallback)
    val_data, _ = _load_split(used, False, s["val_images"], args.seed, download=args.download)
    if used != dataset:
        _say(f"WARNING: {data_banner(True)}")
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
    if resume and checkpoint.has_checkpoint(out):
        previous = checkpoint.load_checkpoint(out).meta
        differ = [k for k in ("model_args", "data", "batch_size") if _identity(previous.get(k)) != _identity(meta[k])]
        if differ:
            theirs = {k: _changed(previous.get(k), meta[k]) for k in differ}
            raise CLIError(f"--out {out} holds a run with other {', '.join(differ)} ({theirs}); use another --out, "
                           "or --restart to overwrite it")

    torch.manual_seed(args.seed)  # the model's random initialisation
    model = _init_from(args.init, model_args) if args.init is not None else build_model(model_args)
    config = TrainConfig(epochs=s["epochs"], lr=s["lr"], weight_decay=args.weight_decay,
                         warmup_epochs=s["warmup_epochs"], ema_decay=s["ema_decay"], seed=args.seed, device=device,
                         progress=args.progress, compile=args.compile, channels_last=args.channels_last)
    train_loader = data.DeviceLoader(train_data, s["batch_size"], train=True, device=device, seed=args.seed,
                                     drop_last=len(train_data) >= s["batch_size"])
    val_loader = data.DeviceLoader(val_data, 256, train=False, device=device)

    _say(f"profit-edu train: {args.model} (width {s['width_mult']}, {_bits_label(args.weight_bits, args.act_bits)})"
         f" on {used} ({len(train_data)} train / {len(val_data)} test images), {s['epochs']} epochs, "
         f"batch {s['batch_size']}, lr {s['lr']}, device {device}")
    if resume and checkpoint.has_checkpoint(out):
        _say(f"resuming from {out / checkpoint.JSON_NAME}")

    def report(epoch: int, r: dict[str, Any]) -> None:
        ema = f", EMA top-1 {r['ema_val_top1']:.2f}%" if r["ema_val_top1"] is not None else ""
        top5 = f", top-5 {r['val_top5']:.2f}%" if r["val_top5"] is not None else ""
        _say(f"epoch {epoch + 1}/{config.epochs}: lr {r['lr']:.4g}, train loss {r['train_loss']:.4f}, "
             f"test top-1 {r['val_top1']:.2f}%{top5}{ema} ({r['wall_s']:.1f} s)")

    history = fit(model, train_loader, val_loader, config, out_dir=out, resume=resume, callback=report, meta=meta)
    last = history[-1]
    _say(f"done: test top-1 {last['val_top1']:.2f}%{_ema_part(last)}; checkpoint in {out}")
    return 0


def _load_recipe(name: str) -> Any:
    from . import profit

    try:
        return profit.load_recipe(name)
    except (FileNotFoundError, profit.RecipeError) as err:
        raise CLIError(str(err)) from err


def _train_recipe(args: argparse.Namespace) -> int:
    """Run ``profit-edu train --recipe RECIPE``: every phase of a PROFIT schedule, resumable phase by phase."""
    import dataclasses

    from . import profit

    given = [flag for flag, value in (
        ("--epochs", args.epochs), ("--lr", args.lr), ("--weight-bits", args.weight_bits),
        ("--act-bits", args.act_bits), ("--warmup-epochs", args.warmup_epochs), ("--width-mult", args.width_mult),
        ("--dataset", args.dataset), ("--init", args.init), ("--stem-stride", args.stem_stride),
    ) if value is not None]
    given += ["--ema-decay"] * (args.ema_decay is not BY_SCALE) + ["--negative-padding"] * args.negative_padding
    if given:
        raise CLIError(f"--recipe runs the recipe's own settings; {', '.join(given)} would contradict it: edit a copy "
                       "of the recipe instead (profit-edu plan RECIPE shows what it does)")
    speedups = ["--compile"] * args.compile + ["--channels-last"] * args.channels_last
    if speedups:
        raise CLIError(f"{' and '.join(speedups)}: not available with --recipe (recipe runs train eagerly in the "
                       "default memory layout); use them with --model runs")
    recipe = _load_recipe(args.recipe)
    data = recipe.data
    if args.data_root is not None:
        data = dataclasses.replace(data, root=str(args.data_root))
    if args.batch_size is not None:
        data = dataclasses.replace(data, batch_size=args.batch_size)
    recipe = dataclasses.replace(recipe, data=data, seed=args.seed if "--seed" in args.argv else recipe.seed)
    device = _choose_device(args.device)
    torch.manual_seed(recipe.seed)  # the model's random initialisation
    try:
        model = profit.build_model(recipe)
        teacher = profit.build_teacher(recipe)
        train_loader, val_loader, what = profit.build_loaders(recipe, device=device, download=args.download)
        _say(profit.format_plan(recipe))
        _say(f"\ndata: {what}; device {device}; run directory {args.out}")

        def report(phase: Any, epoch: int, r: dict[str, Any]) -> None:
            ema = f", EMA top-1 {r['ema_val_top1']:.2f}%" if r["ema_val_top1"] is not None else ""
            top1 = f", test top-1 {r['val_top1']:.2f}%" if r["val_top1"] is not None else ""
            _say(f"{phase.name} epoch {epoch + 1}/{phase.epochs}: lr {r['lr']:.4g}, train loss {r['train_loss']:.4f}"
                 f"{top1}{ema}, {len(r['frozen'])} frozen ({r['wall_s']:.1f} s)")

        result = profit.run_recipe(recipe, model, train_loader, val_loader, out_dir=args.out, teacher=teacher,
                                   device=device, progress=args.progress, resume=not args.restart, callback=report)
    except profit.RecipeError as err:
        raise CLIError(str(err)) from err
    skipped = [p.phase.name for p in result.phases if p.skipped]
    if skipped:
        _say(f"skipped {len(skipped)} phases finished earlier: {', '.join(skipped)}")
    if result.ranking:
        top = ", ".join(f"{name} ({value:.3g})" for name, value in result.ranking[:5])
        _say(f"AIWQ ranking (top 5 of {len(result.ranking)}): {top}; all in {args.out / 'aiwq_ranking.json'}")
    last = result.phases[-1].history[-1]
    _say(f"done: test top-1 {last['val_top1']:.2f}%{_ema_part(last)}; checkpoints in {args.out}")
    return 0


# --------------------------------------------------------------------------------------------
# plan
# --------------------------------------------------------------------------------------------
def cmd_plan(args: argparse.Namespace) -> int:
    """Run ``profit-edu plan``."""
    from . import profit

    recipe = _load_recipe(args.recipe)
    _say(json.dumps(profit.plan_dict(recipe), indent=1) if args.json else profit.format_plan(recipe))
    return 0


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run ``profit-edu evaluate``."""
    from . import data
    from .checkpoint import load_checkpoint
    from .train import ModelEMA, evaluate

    state = load_checkpoint(args.checkpoint)
    model_args = state.meta.get("model_args")
    if not isinstance(model_args, dict):
        raise CLIError(f"{args.checkpoint}: the checkpoint has no model arguments; was it written by "
                       "'profit-edu train'? (library runs can be evaluated with profit_edu.train.evaluate)")
    run_data = state.meta.get("data", {})
    dataset = args.dataset or run_data.get("dataset", "cifar10")
    n = args.images if args.images is not None else run_data.get("val_subset")
    seed = int(run_data.get("seed", 0))
    device = _choose_device(args.device)
    test, used = _load_split(dataset, False, n, seed)

    torch.manual_seed(0)
    model = build_model(model_args)
    ema_model = ModelEMA(model).module if state.ema_state is not None else None
    state.restore(model, ema_model=ema_model)
    model.to(device)
    loader = data.DeviceLoader(test, args.batch_size, train=False, device=device)
    results = {"model": evaluate(model, loader, device, progress=args.progress)}
    if ema_model is not None:
        ema_model.to(device)
        results["ema"] = evaluate(ema_model, loader, device, progress=args.progress)
    info = {"checkpoint": str(args.checkpoint), "epoch": state.epoch + 1, "epochs": state.config.get("epochs"),
            "model": model_args["model"], "bits": _bits_label(model_args["weight_bits"], model_args["act_bits"]),
            "dataset": used, "images": len(test), "metrics": results}
    if args.ledger_id is not None and not args.ledger:
        raise CLIError("--ledger-id names a ledger line: pass --ledger too")
    if args.ledger:
        _record_in_ledger(state, info, device, args.argv, line_id=args.ledger_id)
    if args.json:
        _say(json.dumps(info))
        return 0
    _say(f"{args.checkpoint}: {info['model']} {info['bits']}, after epoch {info['epoch']} of {info['epochs']}")
    _say(f"data: {used} test split, {len(test)} images")
    for name, r in results.items():
        top5 = f"{r['top5']:.2f}%" if r["top5"] is not None else "n/a"
        _say(f"{'EMA' if name == 'ema' else 'model':5s}: top-1 {r['top1']:.2f}%  top-5 {top5}  loss {r['loss']:.4f}")
    return 0


def _record_in_ledger(state: Any, info: dict[str, Any], device: str, argv: list[str], *,
                      line_id: str | None = None) -> None:
    """One ledger line per evaluated copy (model, EMA), carrying the training command and seed of the run and
    the sha256 of the evaluated tensor file."""
    from . import ledger

    meta, model_args = state.meta, state.meta["model_args"]
    wb, ab = model_args["weight_bits"], model_args["act_bits"]
    method = "fp" if wb is None and ab is None else model_args.get("method", "duq")
    stem = (f"cifar-stem-s{model_args['stem_stride']}" if model_args["cifar_stem"] else "stock") + \
        f"-w{model_args['width_mult']:g}"
    wall = sum(float(r.get("wall_s") or 0.0) for r in state.history)
    for name, r in info["metrics"].items():
        ledger.append({
            "id": (f"{meta.get('scale')}/{info['dataset']}/{info['model']}/{stem}/{method}/w{wb}a{ab}/{name}"
                   if line_id is None else line_id + ("/ema" if name == "ema" else "")),
            "sha256": json.loads(state.path.read_text())["tensors"]["sha256"],
            "hardware": ledger.hardware(device), "scale": meta.get("scale"), "dataset": info["dataset"],
            "model": info["model"], "width_mult": model_args["width_mult"], "cifar_stem": model_args["cifar_stem"],
            "stem_stride": model_args["stem_stride"], "method": method, "weight_bits": wb, "act_bits": ab,
            "seed": meta.get("data", {}).get("seed"), "metric": "top1", "value": round(r["top1"], 2),
            "top5": None if r["top5"] is None else round(r["top5"], 2), "copy": name, "epochs": info["epoch"],
            "test_images": info["images"], "wall_s": round(wall, 1), "command": meta.get("command"),
            "eval_command": "profit-edu " + " ".join(argv),
        })


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------
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
    from .checkpoint import CheckpointError
    from .train import DivergenceError, ResumeError

    start = time.perf_counter()
    try:
        status = args.handler(args)
    except CLIError as err:
        parser.exit(2, f"profit-edu: error: {err}\n")
    except ResumeError as err:
        parser.exit(2, f"profit-edu: error: {err}\n(pass the flags of the original run, another --out, or --restart)\n")
    except (CheckpointError, DivergenceError) as err:
        parser.exit(1, f"profit-edu: error: {err}\n")
    logging.getLogger(__name__).info("finished in %.1f s", time.perf_counter() - start)
    return status


if __name__ == "__main__":
    sys.exit(main())
