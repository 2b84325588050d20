"""PROFIT: progressive freezing of the most unstable layers, and the whole training schedule as data.

PROFIT (Park & Yoo, ECCV 2020) trains a 4-bit MobileNet in phases (notes E). Bits come down step by step,
activations first (8 -> 5 -> 4 with float weights), then weights (8 -> 5 -> 4). Around every bit change a short
*BN-stabilisation* phase trains everything except the conv/linear weights (BN gamma/beta, biases, the
quantizers' ``a`` and ``c``), so BN's running statistics settle on the new, fixed weights. At the PROFIT bit
width the method itself runs:

1. *sampling*: train normally for a few epochs at a constant learning rate while an
   :class:`~profit_edu.aiwq.AIWQTracker` measures each conv's AIWQ (activation instability induced by weight
   quantization) and keeps its EMA ``M(l)``; rank the L convs by ``M`` (most unstable first);
2. *ft1*: fine-tune everything;
3. *ft2*: freeze the weights of the top ``floor(L/3)`` layers of the ranking and fine-tune the rest;
4. *ft3*: freeze the top ``floor(2L/3)``;
5. *BN-stabilisation* once more.

Freezing a layer freezes its conv weight only (learning rate 0, no weight decay): its BN and its quantizers'
``a`` and ``c`` keep training. Layers are named by their exact module names (``features.3.conv.1.0``), never
by substrings. For MobileNet-v2 (L = 52) that is 17, then 34 frozen layers.

*Freezing policy* (``schedule.freeze``, for ablations). ``aiwq`` (default) is PROFIT. ``random`` freezes the same
numbers of layers, drawn from a random order of the L layers (:func:`random_freeze_order`, seeded by the recipe's
``seed``; ft3's layers include ft2's, as with the ranking): the control that shows whether *which* layers are
frozen matters. ``none`` freezes nothing but keeps every phase and epoch (sampling at a constant learning rate,
then ft1, ft2, ft3), so PROFIT and "no freezing" train for exactly as long. Only ``aiwq`` measures AIWQ (the
tracker only measures, so training is the same with or without it). The quantizer is ``method:`` ``duq``
(PROFIT's, default), ``pact`` or ``lsq`` (see :func:`~profit_edu.layers.quantize_model`).

The schedule is a YAML *recipe* in ``profit_edu/recipes/`` (``version: 1``), loaded into frozen dataclasses:
:class:`Recipe` holds :class:`ModelSpec`, :class:`DataSpec`, :class:`OptimSpec`, :class:`ScheduleSpec` and
:class:`AIWQSpec`. :func:`expand_phases` turns it into the list of :class:`Phase` s that :func:`format_plan`
prints (``profit-edu plan RECIPE``) and :func:`run_recipe` trains (``profit-edu train --recipe RECIPE``).
Unknown keys, impossible bit orders, fractions outside [0, 1] and unknown layer names are rejected before
any training, with the file and line.

*Modes.* ``mode: fixed`` (default) trains PROFIT as the paper describes it. ``mode: reference`` replays
quirks of the official code, each named in the recipe's ``quirks:`` list (all of them when the list is
omitted); see :data:`QUIRKS`.

*Resuming.* Every phase trains with :func:`~profit_edu.train.fit` in its own subdirectory of the run
(``03_a8_ft/``), with fit's per-epoch checkpoints; a finished phase writes ``done.json`` and is skipped when
the run is started again; the next phase starts from the last finished phase's checkpoint. The AIWQ
ranking is saved as ``aiwq_ranking.json``.

What both modes share with the official code: a fresh SGD optimizer for every phase (momentum restarts; the
parameter groups change with the frozen set anyway), one weight EMA kept across all phases, and activation
quantizers that initialise themselves from their first batch.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from ._validate import is_bits as _is_bits
from ._validate import is_int as _is_int
from ._validate import is_real as _is_real
from .aiwq import AIWQTracker, layer_kinds, tracked_layers
from .layers import QAct, QConv2d, QLinear, calibrate, quantize_model, set_bits
from .models import get_model, list_models
from .quant import METHODS

__all__ = [
    "FREEZE_POLICIES",
    "QUIRKS",
    "RECIPE_DIR",
    "RECIPE_MODES",
    "RECIPE_VERSION",
    "AIWQSpec",
    "DataSpec",
    "ModelSpec",
    "OptimSpec",
    "Phase",
    "PhaseResult",
    "Recipe",
    "RecipeError",
    "RecipeResult",
    "ScheduleSpec",
    "build_loaders",
    "build_model",
    "build_teacher",
    "check_recipe_for_model",
    "expand_phases",
    "format_plan",
    "freeze_count",
    "frozen_for_phase",
    "list_recipes",
    "load_init",
    "load_recipe",
    "make_tracker",
    "parse_recipe",
    "phase_config",
    "plan_dict",
    "prepare_model",
    "random_freeze_order",
    "recipe_path",
    "run_recipe",
    "set_phase_bits",
]

log = logging.getLogger(__name__)

RECIPE_VERSION = 1
RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
RECIPE_MODES = ("fixed", "reference")
#: How the fine-tunes at a PROFIT bit width choose the layers they freeze (``schedule.freeze``).
FREEZE_POLICIES = ("aiwq", "random", "none")
#: The official code's behaviours that ``mode: reference`` can replay, by name (notes B.4, D, G).
QUIRKS: dict[str, str] = {
    "init_bug": "activation quantizers initialise as the official code does: from the positive part of the "
                "pre-activation, no |x| for signed and no +3/8 for h-swish quantizers (init_style='reference')",
    "teacher_train_mode": "the teacher runs in train mode: its BN uses batch statistics and its running "
                          "statistics drift",
    "relu_in_fp": "while activations are float, ReLU6 layers compute plain ReLU (the official Q_ReLU6 with "
                  "n_lv = 0); the model's functional relu6 before pooling is not replayed",
    "aiwq_zero_pad": "AIWQ recomputes last step's output with zero padding, also for convs that pad with -3/8",
}
ARCHS = tuple(list_models())
DATASETS = ("imagenet", "cifar10", "auto", "synthetic")
PHASE_KINDS = ("fp", "bn", "ft", "sampling")


class RecipeError(ValueError):
    """A recipe that cannot run; the message starts with ``file:line:`` where the problem is."""


class _FieldError(ValueError):
    """Raised by a spec's checks; the loader turns it into a :class:`RecipeError` at the field's line."""

    def __init__(self, name: str, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.name, self.index = name, index


# --------------------------------------------------------------------------------------------
# Field checks (each raises _FieldError naming the field)
# --------------------------------------------------------------------------------------------
def _need(ok: bool, name: str, allowed: str, value: object, index: int | None = None) -> None:
    if not ok:
        raise _FieldError(name, f"{name} must be {allowed}, got {value!r}", index)


def _check_bits_list(name: str, values: object) -> tuple[int, ...]:
    _need(isinstance(values, (list, tuple)) and len(values) > 0, name, "a non-empty list of bit widths", values)
    for i, b in enumerate(values):
        _need(_is_bits(b), f"{name}[{i}]", "an int bit width in 2..8", b, i)
    for i in range(1, len(values)):
        if values[i] >= values[i - 1]:
            raise _FieldError(name, f"{name} must go strictly down (PROFIT lowers bits step by step, e.g. 8 5 4); "
                                    f"got {list(values)}: {values[i]} after {values[i - 1]}", i)
    return tuple(values)


def _fraction(name: str, value: object, index: int) -> Fraction:
    try:
        if isinstance(value, bool):
            raise ValueError
        frac = Fraction(value) if isinstance(value, (int, str)) else Fraction(value).limit_denominator(1000)
    except (ValueError, TypeError, ZeroDivisionError):
        raise _FieldError(name, f"{name}[{index}] must be a number or a fraction like \"1/3\", got {value!r}",
                          index) from None
    if not 0 <= frac <= 1:
        raise _FieldError(name, f"{name}[{index}] must lie in [0, 1], got {value!r}", index)
    return frac


# --------------------------------------------------------------------------------------------
# The recipe as frozen dataclasses
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """Which network to build (arguments of the :mod:`profit_edu.models` builders).

    ``pretrained: torchvision`` loads torchvision's ImageNet weights (v2 and v3 only; downloads them).
    """

    arch: str = "mobilenet_v2"
    num_classes: int = 1000
    width_mult: float = 1.0
    cifar_stem: bool = False
    stem_stride: int | None = None
    negative_padding: bool = False
    pretrained: str | None = None

    def __post_init__(self) -> None:
        _need(self.arch in ARCHS, "arch", f"one of {ARCHS}", self.arch)
        _need(_is_int(self.num_classes) and self.num_classes >= 1, "num_classes", "an int >= 1", self.num_classes)
        _need(_is_real(self.width_mult) and self.width_mult > 0, "width_mult", "a number > 0", self.width_mult)
        _need(isinstance(self.cifar_stem, bool), "cifar_stem", "true or false", self.cifar_stem)
        _need(self.stem_stride in (None, 1, 2), "stem_stride", "1, 2 or null", self.stem_stride)
        _need(isinstance(self.negative_padding, bool), "negative_padding", "true or false", self.negative_padding)
        if self.negative_padding and not self.arch.startswith("mobilenet_v3"):
            raise _FieldError("negative_padding", "negative_padding applies to MobileNet-v3 only (h-swish)")
        _need(self.pretrained in (None, "torchvision"), "pretrained", "null or 'torchvision'", self.pretrained)
        if self.pretrained == "torchvision" and self.arch == "mobilenet_v1":
            raise _FieldError("pretrained", "torchvision has no MobileNet-v1 weights; use pretrained: null")


@dataclass(frozen=True)
class DataSpec:
    """The training data. ``auto``: CIFAR-10 when a copy is found, else the synthetic task (with a banner).

    ``calibration_images``: in ``mode: fixed``, how many training images :func:`~profit_edu.layers.calibrate`
    sees whenever a phase changes the bit widths (the first batches of that phase's first epoch).
    """

    dataset: str = "cifar10"
    batch_size: int = 128
    train_images: int | None = None
    val_images: int | None = None
    image_size: int = 32
    root: str | None = None
    workers: int = 8
    calibration_images: int = 1024

    def __post_init__(self) -> None:
        _need(self.dataset in DATASETS, "dataset", f"one of {DATASETS}", self.dataset)
        _need(_is_int(self.batch_size) and self.batch_size >= 1, "batch_size", "an int >= 1", self.batch_size)
        for name in ("train_images", "val_images"):
            v = getattr(self, name)
            _need(v is None or (_is_int(v) and v >= 1), name, "an int >= 1 or null (the whole split)", v)
        _need(_is_int(self.image_size) and self.image_size >= 8, "image_size", "an int >= 8", self.image_size)
        _need(self.root is None or isinstance(self.root, str), "root", "a folder name or null", self.root)
        _need(_is_int(self.workers) and self.workers >= 0, "workers", "an int >= 0", self.workers)
        _need(_is_int(self.calibration_images) and self.calibration_images >= 1, "calibration_images",
              "an int >= 1", self.calibration_images)
        if self.dataset == "imagenet" and self.root is None:
            raise _FieldError("root", "dataset imagenet needs root: the folder holding train/ and val/")


@dataclass(frozen=True)
class OptimSpec:
    """The optimizer and the losses, the same in every phase (fields of :class:`~profit_edu.train.TrainConfig`).

    ``fp_lr`` is the float phase's learning rate when it differs (training from scratch on CIFAR needs a larger
    one than fine-tuning); null means ``lr``, as in the official script.
    """

    lr: float = 0.005
    fp_lr: float | None = None
    weight_decay: float = 4e-5
    momentum: float = 0.9
    nesterov: bool = True
    quant_lr_mult: float = 0.01
    ema_decay: float | None = 0.9997
    kd_weight: float = 1.0
    grad_clip: float | None = None
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        _need(_is_real(self.lr) and self.lr > 0, "lr", "a number > 0", self.lr)
        _need(self.fp_lr is None or (_is_real(self.fp_lr) and self.fp_lr > 0), "fp_lr", "a number > 0 or null",
              self.fp_lr)
        _need(_is_real(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a number >= 0",
              self.weight_decay)
        _need(_is_real(self.momentum) and 0 <= self.momentum < 1, "momentum", "a number in [0, 1)", self.momentum)
        _need(isinstance(self.nesterov, bool), "nesterov", "true or false", self.nesterov)
        _need(_is_real(self.quant_lr_mult) and self.quant_lr_mult >= 0, "quant_lr_mult", "a number >= 0",
              self.quant_lr_mult)
        _need(self.ema_decay is None or (_is_real(self.ema_decay) and 0 <= self.ema_decay < 1), "ema_decay",
              "a number in [0, 1) or null (no EMA)", self.ema_decay)
        _need(_is_real(self.kd_weight) and self.kd_weight >= 0, "kd_weight", "a number >= 0", self.kd_weight)
        _need(self.grad_clip is None or (_is_real(self.grad_clip) and self.grad_clip > 0), "grad_clip",
              "a number > 0 or null", self.grad_clip)
        _need(_is_real(self.label_smoothing) and 0 <= self.label_smoothing < 1, "label_smoothing",
              "a number in [0, 1)", self.label_smoothing)


@dataclass(frozen=True)
class ScheduleSpec:
    """The phase schedule (notes E). Defaults are the official README command's.

    Args:
        fp_epochs: float fine-tuning (with the teacher) before any quantization; 0 skips it.
        warmup_epochs: linear warm-up epochs of the float and fine-tune phases (BN phases: none).
        act_bits: activation bit widths, lowered in this order with float weights.
        weight_bits: weight bit widths, lowered in this order with activations at ``act_bits[-1]``.
        profit_bits: the weight bit widths at which PROFIT (sampling + freezing) runs; others get one fine-tune.
        bn_stabilize: a BN-stabilisation phase before and after each fine-tune.
        bn_epochs, ft_epochs, sampling_epochs: epochs of those phases.
        freeze_fractions: one fine-tune per entry at a PROFIT bit width, freezing ``floor(L * f)`` of the L
            ranked layers ("1/3" is exact; 0.333 would freeze 17.3 -> 17 of 52 too, but not of every L).
        always_frozen: exact module names whose weights stay frozen in every phase (ablations).
        freeze: which layers the fine-tunes freeze: ``aiwq`` (PROFIT: the top of the AIWQ ranking), ``random``
            (as many layers, in a random order seeded by the recipe's ``seed``), ``none`` (nothing; the same
            phases and epochs).
    """

    fp_epochs: int = 15
    warmup_epochs: int = 3
    act_bits: tuple[int, ...] = (8, 5, 4)
    weight_bits: tuple[int, ...] = (8, 5, 4)
    profit_bits: tuple[int, ...] = (4,)
    bn_stabilize: bool = True
    bn_epochs: int = 5
    ft_epochs: int = 15
    sampling_epochs: int = 5
    freeze_fractions: tuple[Fraction, ...] = (Fraction(0), Fraction(1, 3), Fraction(2, 3))
    always_frozen: tuple[str, ...] = ()
    freeze: str = "aiwq"

    def __post_init__(self) -> None:
        for name in ("fp_epochs", "warmup_epochs"):
            _need(_is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "an int >= 0", getattr(self, name))
        for name in ("bn_epochs", "ft_epochs", "sampling_epochs"):
            _need(_is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "an int >= 1", getattr(self, name))
        _need(self.warmup_epochs <= self.ft_epochs, "warmup_epochs", f"<= ft_epochs ({self.ft_epochs})",
              self.warmup_epochs)
        if self.fp_epochs:
            _need(self.warmup_epochs <= self.fp_epochs, "warmup_epochs", f"<= fp_epochs ({self.fp_epochs})",
                  self.warmup_epochs)
        object.__setattr__(self, "act_bits", _check_bits_list("act_bits", self.act_bits))
        object.__setattr__(self, "weight_bits", _check_bits_list("weight_bits", self.weight_bits))
        _need(isinstance(self.profit_bits, (list, tuple)), "profit_bits", "a list of bit widths", self.profit_bits)
        for i, b in enumerate(self.profit_bits):
            _need(b in self.weight_bits, f"profit_bits[{i}]", f"one of weight_bits {list(self.weight_bits)}", b, i)
        object.__setattr__(self, "profit_bits", tuple(self.profit_bits))
        _need(isinstance(self.bn_stabilize, bool), "bn_stabilize", "true or false", self.bn_stabilize)
        _need(isinstance(self.freeze_fractions, (list, tuple)) and len(self.freeze_fractions) > 0,
              "freeze_fractions", "a non-empty list of fractions in [0, 1]", self.freeze_fractions)
        fracs = tuple(_fraction("freeze_fractions", f, i) for i, f in enumerate(self.freeze_fractions))
        for i in range(1, len(fracs)):
            if fracs[i] < fracs[i - 1]:
                raise _FieldError("freeze_fractions", "freeze_fractions must not go down (PROFIT freezes more and "
                                                      f"more layers), got {[str(f) for f in fracs]}", i)
        object.__setattr__(self, "freeze_fractions", fracs)
        _need(isinstance(self.always_frozen, (list, tuple)), "always_frozen", "a list of module names",
              self.always_frozen)
        for i, n in enumerate(self.always_frozen):
            _need(isinstance(n, str) and n != "", f"always_frozen[{i}]", "a module name", n, i)
        object.__setattr__(self, "always_frozen", tuple(self.always_frozen))
        _need(self.freeze in FREEZE_POLICIES, "freeze", f"one of {FREEZE_POLICIES}", self.freeze)


@dataclass(frozen=True)
class AIWQSpec:
    """How AIWQ is measured in the sampling phases (see :class:`~profit_edu.aiwq.AIWQTracker`)."""

    ema: float = 0.999
    skip_above: float = 1.0
    include_linear: bool = False
    every: int = 1

    def __post_init__(self) -> None:
        _need(_is_real(self.ema) and 0 <= self.ema < 1, "ema", "a number in [0, 1)", self.ema)
        _need(isinstance(self.skip_above, (int, float)) and not isinstance(self.skip_above, bool)
              and self.skip_above > 0, "skip_above", "a number > 0 (.inf keeps all values)", self.skip_above)
        _need(isinstance(self.include_linear, bool), "include_linear", "true or false", self.include_linear)
        _need(_is_int(self.every) and self.every >= 1, "every", "an int >= 1", self.every)


@dataclass(frozen=True)
class RecipeSource:
    """Where a recipe came from: the file name and the line of every key (for error messages)."""

    path: str
    lines: Mapping[tuple, int]

    def where(self, *keys: str | int) -> str:
        """``file:line`` of the deepest of ``keys`` that has a line (the file alone if none has)."""
        for n in range(len(keys), 0, -1):
            if tuple(keys[:n]) in self.lines:
                return f"{self.path}:{self.lines[tuple(keys[:n])]}"
        return self.path


@dataclass(frozen=True)
class Recipe:
    """A whole PROFIT run: model, data, optimizer, schedule, AIWQ settings, mode and quirks.

    Load one with :func:`load_recipe` (a file or a shipped recipe's name) or :func:`parse_recipe` (YAML text).
    ``method`` is the quantizer: ``duq`` (PROFIT's, the default), ``pact`` or ``lsq``.

    >>> r = load_recipe("mobilenet_v2_w4a4_imagenet")
    >>> r.schedule.act_bits, r.schedule.weight_bits, sum(p.epochs for p in expand_phases(r))
    ((8, 5, 4), (8, 5, 4), 200)
    """

    name: str
    model: ModelSpec
    data: DataSpec
    train: OptimSpec
    schedule: ScheduleSpec
    aiwq: AIWQSpec = AIWQSpec()
    version: int = RECIPE_VERSION
    description: str = ""
    inferred: bool = False
    mode: str = "fixed"
    quirks: tuple[str, ...] = ()
    teacher: str = "none"
    seed: int = 0
    method: str = "duq"
    init: str | None = None
    source: RecipeSource | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        _need(self.version == RECIPE_VERSION, "version", f"{RECIPE_VERSION} (this profit-edu reads version "
                                                         f"{RECIPE_VERSION} recipes)", self.version)
        _need(isinstance(self.name, str) and self.name != "", "name", "a non-empty string", self.name)
        _need(isinstance(self.description, str), "description", "a string", self.description)
        _need(isinstance(self.inferred, bool), "inferred", "true or false", self.inferred)
        _need(self.mode in RECIPE_MODES, "mode", f"one of {RECIPE_MODES}", self.mode)
        _need(isinstance(self.quirks, (list, tuple)), "quirks", "a list of quirk names", self.quirks)
        for i, q in enumerate(self.quirks):
            _need(q in QUIRKS, f"quirks[{i}]", f"a known quirk, one of {sorted(QUIRKS)}", q, i)
        if self.quirks and self.mode != "reference":
            raise _FieldError("quirks", f"quirks {list(self.quirks)} replay the official code: they need "
                                        "mode: reference")
        object.__setattr__(self, "quirks", tuple(self.quirks))
        _need(isinstance(self.teacher, str) and self.teacher != "", "teacher",
              "'none', 'self', or a torchvision classifier name such as 'resnet101'", self.teacher)
        _need(_is_int(self.seed) and self.seed >= 0, "seed", "an int >= 0", self.seed)
        _need(self.method in METHODS, "method", f"one of {METHODS}", self.method)
        _need(self.init is None or (isinstance(self.init, str) and self.init != ""), "init",
              "null, a shipped pretrained name (profit_edu.pretrained.PRETRAINED) or a run directory", self.init)
        if self.mode == "reference" and self.method != "duq":
            raise _FieldError("method", f"mode: reference replays the official DuQ code; method {self.method!r} "
                                        "needs mode: fixed")

    def has(self, quirk: str) -> bool:
        """Whether the recipe replays the official code's ``quirk`` (see :data:`QUIRKS`)."""
        if quirk not in QUIRKS:
            raise KeyError(f"unknown quirk {quirk!r}; known: {sorted(QUIRKS)}")
        return quirk in self.quirks

    def where(self, *keys: str | int) -> str:
        """``file:line`` of a key, e.g. ``recipe.where("schedule", "act_bits")``."""
        return self.source.where(*keys) if self.source is not None else "<recipe>"

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data (fractions as "p/q" strings), as it would be written in YAML."""
        d = dataclasses.asdict(self)
        d.pop("source")
        d["schedule"]["freeze_fractions"] = [str(f) for f in self.schedule.freeze_fractions]
        for section, keys in (("schedule", ("act_bits", "weight_bits", "profit_bits", "always_frozen")),
                              ("", ("quirks",))):
            target = d[section] if section else d
            for k in keys:
                target[k] = list(target[k])
        return d


# --------------------------------------------------------------------------------------------
# Loading YAML, with line numbers
# --------------------------------------------------------------------------------------------
SECTIONS: dict[str, type] = {"model": ModelSpec, "data": DataSpec, "train": OptimSpec, "schedule": ScheduleSpec,
                             "aiwq": AIWQSpec}


MAX_RECIPE_BYTES = 2**20  # shipped recipes are 1-3 kB
MAX_RECIPE_VALUES = 10_000  # keys, items and values after expanding aliases; shipped recipes have about 100
_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map", "merge")}


def _yaml_error(err: yaml.YAMLError, path: str) -> RecipeError:
    """A PyYAML error (several lines, with a code excerpt) as one line: ``file:line:column: the problem``."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    if mark is None or problem is None:
        return RecipeError(f"{path}: not valid YAML: {' '.join(str(err).split())}")
    context = getattr(err, "context", None)
    return RecipeError(f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {problem}"
                       + (f" ({context})" if context else ""))


def _check_nodes(root: yaml.Node, path: str) -> None:
    """Refuse what a recipe never needs before anything is expanded: tags other than plain values (no
    ``!!python/...``), aliases that refer to themselves, and aliases that expand past :data:`MAX_RECIPE_VALUES`.

    Each node's expanded size is computed once (aliases share nodes), so a file of nested aliases that would
    expand to billions of values is refused after visiting the few nodes it has.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        line = f"{path}:{node.start_mark.line + 1}"
        if id(node) in open_nodes:
            raise RecipeError(f"{line}: a YAML alias refers to the value that contains it (a recursive alias)")
        if node.tag.startswith("tag:yaml.org,2002:python/"):
            raise RecipeError(f"{line}: the tag !!{node.tag.split(':', 2)[-1]} would build a Python object; a recipe "
                              "holds plain values only (numbers, strings, lists, mappings)")
        if node.tag not in _PLAIN_TAGS:
            raise RecipeError(f"{line}: tag {node.tag!r} is not allowed in a recipe; a recipe holds plain values only "
                              "(numbers, strings, true/false, null, lists, mappings)")
        open_nodes.add(id(node))
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_RECIPE_VALUES:
                raise RecipeError(f"{line}: the recipe expands to more than {MAX_RECIPE_VALUES:,} values (each YAML "
                                  "alias *name repeats its anchor's whole value); write the values out instead")
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    size(root)


def _line_map(text: str, path: str) -> dict[tuple, int]:
    """The 1-based line of every key and list item, by key path; rejects duplicate keys, tags other than plain
    values, and aliases that expand past :data:`MAX_RECIPE_VALUES` (checked before anything is expanded)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise _yaml_error(err, path) from err
    except RecursionError as err:
        raise RecipeError(f"{path}: not valid YAML for a recipe: nested too deeply") from err
    if root is not None:
        _check_nodes(root, path)
    lines: dict[tuple, int] = {}

    def walk(node: yaml.Node, keys: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, value_node in node.value:
                key = key_node.value
                if key in seen:
                    raise RecipeError(f"{path}:{key_node.start_mark.line + 1}: key {key!r} appears twice")
                seen.add(key)
                lines[(*keys, key)] = key_node.start_mark.line + 1
                walk(value_node, (*keys, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[(*keys, i)] = item.start_mark.line + 1
                walk(item, (*keys, i))

    if root is not None:
        walk(root, ())
    return lines


def _build(cls: type, data: object, keys: tuple, source: RecipeSource) -> Any:
    """Build the dataclass ``cls`` from a YAML mapping, with unknown keys and bad values reported by line."""
    where = source.where(*keys) if keys else source.path
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: {'.'.join(keys) or 'the recipe'} must be a mapping of keys, got "
                          f"{type(data).__name__}")
    known = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    for key in data:
        if key not in known:
            raise RecipeError(f"{source.where(*keys, key)}: unknown key {key!r} in {'.'.join(keys) or 'the recipe'}"
                              f"; known keys: {', '.join(known)}")
    values = dict(data)
    for section, spec in SECTIONS.items():
        if not keys and section in values:
            values[section] = _build(spec, values[section], (section,), source)
    try:
        return cls(**values, source=source) if cls is Recipe else cls(**values)
    except _FieldError as err:
        base = err.name.split("[")[0]
        at = source.where(*keys, base, err.index) if err.index is not None else source.where(*keys, base)
        raise RecipeError(f"{at}: {'.'.join((*keys, '')) if keys else ''}{err}") from None
    except TypeError as err:  # a missing required section, e.g. no model:
        raise RecipeError(f"{where}: {err}") from None


def parse_recipe(text: str, source: str = "<recipe>") -> Recipe:
    """Parse YAML text into a :class:`Recipe`.

    In ``mode: reference`` without a ``quirks:`` key, every known quirk is on.

    Raises:
        RecipeError: invalid YAML, duplicate or unknown keys, or a value outside its range, with ``file:line``.
    """
    lines = _line_map(text, source)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:  # _line_map already refused what compose sees; this is a constructor's problem
        raise _yaml_error(err, source) from err
    src = RecipeSource(source, lines)
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a YAML mapping with version, name, model, data, train, schedule")
    for section in ("version", "name", "model", "data", "train", "schedule"):
        if section not in data:
            raise RecipeError(f"{source}: the recipe lacks the required key {section!r}")
    if data.get("mode") == "reference" and "quirks" not in data:
        data = {**data, "quirks": sorted(QUIRKS)}
    return _build(Recipe, data, (), src)


def recipe_path(name_or_path: str | os.PathLike) -> Path:
    """A recipe file: an existing path, or the name of a shipped recipe (with or without ``.yaml``).

    Raises:
        FileNotFoundError: neither, with the list of shipped recipes.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = RECIPE_DIR / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if shipped.is_file() and path.parent == Path("."):
        return shipped
    raise FileNotFoundError(f"no recipe {str(name_or_path)!r}: not a file, and not one of the shipped recipes "
                            f"{list_recipes()}")


def list_recipes() -> list[str]:
    """Names of the recipes shipped in ``profit_edu/recipes/``."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str | os.PathLike) -> Recipe:
    """Load a recipe file, or a shipped recipe by name (e.g. ``"tiny"``, ``"mobilenet_v2_w4a4_imagenet"``).

    Raises:
        FileNotFoundError: no such file or shipped recipe.
        RecipeError: the recipe is invalid, not UTF-8, or larger than a recipe can be (the message names the file
            and line).
    """
    path = recipe_path(name_or_path)
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path}: {size:,} bytes is not a recipe (they are a few kB; the limit is "
                          f"{MAX_RECIPE_BYTES:,})")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise RecipeError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); save "
                          "the recipe as UTF-8") from None
    return parse_recipe(text, str(path))


# --------------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Phase:
    """One phase of the schedule: what trains, at which bits, for how long.

    Attributes:
        name: e.g. ``"fp"``, ``"a8_bn"``, ``"a8_ft"``, ``"w4_sampling"``, ``"w4_ft2"``, ``"w4_bn2"``.
        kind: ``"fp"`` (float fine-tune), ``"bn"`` (BN-stabilisation), ``"ft"`` (fine-tune), ``"sampling"``.
        epochs, warmup_epochs: its length and warm-up; the learning rate follows ``lr_schedule``.
        act_bits, weight_bits: the bit widths (None: float).
        lr_schedule: ``"cosine"`` (after the warm-up) or ``"constant"`` (the sampling phase).
        freeze_fraction: for the fine-tunes at a PROFIT bit width, the fraction of AIWQ-ranked layers frozen.
    """

    name: str
    kind: str
    epochs: int
    warmup_epochs: int
    act_bits: int | None
    weight_bits: int | None
    lr_schedule: str = "cosine"
    freeze_fraction: Fraction | None = None

    @property
    def trains_weights(self) -> bool:
        """False for BN-stabilisation: every conv/linear weight is frozen."""
        return self.kind != "bn"

    def to_dict(self) -> dict[str, Any]:
        """The phase as JSON-friendly data (the fraction as a "p/q" string)."""
        d = dataclasses.asdict(self)
        d["freeze_fraction"] = None if self.freeze_fraction is None else str(self.freeze_fraction)
        return d


def expand_phases(recipe: Recipe) -> list[Phase]:
    """The phase list of a recipe, in training order (notes E's table).

    >>> [p.name for p in expand_phases(load_recipe("tiny"))]
    ['fp', 'a4_bn', 'a4_ft', 'a4_bn2', 'w4_bn', 'w4_sampling', 'w4_ft1', 'w4_ft2', 'w4_ft3', 'w4_bn2']
    """
    s = recipe.schedule
    phases: list[Phase] = []
    if s.fp_epochs:
        phases.append(Phase("fp", "fp", s.fp_epochs, s.warmup_epochs, None, None))

    def stage(prefix: str, a: int | None, w: int | None, profit: bool) -> None:
        if s.bn_stabilize:
            phases.append(Phase(f"{prefix}_bn", "bn", s.bn_epochs, 0, a, w))
        if profit:
            phases.append(Phase(f"{prefix}_sampling", "sampling", s.sampling_epochs, 0, a, w, "constant"))
            for k, frac in enumerate(s.freeze_fractions, start=1):
                phases.append(Phase(f"{prefix}_ft{k}", "ft", s.ft_epochs, s.warmup_epochs, a, w,
                                    freeze_fraction=frac))
        else:
            phases.append(Phase(f"{prefix}_ft", "ft", s.ft_epochs, s.warmup_epochs, a, w))
        if s.bn_stabilize:
            phases.append(Phase(f"{prefix}_bn2", "bn", s.bn_epochs, 0, a, w))

    for a in s.act_bits:
        stage(f"a{a}", a, None, False)
    for w in s.weight_bits:
        stage(f"w{w}", s.act_bits[-1], w, w in s.profit_bits)
    return phases


def freeze_count(num_layers: int, fraction: Fraction) -> int:
    """floor(L * f), in exact arithmetic: 17 of 52 for 1/3, 34 of 52 for 2/3.

    >>> freeze_count(52, Fraction(1, 3)), freeze_count(52, Fraction(2, 3)), freeze_count(51, Fraction(1, 3))
    (17, 34, 17)
    """
    return math.floor(num_layers * Fraction(fraction))


def plan_dict(recipe: Recipe, *, num_layers: int | None = None) -> dict[str, Any]:
    """The plan as JSON-friendly data: the recipe, L, each phase with its frozen-layer count, the total epochs."""
    L = _count_tracked(recipe) if num_layers is None else num_layers
    phases = []
    for p in expand_phases(recipe):
        d = p.to_dict()
        if p.freeze_fraction is not None:
            d["frozen_layers"] = freeze_count(L, p.freeze_fraction) if recipe.schedule.freeze != "none" else 0
        else:
            d["frozen_layers"] = "all" if p.kind == "bn" else 0
        phases.append(d)
    return {"recipe": recipe.to_dict(), "num_layers": L, "phases": phases,
            "total_epochs": sum(p["epochs"] for p in phases)}


def _count_tracked(recipe: Recipe) -> int:
    model = quantize_model(build_model(recipe, pretrained=False), None, None)
    return len(tracked_layers(model, include_linear=recipe.aiwq.include_linear))


_METHOD_NAMES = {"duq": "DuQ", "pact": "PACT", "lsq": "LSQ"}
_FREEZE_NAMES = {"random": "random layers, as many as PROFIT freezes (seeded by the recipe's seed)",
                 "none": "none, with the same phases and epochs"}


def _bits(b: int | None) -> str:
    return "fp" if b is None else str(b)


def format_plan(recipe: Recipe, *, num_layers: int | None = None) -> str:
    """The phase timeline as text (``profit-edu plan``): a dry run, nothing is trained.

    Args:
        recipe: the recipe.
        num_layers: L, the number of AIWQ-ranked layers (default: build the model and count them).

    >>> print(format_plan(load_recipe("tiny")).splitlines()[-1])
    total: 10 phases, 11 epochs
    """
    L = _count_tracked(recipe) if num_layers is None else num_layers
    s, o = recipe.schedule, recipe.train
    m = recipe.model
    head = [
        f"PROFIT plan: {recipe.name} (recipe version {recipe.version}, mode {recipe.mode}"
        f"{', schedule partly inferred' if recipe.inferred else ''})",
        f"model {m.arch} (width {m.width_mult}, {m.num_classes} classes{', cifar stem' if m.cifar_stem else ''}"
        f"{', pretrained ' + m.pretrained if m.pretrained else ''}); teacher {recipe.teacher}; data "
        f"{recipe.data.dataset}, batch {recipe.data.batch_size}; quantizer {_METHOD_NAMES[recipe.method]}",
        f"optimizer SGD lr {o.lr:g} (a, c x{o.quant_lr_mult:g}), momentum {o.momentum:g}"
        f"{' nesterov' if o.nesterov else ''}, weight decay {o.weight_decay:g}; weight EMA "
        f"{'off' if o.ema_decay is None else f'{o.ema_decay:g}'}; KD weight {o.kd_weight:g}",
        f"AIWQ ranks L = {L} layers; EMA {recipe.aiwq.ema:g}, values above {recipe.aiwq.skip_above:g} skipped, "
        f"every {recipe.aiwq.every} step(s)",
    ]
    if s.freeze != "aiwq":
        head.append(f"freezing: {_FREEZE_NAMES[s.freeze]} (an ablation; PROFIT freezes by AIWQ)")
    if recipe.quirks:
        head.append(f"reference quirks: {', '.join(recipe.quirks)}")
    if s.always_frozen:
        head.append(f"always frozen: {', '.join(s.always_frozen)}")
    rows = [("#", "phase", "epochs", "A/W bits", "trains", "frozen", "learning rate")]
    for i, p in enumerate(expand_phases(recipe)):
        if p.kind == "bn":
            trains, frozen = "BN, biases, a, c (no conv/linear weights)", "all weights"
        elif p.kind == "sampling":
            trains, frozen = ("everything; AIWQ sampled" if s.freeze == "aiwq" else "everything"), "-"
        elif p.freeze_fraction is not None:
            k = freeze_count(L, p.freeze_fraction) if s.freeze != "none" else 0
            chosen = f"the top {k} AIWQ" if s.freeze == "aiwq" else f"{k} random"
            trains = "everything" if k == 0 else f"all but {chosen} layers' weights"
            frozen = f"{k} of {L} ({p.freeze_fraction}{'' if s.freeze == 'aiwq' else ', freeze ' + s.freeze})"
        else:
            trains, frozen = ("everything (float)" if p.kind == "fp" else "everything"), "-"
        base = o.fp_lr if p.kind == "fp" and o.fp_lr is not None else o.lr
        if p.lr_schedule == "constant":
            lr = f"{base:g} constant"
        elif p.warmup_epochs:
            lr = f"{base:g}, warm-up {p.warmup_epochs} + cosine"
        else:
            lr = f"{base:g}, cosine"
        rows.append((str(i), p.name, str(p.epochs), f"{_bits(p.act_bits)}/{_bits(p.weight_bits)}", trains, frozen,
                     lr))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    table = ["  ".join(cell.rjust(w) if c in (0, 2) else cell.ljust(w) for c, (cell, w) in
                       enumerate(zip(r, widths))).rstrip() for r in rows]
    phases = expand_phases(recipe)
    total = f"total: {len(phases)} phases, {sum(p.epochs for p in phases)} epochs"
    return "\n".join([*head, "", *table, "", total])


# --------------------------------------------------------------------------------------------
# Building the pieces
# --------------------------------------------------------------------------------------------
def build_model(recipe: Recipe, *, pretrained: bool = True) -> nn.Module:
    """The recipe's float model (with torchvision weights when ``model.pretrained`` says so and ``pretrained``)."""
    from . import models

    m = recipe.model
    kwargs: dict[str, Any] = {"width_mult": m.width_mult, "cifar_stem": m.cifar_stem, "stem_stride": m.stem_stride}
    if m.negative_padding:
        kwargs["negative_padding"] = True
    model = get_model(m.arch, num_classes=m.num_classes, **kwargs)
    if pretrained and m.pretrained == "torchvision":
        import torchvision

        weights = torchvision.models.get_model_weights(m.arch).DEFAULT
        if m.num_classes != len(weights.meta["categories"]) or m.width_mult != 1.0:
            raise RecipeError(f"{recipe.where('model', 'pretrained')}: torchvision's {m.arch} weights have "
                              f"{len(weights.meta['categories'])} classes and width 1.0")
        models.load_torchvision_weights(model, weights.get_state_dict(progress=False))
    return model


def load_init(recipe: Recipe, source: str | os.PathLike | None = None) -> nn.Module:
    """The recipe's float model with the weights of a trained float run: where quantization starts.

    ``source`` (default: the recipe's ``init``) is the name of a shipped pretrained checkpoint (see
    :data:`profit_edu.pretrained.PRETRAINED`; sha256-checked) or a ``profit-edu train`` run directory.

    Raises:
        RecipeError: no source, a source that is not a float run of the recipe's model (every differing field is
            named), or a checkpoint that does not load.
    """
    from .checkpoint import CheckpointError, load_checkpoint
    from .models._common import stem_stride_for
    from .pretrained import PRETRAINED, pretrained_dir

    source = recipe.init if source is None else source
    if source is None:
        raise RecipeError(f"recipe {recipe.name!r} has no init: pass a run directory or one of {sorted(PRETRAINED)}")
    path = pretrained_dir(str(source)) if str(source) in PRETRAINED else Path(source)
    try:
        state = load_checkpoint(path)
    except (CheckpointError, FileNotFoundError) as err:
        raise RecipeError(f"init {source}: {err}") from err
    saved = state.meta.get("model_args") or {}
    m = recipe.model
    want = {"model": m.arch, "num_classes": m.num_classes, "width_mult": m.width_mult, "cifar_stem": m.cifar_stem,
            "stem_stride": stem_stride_for(m.cifar_stem, m.stem_stride), "weight_bits": None, "act_bits": None}
    have = {k: saved.get(k) for k in want}
    if isinstance(have["cifar_stem"], bool) and have["stem_stride"] in (None, 1, 2):
        have["stem_stride"] = stem_stride_for(have["cifar_stem"], have["stem_stride"])
    differ = [f"{k}: {have[k]!r} there, {want[k]!r} in the recipe" for k in want if have[k] != want[k]]
    if differ:
        raise RecipeError(f"init {source} is not a float run of the recipe's model ({'; '.join(differ)})")
    model = build_model(recipe, pretrained=False)
    try:
        state.restore(model)
    except CheckpointError as err:
        raise RecipeError(f"init {source} does not load into the recipe's model: {err}") from err
    return model


def build_teacher(recipe: Recipe) -> nn.Module | None:
    """A frozen torchvision ImageNet classifier for ``teacher: <name>`` (downloads its weights); None for
    ``none`` and ``self`` (:func:`run_recipe` copies the float student after the FP phase for ``self``)."""
    if recipe.teacher in ("none", "self"):
        return None
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(recipe.teacher).DEFAULT
    except ValueError as err:
        raise RecipeError(f"{recipe.where('teacher')}: teacher {recipe.teacher!r} is not a torchvision "
                          "classifier; use none, self, or e.g. resnet101") from err
    if len(weights.meta["categories"]) != recipe.model.num_classes:
        raise RecipeError(f"{recipe.where('teacher')}: teacher {recipe.teacher} predicts "
                          f"{len(weights.meta['categories'])} classes, the student {recipe.model.num_classes}")
    teacher = torchvision.models.get_model(recipe.teacher, weights=weights).eval()
    return teacher.requires_grad_(False)


def build_loaders(recipe: Recipe, *, device: str | torch.device = "cpu", download: bool = False
                  ) -> tuple[Any, Any, str]:
    """(train loader, validation loader, a one-line description of the data) for the recipe's ``data``.

    CIFAR-10 and synthetic data use :class:`~profit_edu.data.DeviceLoader`; ImageNet folders a torch
    ``DataLoader`` with ``workers`` processes. With ``dataset: auto`` the description says when the synthetic
    task replaced a missing CIFAR-10 copy.
    """
    from . import data as pdata

    d, seed = recipe.data, recipe.seed
    if d.dataset == "imagenet":
        from torch.utils.data import DataLoader

        train = pdata.imagenet_folder(d.root, "train", image_size=d.image_size)
        val = pdata.imagenet_folder(d.root, "val", image_size=d.image_size)
        common = {"num_workers": d.workers, "pin_memory": torch.device(device).type == "cuda",
                  "persistent_workers": d.workers > 0}
        return (DataLoader(train, d.batch_size, shuffle=True, drop_last=True, **common),
                DataLoader(val, d.batch_size, shuffle=False, **common), f"ImageNet folders in {d.root}")
    if d.dataset == "synthetic":
        n_train, n_val = d.train_images or 2048, d.val_images or 512
        train = pdata.synthetic(n_train, num_classes=recipe.model.num_classes, image_size=d.image_size,
                                seed=2 * seed)
        val = pdata.synthetic(n_val, num_classes=recipe.model.num_classes, image_size=d.image_size,
                              seed=2 * seed + 1)
        what = "synthetic images"
    elif d.dataset == "auto":
        train, fell_back = pdata.cifar10_or_synthetic(True, n=d.train_images, seed=seed)
        val, _ = pdata.cifar10_or_synthetic(False, n=d.val_images, seed=seed)
        what = "SYNTHETIC images (CIFAR-10 not found)" if fell_back else "CIFAR-10"
    else:
        train = pdata.cifar10(train=True, download=download)
        val = pdata.cifar10(train=False, download=download)
        train = pdata.subset(train, d.train_images, seed=seed) if d.train_images else train
        val = pdata.subset(val, d.val_images, seed=seed) if d.val_images else val
        what = "CIFAR-10"
    crop = max(1, d.image_size // 8)
    train_loader = pdata.DeviceLoader(train, d.batch_size, train=True, device=device, seed=seed,
                                      crop_padding=crop, drop_last=len(train) >= d.batch_size)
    val_loader = pdata.DeviceLoader(val, 256, train=False, device=device)
    return train_loader, val_loader, f"{what}: {len(train)} train / {len(val)} test images"


def prepare_model(recipe: Recipe, model: nn.Module) -> nn.Module:
    """Quantize a float model with the recipe's quantizer (``method``), every quantizer off (bits None), and the
    recipe's init style; returns it.

    The phases then only switch bits on with :func:`set_phase_bits`, so every phase's checkpoint has the same
    keys. ``init_bug`` (reference mode) makes the quantizers initialise as the official code does.

    Raises:
        ValueError: the model is already quantized.
    """
    return quantize_model(model, None, None, method=recipe.method,
                          init_style="reference" if recipe.has("init_bug") else "fixed")


class _ReLUForReLU6(nn.ReLU):
    """Plain ReLU standing in for a ReLU6 while activations are float (the ``relu_in_fp`` quirk)."""


def _use_plain_relu(model: nn.Module, plain: bool) -> None:
    for m in model.modules():
        if isinstance(m, QAct) and isinstance(m.act, (nn.ReLU6, _ReLUForReLU6)):
            m.act = _ReLUForReLU6() if plain else nn.ReLU6()


def set_phase_bits(model: nn.Module, recipe: Recipe, phase: Phase) -> None:
    """Set the phase's bit widths; with the ``relu_in_fp`` quirk, float ReLU6 activations compute plain ReLU."""
    set_bits(model, weight_bits=phase.weight_bits, act_bits=phase.act_bits)
    if recipe.has("relu_in_fp"):
        _use_plain_relu(model, phase.act_bits is None)


def make_tracker(recipe: Recipe, model: nn.Module) -> AIWQTracker:
    """The AIWQ tracker of the sampling phases, configured by the recipe (``aiwq_zero_pad``: reference mode)."""
    a = recipe.aiwq
    return AIWQTracker(model, ema=a.ema, skip_above=a.skip_above, include_linear=a.include_linear, every=a.every,
                       reference_mode=recipe.has("aiwq_zero_pad"))


def _weight_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def check_recipe_for_model(recipe: Recipe, model: nn.Module) -> None:
    """Reject names in ``schedule.always_frozen`` that are not conv/linear layers of ``model`` (before training).

    Raises:
        RecipeError: with the offending entry's line.
    """
    layers = set(_weight_layers(model))
    for i, name in enumerate(recipe.schedule.always_frozen):
        if name not in layers:
            close = sorted(layers, key=lambda n: (not n.startswith(name.split(".")[0]), n))[:4]
            raise RecipeError(f"{recipe.where('schedule', 'always_frozen', i)}: {name!r} is not a conv or linear "
                              f"layer of {type(model).__name__} (exact module names, e.g. {close})")


def random_freeze_order(model: nn.Module, *, seed: int, include_linear: bool = False) -> list[str]:
    """The layers AIWQ would rank, in a random order: ``freeze: random`` freezes the first ``floor(L * f)``.

    The order is a permutation drawn by a ``torch.Generator`` seeded with ``seed`` (the recipe's seed), so
    reruns freeze the same layers and ft3's frozen layers include ft2's, as with the AIWQ ranking.

    Args:
        model: the quantized model (see :func:`~profit_edu.aiwq.tracked_layers`).
        seed: seeds the permutation.
        include_linear: rank linear layers too (``aiwq.include_linear``).

    >>> net = quantize_model(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)), None, None)
    >>> sorted(random_freeze_order(net, seed=0)), random_freeze_order(net, seed=0) == random_freeze_order(net, seed=0)
    (['0', '1', '2'], True)
    """
    names = [n for n, _ in tracked_layers(model, include_linear=include_linear)]
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    return [names[i] for i in order]


def frozen_for_phase(recipe: Recipe, phase: Phase, model: nn.Module,
                     ranking: list[tuple[str, float]] | None) -> tuple[str, ...]:
    """Exact module names whose weights the phase freezes: all conv/linear layers for BN-stabilisation; for the
    fine-tunes at a PROFIT bit width, the first ``floor(L * f)`` layers of the AIWQ ranking (``freeze: aiwq``),
    of :func:`random_freeze_order` (``freeze: random``) or none (``freeze: none``); plus ``always_frozen``.

    Raises:
        ValueError: a fine-tune that freezes by AIWQ without a ranking.
    """
    names: list[str] = list(recipe.schedule.always_frozen)
    policy = recipe.schedule.freeze
    if phase.kind == "bn":
        names += _weight_layers(model)
    elif phase.freeze_fraction is not None and phase.freeze_fraction > 0 and policy != "none":
        if policy == "random":
            order = random_freeze_order(model, seed=recipe.seed, include_linear=recipe.aiwq.include_linear)
        elif ranking is None:
            raise ValueError(f"phase {phase.name} freezes by AIWQ, but there is no ranking: run the sampling phase")
        else:
            order = [n for n, _ in ranking]
        names += order[: freeze_count(len(order), phase.freeze_fraction)]
    return tuple(dict.fromkeys(names))


def phase_config(recipe: Recipe, phase: Phase, *, frozen: tuple[str, ...] = (), epochs: int | None = None,
                 seed: int = 0, device: str = "cpu", progress: bool = False) -> Any:
    """The :class:`~profit_edu.train.TrainConfig` of a phase (``epochs`` overrides its length: one epoch at a
    time for the constant-lr sampling phase)."""
    from .train import TrainConfig

    o = recipe.train
    n = phase.epochs if epochs is None else epochs
    lr = o.fp_lr if phase.kind == "fp" and o.fp_lr is not None else o.lr
    return TrainConfig(
        epochs=n, lr=lr, weight_decay=o.weight_decay, momentum=o.momentum, nesterov=o.nesterov,
        warmup_epochs=min(phase.warmup_epochs, n) if phase.lr_schedule == "cosine" else 0,
        quant_lr_mult=o.quant_lr_mult, ema_decay=o.ema_decay, kd_weight=o.kd_weight,
        teacher_train_mode=recipe.has("teacher_train_mode"), frozen=frozen, seed=seed, device=device,
        progress=progress, grad_clip=o.grad_clip, label_smoothing=o.label_smoothing,
    )


# --------------------------------------------------------------------------------------------
# Running a recipe
# --------------------------------------------------------------------------------------------
@dataclass
class PhaseResult:
    """What one phase did: its per-epoch history (from :func:`~profit_edu.train.fit`) and its frozen layers."""

    phase: Phase
    history: list[dict[str, Any]]
    frozen: tuple[str, ...]
    skipped: bool = False  # finished in an earlier run


@dataclass
class RecipeResult:
    """The outcome of :func:`run_recipe`: every phase's result, the AIWQ ranking, the model and its EMA."""

    phases: list[PhaseResult]
    ranking: list[tuple[str, float]] | None
    model: nn.Module
    ema: Any | None

    def column(self, key: str) -> list[Any]:
        """One history field over all epochs of all phases, e.g. ``result.column("val_top1")``."""
        return [r.get(key) for p in self.phases for r in p.history]


class _OffsetLoader:
    """Passes ``set_epoch(offset + e)`` on, so each phase sees new shuffles (every fit() counts from epoch 0)."""

    def __init__(self, loader: Any, offset: int) -> None:
        self.loader, self.offset = loader, offset

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(self.offset + epoch)


@dataclass(frozen=True)
class _Unit:
    """One fit() call: a whole phase, or one epoch of a constant-lr phase (fit's schedule is warm-up + cosine,
    so a constant lr is one-epoch fits at multiplier 1; momentum restarts each epoch)."""

    index: int
    phase_index: int
    phase: Phase
    directory: Path
    epochs: int
    epoch_offset: int
    last_of_phase: bool


def _units(phases: list[Phase], out: Path) -> list[_Unit]:
    units, offset = [], 0
    for i, p in enumerate(phases):
        phase_dir = out / f"{i:02d}_{p.name}"
        if p.lr_schedule == "constant":
            for e in range(p.epochs):
                units.append(_Unit(len(units), i, p, phase_dir / f"epoch_{e}", 1, offset + e, e == p.epochs - 1))
        else:
            units.append(_Unit(len(units), i, p, phase_dir, p.epochs, offset, True))
        offset += p.epochs
    return units


def _write_json(path: Path, obj: Any) -> None:
    from .checkpoint import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(obj, indent=1, default=str) + "\n").encode())


