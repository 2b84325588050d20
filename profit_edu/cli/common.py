"""What every ``profit-edu`` command shares: argument types that say what is allowed, the error the commands
raise, the device choice, and rebuilding the model a run recorded.

Argument types (argparse ``type=``): :class:`Ranged` for every number with a range (``Ranged(int, low=1)``: "an
integer >= 1"), :func:`bit_width` for ``--weight-bits``/``--act-bits`` (checked by
:func:`profit_edu.quant.check_bits`), :func:`device_name`. A bad value exits with status 2 and a message such as
``--epochs: must be an integer >= 1, got '0'``.

Only the command line prints (:func:`say`); the library logs.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..grid import MAX_BITS, MIN_BITS, check_bits

__all__ = [
    "DATASET_CHOICES",
    "SYNTHETIC_FULL",
    "CLIError",
    "Ranged",
    "add_cifar_root",
    "apply_cifar_root",
    "bit_width",
    "bits_label",
    "builder_kwargs",
    "choose_device",
    "device_name",
    "ema_part",
    "load_split",
    "model_from_args",
    "resolve_init",
    "say",
    "show_progress",
]


#: What ``--dataset`` of ``train`` and ``evaluate`` accepts (recipes have their own list: ``recipe.DATASETS``).
DATASET_CHOICES = ("cifar10", "synthetic")
SYNTHETIC_FULL = (50_000, 10_000)  # synthetic stand-in sizes (train, test) when asked for "the whole split"


class CLIError(Exception):
    """A problem with the user's request found after parsing; printed as ``profit-edu: error: ...`` (exit 2)."""


# --------------------------------------------------------------------------------------------
# Argument types: each says what is allowed
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ranged:
    """An argparse ``type=``: text -> an ``int`` or ``float`` inside a range, else an error saying which range.

    Args:
        kind: ``int`` or ``float`` (floats must also be finite).
        low, high: the bounds (None: unbounded on that side).
        low_open, high_open: exclude the bound (``> low`` rather than ``>= low``).
        none_word: a word that means None (``"none"`` for "no EMA"), and what it means, for the message.

    >>> Ranged(int, low=1)("3"), Ranged(float, low=0, high=1, high_open=True).allowed
    (3, 'a number in [0, 1)')
    """

    kind: type[int] | type[float]
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    none_word: tuple[str, str] | None = None  # (word, meaning), e.g. ("none", "no EMA")

    @property
    def allowed(self) -> str:
        """The range in words: ``"an integer >= 1"``, ``"a number > 0"``, ``"a number in [0, 1)"``."""
        noun = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            if self.kind is int and not (self.low_open or self.high_open):
                return f"{noun} in {self.low}..{self.high}"
            return f"{noun} in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f"{noun} {'<' if self.high_open else '<='} {self.high}"
        return noun

    def inside(self, value: float) -> bool:
        """Whether ``value`` is finite and within the bounds."""
        if not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __call__(self, text: str) -> Any:
        if self.none_word is not None and text.lower() == self.none_word[0]:
            return None
        try:
            value = self.kind(text)
        except ValueError:
            value = None
        if value is None or not self.inside(value):
            alternative = f", or '{self.none_word[0]}' for {self.none_word[1]}" if self.none_word else ""
            raise argparse.ArgumentTypeError(f"must be {self.allowed}{alternative}, got {text!r}")
        return value


def bit_width(text: str) -> int:
    """An argparse ``type=`` for bit widths: an integer that :func:`profit_edu.quant.check_bits` accepts."""
    try:
        return int(check_bits(int(text)))  # type: ignore[arg-type]  # check_bits(int) is never None
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be an integer bit width in {MIN_BITS}..{MAX_BITS} (omit the flag "
                                         f"for float), got {text!r}") from None


def device_name(text: str) -> str:
    """An argparse ``type=`` for ``--device``: anything ``torch.device`` accepts (``cpu``, ``cuda:1``, ...)."""
    try:
        torch.device(text)
    except (RuntimeError, ValueError) as err:
        raise argparse.ArgumentTypeError(f"must be a torch device such as cpu, cuda or cuda:1, got {text!r}") from err
    return text


# --------------------------------------------------------------------------------------------
# Output and devices
# --------------------------------------------------------------------------------------------
def say(text: str = "") -> None:
    """Print one line for the user (flushed: long runs show progress as it happens)."""
    print(text, flush=True)


