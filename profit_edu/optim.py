"""How PROFIT optimizes: the training config, SGD's four parameter groups, and the warm-up + cosine schedule.

As in the official PROFIT training script (section E of the notes):

* :class:`TrainConfig` - everything :func:`profit_edu.train.fit` needs to know: the optimizer, the schedule,
  distillation, EMA and bookkeeping, checked once.
* :func:`param_groups` - four SGD groups: the quantizers' ``a``, ``c`` (``"quant"``, lr x 1e-2, no decay),
  other 1-D parameters such as BN's gamma/beta and biases (``"bnbias"``, no decay), conv/linear weights
  (``"weight"``, decay) and the weights of *frozen* layers (``"frozen"``, lr 0, no decay). PROFIT freezes
  only the conv weight of a layer: its BN, ``a`` and ``c`` keep training.
* :func:`lr_multiplier` - linear warm-up from 0.1 x, then cosine down to 1e-3 x, set once per epoch.

Glossary: ``e`` the epoch (0-based), ``W`` warm-up epochs, ``E`` total epochs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._validate import is_int as _is_int
from ._validate import is_real as _is_real
from .quant import Quantizer

__all__ = ["TrainConfig", "lr_multiplier", "make_optimizer", "param_groups"]

WARMUP_START = 0.1  # the warm-up starts at 0.1 x the base lr
COSINE_FLOOR = 1e-3  # the cosine ends at 1e-3 x the base lr


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """How to train: the optimizer, the schedule, distillation, EMA and bookkeeping.

    Args:
        epochs: E, the number of epochs (>= 1).
        lr: the base learning rate of the ``"bnbias"`` and ``"weight"`` groups (PROFIT's README: 0.005).
        weight_decay: L2 decay of the ``"weight"`` group only (PROFIT's README: 4e-5).
        momentum, nesterov: SGD with Nesterov momentum 0.9, as in the paper.
        warmup_epochs: W, the epochs of linear warm-up before the cosine (0..epochs; PROFIT: 3 of 15).
        quant_lr_mult: the quantizers' ``a``, ``c`` learn at ``lr * quant_lr_mult`` (PROFIT: 1e-2).
        ema_decay: d of the weight EMA (PROFIT: 0.9997), or None for no EMA.
        kd_weight: weight of the distillation term; used only when :func:`fit` gets a teacher.
        teacher_train_mode: run the teacher in train mode, so its BN uses batch statistics and its running
            statistics drift, as the official script did (notes G.11). Default: eval mode.
        frozen: exact module names of conv/linear layers whose *weight* is frozen (lr 0, no decay).
        seed: seeds the randomness inside training steps (dropout); the loader has its own seed.
        device: where to train ("cpu", "cuda", "cuda:1").
        progress: show tqdm progress bars.
        grad_clip: clip the gradients' global L2 norm to this value, or None.
        label_smoothing: passed to the cross-entropy with the labels (0: none, as in PROFIT).
        checkpoint_every: write a checkpoint every this many epochs (the last epoch is always written).
        compile: run the training forward/backward through ``torch.compile`` (minutes of compilation, then a
            faster step on long runs; evaluation and checkpoints use the eager model, which shares its weights).
        channels_last: train and evaluate in the NHWC memory layout (``torch.channels_last``). The numbers are the
            same up to float rounding. On the development CPU oneDNN's NHWC depthwise convolutions made a float
            MobileNet-v2 step 0.5-0.7x as long; a W4A4 step gained less, and lost at 224x224, where its
            element-wise quantizers dominate (``benchmarks/train_step.py --channels-last`` measures it). The
            model is put back in the default layout when :func:`fit` returns, so checkpoints and packing never
            see the difference.
        lr_per_step: set the learning rate before every step, at the epoch's fraction done
            (:func:`lr_multiplier` of ``epoch + step / steps``), instead of once per epoch as the official code
            does. Its phases last many epochs; a phase of *one* epoch scheduled per epoch never decays and ends
            at its full rate, mid-flight (the CIFAR recipes' phases are one epoch long).

    Raises:
        ValueError / TypeError: a field outside its allowed range, naming the field and the value received.

    >>> TrainConfig(epochs=15, warmup_epochs=3).warmup_epochs
    3
    """

    epochs: int = 1
    lr: float = 0.005
    weight_decay: float = 4e-5
    momentum: float = 0.9
    nesterov: bool = True
    warmup_epochs: int = 0
    quant_lr_mult: float = 1e-2
    ema_decay: float | None = 0.9997
    kd_weight: float = 1.0
    teacher_train_mode: bool = False
    frozen: tuple[str, ...] = ()
    seed: int = 0
    device: str = "cpu"
    progress: bool = False
    grad_clip: float | None = None
    label_smoothing: float = 0.0
    checkpoint_every: int = 1
    compile: bool = False
    channels_last: bool = False
    lr_per_step: bool = False

    def __post_init__(self) -> None:
        def fail(name: str, allowed: str) -> None:
            raise ValueError(f"TrainConfig.{name} must be {allowed}, got {getattr(self, name)!r}")

        if not _is_int(self.epochs) or self.epochs < 1:
            fail("epochs", "an int >= 1")
        if not _is_real(self.lr) or self.lr <= 0:
            fail("lr", "a finite number > 0")
        if not _is_real(self.weight_decay) or self.weight_decay < 0:
            fail("weight_decay", "a finite number >= 0")
        if not _is_real(self.momentum) or not 0 <= self.momentum < 1:
            fail("momentum", "a number in [0, 1)")
        if not isinstance(self.nesterov, bool):
            fail("nesterov", "True or False")
        if self.nesterov and self.momentum == 0:
            fail("momentum", "> 0 when nesterov=True (Nesterov momentum needs momentum)")
        if not _is_int(self.warmup_epochs) or not 0 <= self.warmup_epochs <= self.epochs:
            fail("warmup_epochs", f"an int in 0..epochs (= {self.epochs})")
        if not _is_real(self.quant_lr_mult) or self.quant_lr_mult < 0:
            fail("quant_lr_mult", "a finite number >= 0")
        if self.ema_decay is not None and (not _is_real(self.ema_decay) or not 0 <= self.ema_decay < 1):
            fail("ema_decay", "None (no EMA) or a number in [0, 1)")
        if not _is_real(self.kd_weight) or self.kd_weight < 0:
            fail("kd_weight", "a finite number >= 0")
        if not isinstance(self.teacher_train_mode, bool):
            fail("teacher_train_mode", "True or False")
        if not isinstance(self.lr_per_step, bool):
            fail("lr_per_step", "True or False")
        if isinstance(self.frozen, str):
            raise TypeError(f"TrainConfig.frozen must be a tuple of module names, got the string {self.frozen!r}; "
                            f"write frozen=({self.frozen!r},)")
        object.__setattr__(self, "frozen", tuple(self.frozen))  # lists (from JSON or YAML) become tuples
        bad = [n for n in self.frozen if not isinstance(n, str) or not n]
        if bad:
            fail("frozen", f"a tuple of non-empty module names (bad entries: {bad})")
        if not _is_int(self.seed):
            fail("seed", "an int")
        if isinstance(self.device, torch.device):
            object.__setattr__(self, "device", str(self.device))
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"TrainConfig.device must name a torch device ('cpu', 'cuda', 'cuda:0'), "
                             f"got {self.device!r}") from err
        if not isinstance(self.progress, bool):
            fail("progress", "True or False")
        if self.grad_clip is not None and (not _is_real(self.grad_clip) or self.grad_clip <= 0):
            fail("grad_clip", "None or a finite number > 0")
        if not _is_real(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            fail("label_smoothing", "a number in [0, 1)")
        if not _is_int(self.checkpoint_every) or self.checkpoint_every < 1:
            fail("checkpoint_every", "an int >= 1")
        if not isinstance(self.compile, bool):
            fail("compile", "True or False")
        if not isinstance(self.channels_last, bool):
            fail("channels_last", "True or False")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-friendly dict (``frozen`` as a list)."""
        d = dataclasses.asdict(self)
        d["frozen"] = list(self.frozen)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build a config from a dict, rejecting unknown keys (a typo must not be ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**dict(d))


# --------------------------------------------------------------------------------------------
# Optimizer groups and schedule
# --------------------------------------------------------------------------------------------
def _frozen_modules(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in modules]
    if unknown:
        layers = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
        raise ValueError(f"frozen names {unknown} are not modules of {type(model).__name__}; names are exact "
                         f"module names, e.g. {layers[:4]}")
    wrong = [f"{n} ({type(modules[n]).__name__})" for n in names if not isinstance(modules[n], (nn.Conv2d, nn.Linear))]
    if wrong:
        raise ValueError(f"frozen names must be conv or linear layers (PROFIT freezes their weights), got {wrong}")
    return {n: modules[n] for n in names}


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """Split the model's parameters into PROFIT's SGD parameter groups.

    The checks run in this order, so each parameter lands in the first group that claims it:

    ==========  ===========================================  ===========================  ============
    group       parameters                                   learning rate                weight decay
    ==========  ===========================================  ===========================  ============
    ``quant``   every parameter of a ``Quantizer`` (a, c)    lr x ``quant_lr_mult``       0
    ``frozen``  ``.weight`` of the conv/linear layers named  0                            0
                in ``config.frozen``
    ``bnbias``  every other parameter with <= 1 dimension    lr                           0
                (BN gamma/beta, biases)
    ``weight``  every other parameter (conv/linear weights)  lr                           weight_decay
    ==========  ===========================================  ===========================  ============

    Each group dict holds ``params``, ``lr``, ``weight_decay`` (what ``torch.optim.SGD`` reads), plus ``name``,
    ``base_lr`` (the lr before the schedule's multiplier) and ``param_names``. Empty groups are left out.

    Raises:
        ValueError: a name in ``config.frozen`` is not a module of the model, or not a conv/linear layer.

    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    >>> [(g["name"], g["param_names"]) for g in param_groups(net, TrainConfig())]
    [('bnbias', ['0.bias', '1.weight', '1.bias']), ('weight', ['0.weight'])]
    """
    quant_ids = {id(p) for m in model.modules() if isinstance(m, Quantizer) for p in m.parameters()}
    frozen_ids = {id(m.weight) for m in _frozen_modules(model, config.frozen).values()}
    spec = {  # name -> (lr, weight decay)
        "quant": (config.lr * config.quant_lr_mult, 0.0),
        "frozen": (0.0, 0.0),
        "bnbias": (config.lr, 0.0),
        "weight": (config.lr, config.weight_decay),
    }
    members: dict[str, list[tuple[str, nn.Parameter]]] = {k: [] for k in spec}
    for name, p in model.named_parameters():
        if id(p) in quant_ids:
            group = "quant"
        elif id(p) in frozen_ids:
            group = "frozen"
        elif p.dim() <= 1:
            group = "bnbias"
        else:
            group = "weight"
        members[group].append((name, p))
    return [
        {"name": g, "params": [p for _, p in members[g]], "param_names": [n for n, _ in members[g]],
         "lr": lr, "base_lr": lr, "weight_decay": wd}
        for g, (lr, wd) in spec.items() if members[g]
    ]


def lr_multiplier(epoch: float, warmup: int, total: int) -> float:
    """The factor on every group's base learning rate in ``epoch`` (0-based), as in PROFIT's schedule.

    Math: 0.1 + 0.9 e/W for e < W;  1e-3 + (1 - 1e-3)(1 + cos(pi (e - W)/(E - W)))/2 for e >= W.

    ``epoch`` may be fractional (``2 + step / steps_per_epoch``): :func:`~profit_edu.train.fit` with
    ``TrainConfig(lr_per_step=True)`` sets the rate before every step, so that a phase of one epoch decays too
    (once per epoch, its one epoch has ``e = 0`` and the factor 1 throughout).

    Raises:
        ValueError: not 0 <= warmup <= total, or epoch outside 0..total-1.

    >>> [round(lr_multiplier(e, 0, 5), 3) for e in range(5)]
    [1.0, 0.905, 0.655, 0.346, 0.096]
    """
    if not (_is_real(epoch) and _is_int(warmup) and _is_int(total)):
        raise TypeError(f"epoch must be a number, warmup and total ints, got {epoch!r}, {warmup!r}, {total!r}")
    if not 0 <= warmup <= total:
        raise ValueError(f"warmup must be in 0..total (= {total}), got {warmup}")
    if not 0 <= epoch < total:
        raise ValueError(f"epoch must be in [0, total) (total = {total}), got {epoch}")
    if epoch < warmup:
        return WARMUP_START + (1 - WARMUP_START) * epoch / warmup
    progress = (epoch - warmup) / (total - warmup)
    return COSINE_FLOOR + (1 - COSINE_FLOOR) * (1 + math.cos(math.pi * progress)) / 2


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD (Nesterov momentum) over :func:`param_groups`; PROFIT builds a fresh one for every phase."""
    return torch.optim.SGD(param_groups(model, config), lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov, weight_decay=config.weight_decay)