def _self_teacher(model: nn.Module, state: Any | None) -> nn.Module:
    """A frozen float copy of the student (from a checkpoint's model state when given)."""
    teacher = copy.deepcopy(model)
    for m in teacher.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    set_bits(teacher, weight_bits=None, act_bits=None)
    if state is not None:
        teacher.load_state_dict(dict(state.model_state), strict=True)
    return teacher.eval().requires_grad_(False)


def _calibrate_for_phase(model: nn.Module, ema: Any | None, loader: Any, recipe: Recipe, *, epoch: int) -> None:
    """Fixed mode, when a phase changes the bit widths: choose clips from ``calibration_images`` training images
    (new quantizers are initialised; lowered ones keep their learned a, c unless the new clip has a lower
    quantization error) and restart the weight EMA from the model (an average across bit widths mixes grids)."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)  # the phase's first batches, whatever ran before (exact resume)
    batches, seen = [], 0
    for x, _ in loader:
        batches.append(x)
        seen += len(x)
        if seen >= recipe.data.calibration_images:
            break
    calibrate(model, batches, bn="batch", keep_learned=True, seed=recipe.seed)
    if ema is not None:
        ema.reset(model)


def _read_ranking(path: Path) -> list[tuple[str, float]]:
    return [(r["layer"], r["aiwq"]) for r in json.loads(path.read_text())["ranking"]]


def _restore_teacher_buffers(teacher: nn.Module, extra: Mapping[str, Tensor]) -> None:
    buffers = dict(teacher.named_buffers())
    with torch.no_grad():
        for key, value in extra.items():
            if key.startswith("teacher.") and key.removeprefix("teacher.") in buffers:
                buffers[key.removeprefix("teacher.")].copy_(value)


def run_recipe(
    recipe: Recipe,
    model: nn.Module,
    train_loader: Any,
    val_loader: Any,
    *,
    out_dir: str | os.PathLike,
    teacher: nn.Module | None = None,
    device: str = "cpu",
    progress: bool = False,
    resume: bool = True,
    callback: Callable[[Phase, int, dict[str, Any]], None] | None = None,
) -> RecipeResult:
    """Train a float model through every phase of a PROFIT recipe, resumably.

    Layout of ``out_dir``: ``recipe.json`` and ``plan.txt``; the final model's checkpoint (a copy of the last
    phase's, so the run directory is what ``profit-edu evaluate`` and ``pack`` take); one subdirectory per phase
    (``00_fp/``, ``01_a8_bn/``, ...) holding :func:`~profit_edu.train.fit`'s checkpoints and, once finished,
    ``done.json`` (history and frozen layers); the sampling phase holds one subdirectory per epoch, each with the
    tracker's state after it (``aiwq_state.json``);
    ``aiwq_ranking.json`` holds the ranking (layer, M, kind), most unstable first. With ``freeze: random``
    ``random_order.json`` holds the drawn order instead; with ``random`` and ``none`` nothing measures AIWQ.

    Args:
        recipe: the recipe.
        model: the *float* model to train (e.g. :func:`build_model`); it is quantized here with every quantizer
            off, then the phases switch bits on. Trained in place.
        train_loader, val_loader: the data (see :func:`build_loaders`); ``val_loader`` may be None.
        out_dir: the run directory.
        teacher: the distillation teacher for ``teacher: <torchvision name>`` (see :func:`build_teacher`);
            must be None for ``none`` and ``self`` (the float student after the FP phase).
        device: where to train.
        progress: progress bars.
        resume: skip finished phases and resume the current one from ``out_dir``; False starts over.
        callback: ``callback(phase, epoch, record)`` after every epoch (epoch counted within the phase).

    Returns:
        A :class:`RecipeResult`.

    Raises:
        RecipeError: the recipe does not fit the model (unknown frozen layer names), or ``out_dir`` holds a run
            of another recipe.
        ValueError: a teacher is missing or not expected.
    """
    from . import checkpoint as ckpt
    from .train import ModelEMA, fit

    if any(isinstance(m, (QConv2d, QLinear, QAct)) for m in model.modules()):
        raise ValueError("run_recipe needs the float model: it quantizes it itself (quantizers off, then phase by "
                         "phase)")
    if recipe.teacher in ("none", "self") and teacher is not None:
        raise ValueError(f"the recipe's teacher is {recipe.teacher!r}, but a teacher module was given")
    if recipe.teacher not in ("none", "self") and teacher is None:
        raise ValueError(f"the recipe distils from {recipe.teacher}: pass teacher=build_teacher(recipe)")
    check_recipe_for_model(recipe, model)
    out = Path(out_dir)
    phases = expand_phases(recipe)
    units = _units(phases, out)

    saved_recipe = out / "recipe.json"
    if resume and saved_recipe.is_file():
        before = json.loads(saved_recipe.read_text())
        if before != json.loads(json.dumps(recipe.to_dict(), default=str)):
            raise RecipeError(f"{out} holds a run of another recipe ({before.get('name')}); use another out_dir, or "
                              "resume=False to start over")
    _write_json(saved_recipe, recipe.to_dict())

    prepare_model(recipe, model)
    num_layers = len(tracked_layers(model, include_linear=recipe.aiwq.include_linear))
    if recipe.schedule.freeze == "random":
        _write_json(out / "random_order.json", {"seed": recipe.seed, "order": random_freeze_order(
            model, seed=recipe.seed, include_linear=recipe.aiwq.include_linear)})
    (out / "plan.txt").write_text(format_plan(recipe, num_layers=num_layers) + "\n")
    fixed = recipe.mode == "fixed"
    ema = ModelEMA(model, recipe.train.ema_decay, warmup=fixed) if recipe.train.ema_decay is not None else None
    meta_base = {"recipe": recipe.name, "model_args": {
        "model": recipe.model.arch, "num_classes": recipe.model.num_classes, "width_mult": recipe.model.width_mult,
        "cifar_stem": recipe.model.cifar_stem, "stem_stride": recipe.model.stem_stride,
        "negative_padding": recipe.model.negative_padding, "method": recipe.method}}

    # Finished units form a prefix: a unit's weights depend on every unit before it, so after the first unfinished
    # one everything is trained again, from scratch (resume=False: their directories hold stale states).
    first_todo = 0
    while resume and first_todo < len(units) and (units[first_todo].directory / "done.json").is_file():
        first_todo += 1
    ranking: list[tuple[str, float]] | None = None
    ranking_file = out / "aiwq_ranking.json"
    tracker: AIWQTracker | None = None
    fp_dir = next((u.directory for u in units if u.phase.kind == "fp"), None)
    current_teacher = teacher
    if recipe.teacher == "self" and fp_dir is None:  # no float phase: the initial float student teaches
        current_teacher = _self_teacher(model, None).to(device)
    results: dict[int, PhaseResult] = {}

    def teacher_for(phase: Phase) -> nn.Module | None:
        nonlocal current_teacher
        if recipe.teacher != "self" or phase.kind == "fp":
            return current_teacher if recipe.teacher != "self" else None
        if current_teacher is None:  # the float student as the FP phase left it
            current_teacher = _self_teacher(model, ckpt.load_checkpoint(fp_dir)).to(device)
            if recipe.has("relu_in_fp"):
                _use_plain_relu(current_teacher, True)  # the float model as it was trained
        return current_teacher

    restored = None
    if first_todo > 0:  # resuming: continue from the last finished unit's weights (and EMA)
        last = units[first_todo - 1]
        set_phase_bits(model, recipe, last.phase)
        if ema is not None:
            set_phase_bits(ema.module, recipe, last.phase)
        restored = ckpt.load_checkpoint(last.directory)
        restored.restore(model, ema_model=ema.module if ema is not None else None)
        log.info("continuing after %s (%s)", last.phase.name, last.directory)

    for u in units:
        p = u.phase
        record = results.setdefault(u.phase_index, PhaseResult(p, [], (), skipped=True))
        if u.index < first_todo:
            info = json.loads((u.directory / "done.json").read_text())
            record.history += info["history"]
            record.frozen = tuple(info["frozen"])
            continue
        record.skipped = False
        set_phase_bits(model, recipe, p)
        if ema is not None:
            set_phase_bits(ema.module, recipe, p)
        before = units[u.index - 1].phase if u.index > 0 else None
        if fixed and (p.act_bits, p.weight_bits) != ((before.act_bits, before.weight_bits) if before else (None, None)):
            _calibrate_for_phase(model, ema, train_loader, recipe, epoch=u.epoch_offset)
        if u.index == first_todo and restored is not None and recipe.has("teacher_train_mode"):
            if teacher_for(p) is not None:  # the train-mode teacher's drifted BN statistics
                _restore_teacher_buffers(teacher_for(p), restored.extra)
        measures = p.kind == "sampling" and recipe.schedule.freeze == "aiwq"  # the other policies need no ranking
        if measures and tracker is None:
            tracker = make_tracker(recipe, model)
            if units[u.index - 1].phase is p:  # resuming inside the sampling phase: the EMA so far
                tracker.load_state_dict(json.loads((units[u.index - 1].directory / "aiwq_state.json").read_text()))
        if (ranking is None and p.freeze_fraction and p.freeze_fraction > 0
                and recipe.schedule.freeze == "aiwq"):  # its sampling phase finished earlier
            sampling_dir = next(v.directory.parent for v in reversed(units[: u.index]) if v.phase.kind == "sampling")
            ranking = _read_ranking(sampling_dir / "aiwq_ranking.json")
        frozen = frozen_for_phase(recipe, p, model, ranking)
        config = phase_config(recipe, p, frozen=frozen, epochs=u.epochs, seed=recipe.seed + u.index, device=device,
                              progress=progress)
        if tracker is not None:
            tracker.reset_epoch()

        def report(epoch: int, rec: dict[str, Any], u: _Unit = u) -> None:
            if callback is not None:
                callback(u.phase, u.epoch_offset - sum(q.epochs for q in phases[: u.phase_index]) + epoch, rec)

        history = fit(model, _OffsetLoader(train_loader, u.epoch_offset), val_loader, config,
                      teacher=teacher_for(p), out_dir=u.directory,
                      resume=resume and u.index == first_todo and p.kind != "sampling",
                      callback=report, ema=ema, meta={**meta_base, "phase": p.name, "model_args": {
                          **meta_base["model_args"], "weight_bits": p.weight_bits, "act_bits": p.act_bits}})
        if tracker is not None:
            _write_json(u.directory / "aiwq_state.json", tracker.state_dict())
        if measures and u.last_of_phase:
            ranking = tracker.ranking()
            kinds = layer_kinds(model, include_linear=recipe.aiwq.include_linear)
            rows = [{"layer": n, "aiwq": v, "kind": kinds[n]} for n, v in ranking]
            doc = {"phase": p.name, "weight_bits": p.weight_bits, "layers": len(rows), "ranking": rows,
                   "counts": tracker.counts()}
            _write_json(u.directory.parent / "aiwq_ranking.json", doc)
            _write_json(ranking_file, doc)
            tracker.remove()
            tracker = None
        _write_json(u.directory / "done.json", {"phase": p.name, "history": list(history), "frozen": list(frozen)})
        record.history += list(history)
        record.frozen = frozen
    if (ranking is None and ranking_file.is_file() and recipe.schedule.profit_bits
            and recipe.schedule.freeze == "aiwq"):
        ranking = _read_ranking(ranking_file)
    _publish_result(units[-1].directory, out)
    return RecipeResult([results[i] for i in sorted(results)], ranking, model, ema)


def _publish_result(last: Path, out: Path) -> None:
    """Copy the last phase's checkpoint to ``out`` itself, so ``evaluate``, ``pack`` and ``release`` take the run
    directory as it is (tensor file first, then the JSON that names it: the commit point)."""
    from .checkpoint import JSON_NAME, atomic_write_bytes

    doc = (last / JSON_NAME).read_bytes()
    tensor_file = json.loads(doc)["tensors"]["file"]
    atomic_write_bytes(out / tensor_file, (last / tensor_file).read_bytes())
    atomic_write_bytes(out / JSON_NAME, doc)
    for stale in out.glob("epoch-*.safetensors"):
        if stale.name != tensor_file:
            stale.unlink(missing_ok=True)
