"""What every ``profit-edu`` command shares: argument types that say what is allowed, the error the commands
raise, the device choice, and rebuilding the model a run recorded.

Argument types (argparse ``type=``): :class:`Ranged` for every number with a range (``Ranged(int, low=1)``: "an
integer >= 1"), :func:`bit_width` for ``--weight-bits``/``--act-bits`` (checked by
:func:`profit_edu.quant.check_bits`), :func:`device_name`. A bad value exits with status 2 and a message such as
``--epochs: must be an integer >= 1, got '0'``.

Guards that keep a command from destroying a run (:func:`check_run_out`, :func:`check_output_file`), the check of
the model a checkpoint records (:func:`check_model_args`), and the one-line messages for interrupted and failed
commands (:func:`resume_hint`, :func:`os_error_line`).

Only the command line prints (:func:`say`); the library logs.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._validate import is_bits, is_int, is_real
from ..checkpoint import JSON_NAME, has_checkpoint
from ..grid import MAX_BITS, MIN_BITS, check_bits
from ..quant import METHODS

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
    "check_finite_state",
    "check_model_args",
    "check_output_file",
    "check_run_out",
    "choose_device",
    "device_name",
    "ema_part",
    "load_split",
    "model_from_args",
    "os_error_line",
    "resolve_init",
    "resume_hint",
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
# Where commands write: never over an input, never over a run unless asked
# --------------------------------------------------------------------------------------------
RUN_FILES = (JSON_NAME, "SHA256SUMS", "epoch-*.safetensors")  # what a checkpoint directory holds


def _same_path(a: Path, b: Path) -> bool:
    """Whether two paths name the same file or directory (through links and ``..``)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _run_file(path: Path) -> bool:
    """Whether ``path`` is one of the files of a run directory (its checkpoint JSON, tensor files, SHA256SUMS)."""
    return has_checkpoint(path.parent) and any(fnmatch.fnmatch(path.name, pattern) for pattern in RUN_FILES)


