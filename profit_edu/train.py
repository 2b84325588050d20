"""Training and evaluation: PROFIT's optimizer groups, warm-up + cosine schedule, distillation, weight EMA.

Everything here follows the official PROFIT training script (section E of the notes), written as small
functions you can read and test one by one:

* :func:`param_groups` - four SGD groups: the quantizers' ``a``, ``c`` (``"quant"``, lr x 1e-2, no decay),
  other 1-D parameters such as BN's gamma/beta and biases (``"bnbias"``, no decay), conv/linear weights
  (``"weight"``, decay) and the weights of *frozen* layers (``"frozen"``, lr 0, no decay). PROFIT freezes
  only the conv weight of a layer: its BN, ``a`` and ``c`` keep training.
* :func:`lr_multiplier` - linear warm-up from 0.1 x, then cosine down to 1e-3 x, set once per epoch.
* :func:`kd_loss` - knowledge distillation: soft cross-entropy to a frozen teacher's softmax (temperature 1).
* :class:`ModelEMA` - an exponential moving average of the whole model state (weights, ``a``, ``c``, BN
  statistics), evaluated beside the raw model every epoch.
* :func:`evaluate` and :func:`fit` - the loops. ``fit`` writes a checkpoint after each epoch and resumes from
  it *exactly*: on the CPU an interrupted-and-resumed run ends with bit-identical weights.

Glossary: ``e`` the epoch (0-based), ``W`` warm-up epochs, ``E`` total epochs, ``d`` the EMA decay.

Randomness. Data order and augmentation belong to the loader (``loader.set_epoch(e)`` makes them a pure
function of its seed and the epoch). Randomness *inside* a step (dropout) draws from torch's global generator,
which :func:`fit` seeds with ``config.seed`` inside ``torch.random.fork_rng`` (your own global RNG state is
left untouched) and saves in every checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import checkpoint as ckpt
from ._validate import is_int as _is_int
from ._validate import is_real as _is_real
from .layers import QConv2d, quantizers
from .quant import Quantizer

__all__ = [
    "DivergenceError",
    "History",
    "ModelEMA",
    "ResumeError",
    "TrainConfig",
    "bits_summary",
    "evaluate",
    "fit",
    "kd_loss",
    "lr_multiplier",
    "make_optimizer",
    "param_groups",
]

log = logging.getLogger(__name__)

WARMUP_START = 0.1  # the warm-up starts at 0.1 x the base lr
COSINE_FLOOR = 1e-3  # the cosine ends at 1e-3 x the base lr
# Fields that may change between a run and its resumption without changing the result.
RESUME_FREE_FIELDS = ("device", "progress", "checkpoint_every", "compile", "channels_last")


#: The checkpoint ``extra`` entry that holds :attr:`ModelEMA.updates` (so a resumed warm-up continues exactly).
EMA_UPDATES_KEY = "ema_updates"


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite. The last good checkpoint on disk is left as it was."""


class ResumeError(ValueError):
    """The run directory holds a checkpoint written with another training config, so it cannot be resumed."""


class Loader(Protocol):
    """What :func:`fit` needs from a data loader: batches of (float images, int64 labels), and a length.

    ``set_epoch(epoch)`` is optional; when present, ``fit`` calls it before each epoch (as the project's
    ``data.DeviceLoader`` and PyTorch's ``DistributedSampler`` expect).
    """

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]: ...

    def __len__(self) -> int: ...


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


def lr_multiplier(epoch: int, warmup: int, total: int) -> float:
    """The factor on every group's base learning rate in ``epoch`` (0-based), as in PROFIT's schedule.

    Math: 0.1 + 0.9 e/W for e < W;  1e-3 + (1 - 1e-3)(1 + cos(pi (e - W)/(E - W)))/2 for e >= W.

    Raises:
        ValueError: not 0 <= warmup <= total, or epoch outside 0..total-1.

    >>> [round(lr_multiplier(e, 0, 5), 3) for e in range(5)]
    [1.0, 0.905, 0.655, 0.346, 0.096]
    """
    if not (_is_int(epoch) and _is_int(warmup) and _is_int(total)):
        raise TypeError(f"epoch, warmup and total must be ints, got {epoch!r}, {warmup!r}, {total!r}")
    if not 0 <= warmup <= total:
        raise ValueError(f"warmup must be in 0..total (= {total}), got {warmup}")
    if not 0 <= epoch < total:
        raise ValueError(f"epoch must be in 0..total-1 (= {total - 1}), got {epoch}")
    if epoch < warmup:
        return WARMUP_START + (1 - WARMUP_START) * epoch / warmup
    progress = (epoch - warmup) / (total - warmup)
    return COSINE_FLOOR + (1 - COSINE_FLOOR) * (1 + math.cos(math.pi * progress)) / 2