def ema_part(record: dict[str, Any]) -> str:
    """`` (EMA 71.20%)`` for an epoch record with an EMA score, else nothing."""
    ema = record.get("ema_val_top1")
    return "" if ema is None else f" (EMA {ema:.2f}%)"


def bits_label(weight_bits: int | None, act_bits: int | None) -> str:
    """``"float"``, or ``"W4A4"`` (``fp`` for the part left in floating point)."""
    if weight_bits is None and act_bits is None:
        return "float"
    return f"W{weight_bits or 'fp'}A{act_bits or 'fp'}"


def choose_device(name: str | None) -> str:
    """``name``, or ``cuda`` when a GPU is present, else ``cpu``; a CUDA device without a GPU is a :class:`CLIError`."""
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(name).type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    return name


# --------------------------------------------------------------------------------------------
# The model a run recorded
# --------------------------------------------------------------------------------------------
def builder_kwargs(model_args: dict[str, Any]) -> dict[str, Any]:
    """The builder's keyword arguments from a run's ``meta["model_args"]`` (``negative_padding`` only when on)."""
    kwargs = {"num_classes": model_args["num_classes"], "width_mult": model_args["width_mult"],
              "cifar_stem": model_args["cifar_stem"], "stem_stride": model_args["stem_stride"]}
    if model_args.get("negative_padding"):
        kwargs["negative_padding"] = True
    return kwargs


def model_from_args(model_args: dict[str, Any]) -> nn.Module:
    """Build (and quantize) the model that a run's ``meta["model_args"]`` describes.

    ``method`` (the quantizer: duq, pact or lsq) is recorded by recipe runs; plain ``train`` runs use DuQ.

    Raises:
        CLIError: an unknown model name.
    """
    from ..layers import quantize_model
    from ..models import get_model

    try:
        model = get_model(model_args["model"], **builder_kwargs(model_args))
    except ValueError as err:
        raise CLIError(str(err)) from err
    if model_args["weight_bits"] is not None or model_args["act_bits"] is not None:
        quantize_model(model, weight_bits=model_args["weight_bits"], act_bits=model_args["act_bits"],
                       method=model_args.get("method", "duq"))
    return model


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def load_split(dataset: str, train: bool, n: int | None, seed: int, *, download: bool = False,
               allow_fallback: bool = False) -> tuple[Any, str]:
    """One split as ImageArrays, plus the dataset name actually used (one of :data:`DATASET_CHOICES`).

    ``n`` images (a class-balanced subset of CIFAR-10, or that many synthetic ones), or the whole split. With
    ``allow_fallback``, a missing CIFAR-10 copy gives synthetic data (the caller shows the banner); without it, a
    :class:`CLIError` that says how to get the data.
    """
    from .. import data

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



def add_cifar_root(p: argparse.ArgumentParser) -> None:
    """The ``--cifar-root`` flag (sets ``$PROFIT_EDU_CIFAR10`` for this command)."""
    from ..data import CIFAR10_ENV

    p.add_argument("--cifar-root", type=Path, default=None, metavar="DIR",
                   help=f"a folder holding CIFAR-10: train/ and test/ class folders of images, train.tar.gz and "
                        f"test.tar.gz, or cifar-10-batches-py/ (default: ${CIFAR10_ENV}, else the decode cache and "
                        "the offline copy)")


def apply_cifar_root(args: argparse.Namespace) -> None:
    """Point the data loaders at ``--cifar-root`` when given (a missing folder is an error now, not later)."""
    from ..data import CIFAR10_ENV

    root = getattr(args, "cifar_root", None)
    if root is None:
        return
    if not root.is_dir():
        raise CLIError(f"--cifar-root {root}: no such folder")
    os.environ[CIFAR10_ENV] = str(root)


def show_progress(flag: bool | None) -> bool:
    """``--progress`` / ``--no-progress``, else on when stderr is a terminal."""
    return sys.stderr.isatty() if flag is None else flag


def resolve_init(init: str | os.PathLike) -> Path:
    """``--init``: a shipped pretrained name (its verified directory) or a run directory."""
    from ..pretrained import PRETRAINED, pretrained_dir

    return pretrained_dir(str(init)) if str(init) in PRETRAINED else Path(init)