def _check_writable(directory: Path, flag: str, path: Path) -> None:
    """Write (and remove) a small file in ``directory``, the nearest existing folder of ``path``, before any work."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".profit-edu-write-test-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise CLIError(f"{flag} {path}: cannot write in {directory} ({err.strerror or err}); choose a writable "
                       "location") from err


def check_run_out(out: Path, flag: str = "--out", *, inputs: tuple[str | os.PathLike | None, ...] = ()) -> None:
    """Refuse a run directory that is an existing file, one of the run's ``inputs`` (``--init``), or not writable.

    Checked before any training, so that a bad ``--out`` costs no epoch. A directory that holds a run is fine here:
    ``train`` resumes it, or refuses a run with other settings.

    Raises:
        CLIError: naming the flag, the path and what to do.
    """
    ancestor = out
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        what = "is an existing file" if ancestor == out else f"lies under {ancestor}, which is a file"
        raise CLIError(f"{flag} {out} {what}; a run directory is a folder: choose another {flag}")
    for source in inputs:  # None: not given; a path that does not exist (a shipped model's name) cannot be hurt
        if source is not None and Path(source).exists() and _same_path(out, Path(source)):
            raise CLIError(f"{flag} {out} is also the run this one starts from: training there would replace the "
                           f"weights it reads; choose another {flag}")
    _check_writable(ancestor, flag, out)


def check_output_file(path: Path, flag: str, *, inputs: tuple[Path | None, ...] = (), overwrite: bool = False) -> None:
    """Refuse an output file that is a directory, one of the command's ``inputs``, or part of a run directory.

    A file of a run directory (its ``checkpoint.json``, tensor files, ``SHA256SUMS``) is replaced only with
    ``overwrite`` (``--overwrite``), and never when that run is an input. Other existing files are replaced, as
    ``-o`` does everywhere.

    Raises:
        CLIError: naming the flag, the path and what to do.
    """
    if path.is_dir():
        raise CLIError(f"{flag} {path} is a directory; name the file to write, e.g. {path / 'model.pqm'}")
    for source in inputs:
        if source is None:
            continue
        if _same_path(path, source) or (source.is_dir() and _same_path(path.parent, source) and _run_file(path)):
            raise CLIError(f"{flag} {path} is also an input of this command ({source}): writing there would destroy "
                           f"it; choose another {flag}")
    if _run_file(path) and not overwrite:
        raise CLIError(f"{flag} {path} is a file of the run in {path.parent}: writing there would destroy that run; "
                       "choose another file, or pass --overwrite to replace it")


# --------------------------------------------------------------------------------------------
# Interrupted and failed commands: one line, and how to go on
# --------------------------------------------------------------------------------------------
def _without_restart(argv: list[str]) -> list[str]:
    return [a for a in argv if not (a.startswith("--res") and "--restart".startswith(a))]


def resume_hint(out: Path, argv: list[str], *, since: float | None = None) -> str:
    """Where the newest checkpoint under the run directory ``out`` is, and the command that resumes from it.

    ``since``: ignore checkpoints written before this time (a ``--restart`` run has not replaced them yet).
    """
    found = []
    if out.is_dir():
        for path in out.rglob(JSON_NAME):
            try:
                mtime = path.stat().st_mtime
            except OSError:
                continue
            if since is None or mtime >= since:
                found.append((mtime, path))
    if not found:
        command = "profit-edu " + shlex.join(argv)
        return f"no checkpoint was written in {out} yet (the first comes after epoch 1); start again with: {command}"
    path = max(found)[1]
    try:
        epoch = f" (after epoch {int(json.loads(path.read_text())['epoch']) + 1})"
    except (OSError, ValueError, KeyError, TypeError):
        epoch = ""
    command = "profit-edu " + shlex.join(_without_restart(argv))
    return f"the last checkpoint is {path}{epoch}; resume with the same command: {command}"


def os_error_line(err: OSError) -> str:
    """``FILE: No space left on device``: an OSError in one line (the file, when known, and the system's words)."""
    what = err.strerror or str(err) or type(err).__name__
    if err.filename is not None and err.filename2 is not None:
        return f"{err.filename} -> {err.filename2}: {what}"
    return f"{err.filename}: {what}" if err.filename is not None else what


# --------------------------------------------------------------------------------------------
# The model a run recorded
# --------------------------------------------------------------------------------------------
MODEL_ARG_KEYS = ("model", "num_classes", "width_mult", "cifar_stem", "stem_stride", "weight_bits", "act_bits")
MAX_CLASSES = 100_000  # ImageNet-21k has 21,841; more in a checkpoint is an edit that would exhaust memory
MAX_WIDTH = 4.0  # the widest MobileNet ever trained is 1.4; a wider one would not fit memory at ImageNet size


def check_model_args(model_args: object, source: str) -> dict[str, Any]:
    """Check a run's ``meta["model_args"]`` (which a user can edit) before building anything from it.

    Raises:
        CLIError: ``"{source}: meta.model_args.weight_bits must be ..., got 9"``: the field, what is allowed and the
            value found; or a missing field.
    """
    from ..models import list_models

    where = f"{source}: meta.model_args"
    if not isinstance(model_args, dict):
        raise CLIError(f"{where} is missing or not an object (got {type(model_args).__name__}); was the checkpoint "
                       "written by 'profit-edu train'?")
    missing = [k for k in MODEL_ARG_KEYS if k not in model_args]
    if missing:
        raise CLIError(f"{where} lacks {', '.join(missing)}: the checkpoint was edited or is not from 'profit-edu "
                       f"train' (it needs {', '.join(MODEL_ARG_KEYS)})")

    def bad(key: str, allowed: str) -> CLIError:
        return CLIError(f"{where}.{key} must be {allowed}, got {model_args[key]!r} (the checkpoint was edited or "
                        "damaged)")

    if model_args["model"] not in list_models():
        raise bad("model", f"one of {', '.join(list_models())}")
    if not (is_int(model_args["num_classes"]) and 1 <= model_args["num_classes"] <= MAX_CLASSES):
        raise bad("num_classes", f"an integer in 1..{MAX_CLASSES}")
    width = model_args["width_mult"]
    if not (is_real(width) and 0 < width <= MAX_WIDTH):
        raise bad("width_mult", f"a number in (0, {MAX_WIDTH:g}]")
    for key in ("cifar_stem", "negative_padding"):
        if key in model_args and not isinstance(model_args[key], bool):
            raise bad(key, "true or false")
    if model_args["stem_stride"] not in (None, 1, 2) or isinstance(model_args["stem_stride"], bool):
        raise bad("stem_stride", "1, 2 or null (the builder's default)")
    for key in ("weight_bits", "act_bits"):
        if model_args[key] is not None and not is_bits(model_args[key]):
            raise bad(key, f"an integer bit width in {MIN_BITS}..{MAX_BITS}, or null (float)")
    if "method" in model_args and model_args["method"] not in METHODS:
        raise bad("method", f"one of {', '.join(METHODS)}")
    return model_args


def check_finite_state(state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights that hold NaN or inf (a diverged run): quantizers initialised from them would be garbage.

    Raises:
        CLIError: naming the first such tensor and how many of its values are bad.
    """
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CLIError(f"{source}: {name} holds {bad} NaN or inf values (of {t.numel()}); the run diverged or the "
                           "file was damaged: start from another run")


def builder_kwargs(model_args: dict[str, Any]) -> dict[str, Any]:
    """The builder's keyword arguments from a run's ``meta["model_args"]`` (``negative_padding`` only when on)."""
    kwargs = {"num_classes": model_args["num_classes"], "width_mult": model_args["width_mult"],
              "cifar_stem": model_args["cifar_stem"], "stem_stride": model_args["stem_stride"]}
    if model_args.get("negative_padding"):
        kwargs["negative_padding"] = True
    return kwargs


def model_from_args(model_args: dict[str, Any], source: str = "the checkpoint") -> nn.Module:
    """Build (and quantize) the model that a run's ``meta["model_args"]`` describes (checked first).

    ``method`` (the quantizer: duq, pact or lsq) is recorded by recipe runs; plain ``train`` runs use DuQ.

    Raises:
        CLIError: a missing field or a value outside its range (:func:`check_model_args`), an unknown model name.
    """
    from ..layers import quantize_model
    from ..models import get_model

    check_model_args(model_args, source)
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



def add_cifar_root(p: argparse._ActionsContainer) -> None:
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