def _set_lr(optimizer: torch.optim.Optimizer, multiplier: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * multiplier


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD (Nesterov momentum) over :func:`param_groups`; PROFIT builds a fresh one for every phase."""
    return torch.optim.SGD(param_groups(model, config), lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov, weight_decay=config.weight_decay)


# --------------------------------------------------------------------------------------------
# Losses and metrics
# --------------------------------------------------------------------------------------------
def kd_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Soft cross-entropy from the teacher's softmax to the student's (temperature 1), averaged over the batch.

    Math: -(1/N) sum_i sum_k p_teacher(k | x_i) log p_student(k | x_i)

    Shapes: (N, K), (N, K) -> scalar. No gradient flows into the teacher's logits.

    >>> round(kd_loss(torch.zeros(1, 4), torch.zeros(1, 4)).item(), 4)  # uniform vs uniform: log 4
    1.3863
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits must have the same shape, got {tuple(student_logits.shape)} "
                         f"and {tuple(teacher_logits.shape)}")
    p_teacher = F.softmax(teacher_logits.detach().float(), dim=1)
    return -(p_teacher * F.log_softmax(student_logits.float(), dim=1)).sum(dim=1).mean()


def _correct_topk(logits: Tensor, y: Tensor, k: int) -> int:
    top = logits.topk(k, dim=1).indices  # (N, k)
    return int((top == y[:, None]).any(dim=1).sum())


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], device: str | torch.device = "cpu",
             *, progress: bool = False, desc: str = "eval") -> dict[str, float | None]:
    """Top-1 and top-5 accuracy (in percent) and the mean cross-entropy of ``model`` on ``loader``.

    The model runs in eval mode (BN uses its running statistics) and is put back in the mode it was in.
    ``top5`` is None when there are fewer than 5 classes.

    Raises:
        ValueError: the loader yields no examples.

    >>> net = nn.Linear(2, 3); _ = net.weight.data.copy_(torch.eye(3, 2)); _ = net.bias.data.zero_()
    >>> evaluate(net, [(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 2]))])["top1"]
    50.0
    """
    was_training = model.training
    model.eval()
    n = correct1 = correct5 = 0
    loss_sum = 0.0
    top5 = True
    try:
        for x, y in _bar(loader, progress, desc):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            correct1 += _correct_topk(logits, y, 1)
            top5 = top5 and logits.shape[1] >= 5
            if top5:
                correct5 += _correct_topk(logits, y, 5)
            n += y.numel()
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("evaluate got an empty loader: no examples to score")
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n if top5 else None, "loss": loss_sum / n}


def bits_summary(model: nn.Module) -> dict[str, int | list[int | None] | None]:
    """The weight and activation bit widths of a model: one value when all quantizers agree (None: float).

    >>> bits_summary(nn.Linear(2, 2))
    {'weight': None, 'act': None}
    """
    out: dict[str, int | list[int | None] | None] = {}
    for role in ("weight", "act"):
        values = sorted({q.bits for _, q in quantizers(model, role)}, key=lambda b: -1 if b is None else b)
        out[role] = None if not values else values[0] if len(values) == 1 else values
    return out


# --------------------------------------------------------------------------------------------
# Weight EMA
# --------------------------------------------------------------------------------------------
class ModelEMA:
    """An exponential moving average of a model's whole state, updated after every optimizer step.

    Math: ema <- ema + (1 - d_n) (live - ema) for every floating-point entry of the state dict (weights, biases,
    BN gamma/beta *and* running mean/var, quantizer ``a_hat``/``c_hat``); integer and bool entries
    (``num_batches_tracked``, the quantizers' ``initialized`` flag) are copied. With d = 0.9997 the average
    spans about 1 / (1 - d) = 3333 steps.

    Warm-up (``warmup=True``, the default): after n updates, d_n = min(d, (1 + n) / (10 + n)), as TensorFlow's
    and timm's EMAs do, so the average forgets its starting point within a few hundred steps however large d is.
    Without it (the official code, ``warmup=False``) d_n = d: a run of a few hundred steps at d = 0.9997 keeps
    ~90 % of the starting weights, and an EMA of a quick-scale run scored at chance. :meth:`reset` restarts the
    average from the live model (PROFIT's fixed mode does so when the bit widths change).

    A quantizer that initialises itself from its first batch *after* the EMA was made is copied as a whole into
    the EMA at that moment (the official code averaged from the uninitialised values instead, notes G.12).
    Bit widths and negative-padding values are copied from the live model at every update.

    Args:
        model: the live model; it is deep-copied (forward hooks, e.g. AIWQ trackers, are not).
        decay: d in [0, 1).
        warmup: grow the decay with the number of updates (see above).

    >>> live = nn.Linear(1, 1, bias=False); _ = live.weight.data.fill_(0.0)
    >>> ema = ModelEMA(live, decay=0.5, warmup=False); _ = live.weight.data.fill_(1.0); ema.update(live)
    >>> ema.module.weight.item()
    0.5
    """

    def __init__(self, model: nn.Module, decay: float = 0.9997, *, warmup: bool = True) -> None:
        if not _is_real(decay) or not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be a number in [0, 1), got {decay!r}")
        if not isinstance(warmup, bool):
            raise TypeError(f"warmup must be True or False, got {warmup!r}")
        self.decay = float(decay)
        self.warmup = warmup
        self.updates = 0  # n, the number of updates so far (checkpoints keep it: see fit)
        self.module = copy.deepcopy(model).eval()
        for m in self.module.modules():
            # hooks that the live model's tools (AIWQ trackers, debuggers) registered must not run on the copy
            m._forward_hooks.clear()
            m._forward_pre_hooks.clear()
            m._backward_hooks.clear()
        self.module.requires_grad_(False)

    def _sync_settings(self, model: nn.Module) -> None:
        live_q = dict(quantizers(model))
        for name, q in quantizers(self.module):
            src = live_q.get(name)
            if src is None:
                raise ValueError(f"the live model has no quantizer {name!r}, which its EMA copy has: "
                                 "create the ModelEMA after quantize_model")
            q.bits = src.bits
            if src._ready and not q._ready:  # initialised from its first batch just now: copy it whole
                q.load_state_dict(src.state_dict())
        live_convs = {n: m for n, m in model.named_modules() if isinstance(m, QConv2d)}
        for name, m in self.module.named_modules():
            if isinstance(m, QConv2d) and name in live_convs:
                m.pad_value = live_convs[name].pad_value

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s current state.

        Raises:
            ValueError: ``model``'s state dict has other keys than the EMA copy (quantized after the EMA was made?).
        """
        self._sync_settings(model)
        live, ema = model.state_dict(), self.module.state_dict()
        if live.keys() != ema.keys():
            diff = sorted(set(live) ^ set(ema))
            raise ValueError(f"the model and its EMA have different state keys ({diff[:5]} ...): create the "
                             "ModelEMA after quantize_model, from the model being trained")
        floats_ema, floats_live = [], []
        for key, e in ema.items():
            if e.is_floating_point():
                floats_ema.append(e)
                floats_live.append(live[key])
            else:
                e.copy_(live[key])
        if floats_ema:
            torch._foreach_lerp_(floats_ema, floats_live, 1.0 - self.current_decay())
        self.updates += 1

    def current_decay(self) -> float:
        """d_n, the decay the next update uses."""
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Restart the average from ``model``'s current state (n = 0)."""
        self._sync_settings(model)
        self.module.load_state_dict(model.state_dict(), strict=True)
        self.updates = 0

    def state_dict(self) -> dict[str, Tensor]:
        return self.module.state_dict()


# --------------------------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------------------------
class History(list):
    """The per-epoch records of :func:`fit`, a plain list of dicts, with one helper for plotting.

    Each record has: ``epoch``, ``lr`` (base lr x multiplier), ``train_loss``, ``train_top1``, ``val_top1``,
    ``val_top5``, ``val_loss``, ``ema_val_top1``, ``ema_val_top5``, ``bits`` (see :func:`bits_summary`),
    ``frozen`` (list of frozen layers), ``steps`` and ``wall_s`` (seconds for the epoch, evaluation included).
    Missing measurements (no validation loader, no EMA) are None.

    >>> History([{"epoch": 0, "val_top1": 10.0}, {"epoch": 1, "val_top1": 30.0}]).column("val_top1")
    [10.0, 30.0]
    """

    def column(self, key: str) -> list[Any]:
        """One field across epochs, e.g. ``history.column("val_top1")``."""
        return [record.get(key) for record in self]


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
def _bar(iterable: Iterable, enabled: bool, desc: str, total: int | None = None) -> Iterable:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm  # imported lazily: tqdm.auto probes for Jupyter

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def _rng_devices(device: torch.device) -> tuple[list[int], str]:
    """What ``torch.random.fork_rng`` must save for ``device`` besides the CPU generator."""
    if device.type == "cpu":
        return [], "cuda"
    index = device.index if device.index is not None else getattr(torch, device.type).current_device()
    return [index], device.type


def _rng_state(device: torch.device) -> dict[str, Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Mapping[str, Tensor], device: torch.device) -> None:
    if "cpu" in state:
        torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    elif "cuda" in state or device.type == "cuda":
        log.warning("resuming on %s from a run on another device: dropout draws will differ", device)


def _check_resume_config(saved: Mapping[str, Any], config: TrainConfig, source: Path | None) -> None:
    now = config.to_dict()
    differ = [f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}" for k in now
              if k not in RESUME_FREE_FIELDS and saved.get(k) != now[k]]
    if differ:
        raise ResumeError(f"cannot resume from {source}: the training config differs ({'; '.join(differ)}). "
                         "Use the same config, another out_dir, or resume=False to start over")
    if saved.get("device") != now["device"]:
        log.warning("resuming a run trained on %s on %s: results will not be bit-identical", saved.get("device"),
                    now["device"])


def _train_epoch(
    model: nn.Module, loader: Loader, optimizer: torch.optim.Optimizer, config: TrainConfig, epoch: int,
    *, teacher: nn.Module | None, ema: ModelEMA | None, device: torch.device, last_good: str,
    forward: nn.Module | None = None,
) -> dict[str, Any]:
    """One epoch of SGD; ``forward`` (e.g. a ``torch.compile``d ``model``) runs the steps when given.

    Steps run eagerly through ``model`` until every active quantizer has initialised itself from data: the
    data-dependent initialisation (``.item()``, parameter copies) would otherwise be traced by ``torch.compile``,
    breaking the graph at every quantizer and exhausting its recompilation limit. The numbers computed are the
    same either way.
    """
    model.train()
    forward = forward if forward is not None else model
    ready = forward is model or _quantizers_ready(model)
    n = correct = steps = 0
    loss_sum = 0.0
    bar = _bar(loader, config.progress, f"epoch {epoch}", total=_safe_len(loader))
    for step, (x, y) in enumerate(bar):
        x, y = x.to(device, non_blocking=True, memory_format=_memory_format(config)), y.to(device, non_blocking=True)
        logits = (forward if ready else model)(x)
        ready = ready or _quantizers_ready(model)
        loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
        if teacher is not None and config.kd_weight > 0:
            with torch.no_grad():
                teacher_logits = teacher(x)
            loss = loss + config.kd_weight * kd_loss(logits, teacher_logits)
        value = loss.item()
        if not math.isfinite(value):
            raise DivergenceError(
                f"training diverged: the loss is {value} at epoch {epoch}, step {step} (both 0-based). "
                f"{last_good} Try a lower lr (base lr {config.lr}), grad_clip, or check the inputs for NaN."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update(model)
        batch = y.numel()
        n += batch
        steps += 1
        loss_sum += value * batch
        correct += _correct_topk(logits.detach(), y, 1)
        if config.progress:
            bar.set_postfix(loss=f"{value:.3f}")
    if n == 0:
        raise ValueError(f"the training loader yielded no batches in epoch {epoch}")
    return {"train_loss": loss_sum / n, "train_top1": 100.0 * correct / n, "steps": steps}


def _memory_format(config: TrainConfig) -> torch.memory_format:
    return torch.channels_last if config.channels_last else torch.contiguous_format


def _set_memory_format(modules: Iterable[nn.Module | None], memory_format: torch.memory_format) -> None:
    """Lay out the 4-d weights (convolutions) of ``modules`` in ``memory_format``, in place."""
    for m in modules:
        if m is not None:
            m.to(memory_format=memory_format)


def _quantizers_ready(model: nn.Module) -> bool:
    """Whether every quantizer that is on (bits not None) has initialised its parameters from data."""
    return all(q._ready for _, q in quantizers(model) if q.bits is not None)


def _safe_len(loader: object) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def fit(
    model: nn.Module,
    train_loader: Loader,
    val_loader: Iterable[tuple[Tensor, Tensor]] | None,
    config: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = True,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
    ema: ModelEMA | None = None,
    meta: Mapping[str, Any] | None = None,
) -> History:
    """Train ``model`` for ``config.epochs`` epochs; evaluate it (and its EMA) after each; checkpoint; resume.

    One step: loss = CE(student, labels) [+ kd_weight * :func:`kd_loss`(student, teacher)], backward, optional
    gradient clipping, SGD step, EMA update. The learning rate is set once per epoch by :func:`lr_multiplier`.

    Args:
        model: the model to train, in place (float or quantized; build the quantized model *before* calling).
        train_loader: yields (x, y) batches; ``set_epoch(e)`` is called before epoch e when it exists.
        val_loader: batches to evaluate on after every epoch, or None.
        config: a :class:`TrainConfig`.
        teacher: a frozen model for distillation (never updated; eval mode unless ``config.teacher_train_mode``).
        out_dir: where to write a checkpoint after each completed epoch (see :mod:`profit_edu.checkpoint`).
        resume: continue from ``out_dir``'s checkpoint when there is one (the config must match); False starts
            over and overwrites it.
        callback: called as ``callback(epoch, record)`` after each epoch, once its checkpoint is written.
        ema: an existing :class:`ModelEMA` to keep averaging into (PROFIT keeps one EMA across all phases);
            by default a new one is made when ``config.ema_decay`` is not None.
        meta: JSON facts stored in every checkpoint (the CLI stores the model-building arguments).

    Returns:
        The :class:`History`, including the epochs restored from a checkpoint.

    Raises:
        DivergenceError: the loss became NaN or infinite (the last checkpoint on disk stays untouched).
        ValueError: a bad ``config.frozen`` name.
        ResumeError: ``out_dir`` holds a checkpoint written with another config (and ``resume`` is True).
        profit_edu.checkpoint.CheckpointError: a damaged checkpoint, or one that does not fit the model.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    device = torch.device(config.device)
    model.to(device)
    if teacher is not None:
        teacher.to(device)
    optimizer = make_optimizer(model, config)
    if ema is None and config.ema_decay is not None:
        ema = ModelEMA(model, config.ema_decay)
    elif ema is not None:
        ema.module.to(device)
    out = Path(out_dir) if out_dir is not None else None
    history = History()
    start = 0
    was_training = model.training
    teacher_was_training = teacher.training if teacher is not None else False
    devices, device_type = _rng_devices(device)
    with torch.random.fork_rng(devices=devices, device_type=device_type):
        torch.manual_seed(config.seed)
        if out is not None and resume and ckpt.has_checkpoint(out):
            state = ckpt.load_checkpoint(out)
            _check_resume_config(state.config, config, state.path)
            state.restore(model, ema_model=ema.module if ema is not None else None, optimizer=optimizer)
            if teacher is not None and config.teacher_train_mode:
                _restore_teacher(teacher, state.extra, state.path)
            if ema is not None and EMA_UPDATES_KEY in state.extra:
                ema.updates = int(state.extra[EMA_UPDATES_KEY])
            _set_rng_state(state.rng, device)
            history = History(state.history)
            start = state.epoch + 1
            log.info("resumed from %s after epoch %d", state.path, state.epoch)
        step_model = torch.compile(model) if config.compile else model  # shares model's parameters and buffers
        last_good = "No checkpoint was written yet."
        if start > 0:
            last_good = f"The checkpoint of epoch {start - 1} in {out} is untouched."
        try:
            # in place: the optimizer keeps the same Parameter objects; `finally` puts the default layout back
            _set_memory_format([model, teacher, ema.module if ema is not None else None], _memory_format(config))
            for epoch in range(start, config.epochs):
                t0 = time.perf_counter()
                multiplier = lr_multiplier(epoch, config.warmup_epochs, config.epochs)
                _set_lr(optimizer, multiplier)
                if hasattr(train_loader, "set_epoch"):
                    train_loader.set_epoch(epoch)
                if teacher is not None:
                    teacher.train(config.teacher_train_mode)
                train = _train_epoch(model, train_loader, optimizer, config, epoch, teacher=teacher, ema=ema,
                                     device=device, last_good=last_good, forward=step_model)
                val, ema_val = {}, {}
                if val_loader is not None:
                    val = evaluate(model, val_loader, device, progress=config.progress, desc="test")
                    if ema is not None:
                        ema_val = evaluate(ema.module, val_loader, device, progress=config.progress, desc="test (EMA)")
                record = {
                    "epoch": epoch, "lr": config.lr * multiplier, **train,
                    "val_top1": val.get("top1"), "val_top5": val.get("top5"), "val_loss": val.get("loss"),
                    "ema_val_top1": ema_val.get("top1"), "ema_val_top5": ema_val.get("top5"),
                    "bits": bits_summary(model), "frozen": list(config.frozen),
                    "wall_s": time.perf_counter() - t0,
                }
                history.append(record)
                log.info("epoch %d: loss %.4f, train top-1 %.2f, val top-1 %s", epoch, record["train_loss"],
                         record["train_top1"], record["val_top1"])
                if out is not None and ((epoch + 1) % config.checkpoint_every == 0 or epoch == config.epochs - 1):
                    extra = ({f"teacher.{k}": v for k, v in teacher.named_buffers()}
                             if teacher is not None and config.teacher_train_mode else {})
                    if ema is not None:
                        extra[EMA_UPDATES_KEY] = torch.tensor(ema.updates, dtype=torch.int64)
                    ckpt.save_checkpoint(out, epoch=epoch, model=model, optimizer=optimizer,
                                         ema_model=ema.module if ema is not None else None, history=history,
                                         config=config.to_dict(), meta=meta, rng=_rng_state(device), extra=extra)
                    last_good = f"The checkpoint of epoch {epoch} in {out} is untouched."
                if callback is not None:
                    callback(epoch, record)
        finally:
            model.train(was_training)
            if teacher is not None:
                teacher.train(teacher_was_training)
            if config.channels_last:
                _set_memory_format([model, teacher, ema.module if ema is not None else None],
                                   torch.contiguous_format)
    return history


def _restore_teacher(teacher: nn.Module, extra: Mapping[str, Tensor], source: Path | None) -> None:
    """Put back a train-mode teacher's BN statistics, which drift during training."""
    buffers = dict(teacher.named_buffers())
    saved = {k.removeprefix("teacher."): v for k, v in extra.items() if k.startswith("teacher.")}
    if saved.keys() != buffers.keys():
        diff = sorted(set(saved) ^ set(buffers))
        raise ckpt.CheckpointError(f"{source}: the teacher's buffers differ from the checkpoint's ({diff[:5]})")
    with torch.no_grad():
        for name, value in saved.items():
            if value.shape != buffers[name].shape:
                raise ckpt.CheckpointError(f"{source}: teacher buffer {name!r} has shape {tuple(value.shape)} in "
                                           f"the checkpoint, {tuple(buffers[name].shape)} in the teacher")
            buffers[name].copy_(value)
