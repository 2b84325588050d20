"""Training and evaluation: the loop, distillation, and checkpoints that resume exactly.

Everything here follows the official PROFIT training script (section E of the notes), written as small
functions you can read and test one by one:

* :func:`kd_loss` - knowledge distillation: soft cross-entropy to a frozen teacher's softmax (temperature 1).
* :func:`evaluate` and :func:`fit` - the loops. ``fit`` trains with :func:`~profit_edu.optim.make_optimizer`'s
  SGD groups and :func:`~profit_edu.optim.lr_multiplier`'s schedule (see :mod:`profit_edu.optim`), updates a
  :class:`~profit_edu.ema.ModelEMA` after every step, writes a checkpoint after each epoch and resumes from
  it *exactly*: on the CPU an interrupted-and-resumed run ends with bit-identical weights.

The loop to read first is :func:`_train_epoch` (batch, forward, loss, backward, step, log), then :func:`fit`
(the epochs); everything else (device, RNG, resume, compilation, memory layout, checkpoints) is a named helper
around them.

Randomness. Data order and augmentation belong to the loader (``loader.set_epoch(e)`` makes them a pure
function of its seed and the epoch). Randomness *inside* a step (dropout) draws from torch's global generator,
which :func:`fit` seeds with ``config.seed`` inside ``torch.random.fork_rng`` (your own global RNG state is
left untouched) and saves in every checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import checkpoint as ckpt
from .ema import ModelEMA
from .layers import quantizers
from .optim import TrainConfig, lr_multiplier, make_optimizer, param_groups

if TYPE_CHECKING:  # annotations only
    from .distributed import World

__all__ = ["DivergenceError", "History", "ModelEMA", "ResumeError", "TrainConfig", "bits_summary", "evaluate", "fit",
           "kd_loss", "lr_multiplier", "make_optimizer", "param_groups"]

log = logging.getLogger(__name__)

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
             *, progress: bool = False, desc: str = "eval", reduce: Callable[[Tensor], Tensor] | None = None
             ) -> dict[str, float | None]:
    """Top-1 and top-5 accuracy (in percent) and the mean cross-entropy of ``model`` on ``loader``.

    The model runs in eval mode (BN uses its running statistics) and is put back in the mode it was in.
    ``top5`` is None when there are fewer than 5 classes.

    ``reduce`` combines the counts of several processes that each scored a shard of the data: it gets the
    float64 tensor (examples, top-1 hits, top-5 hits, summed loss) and returns its sum over the processes
    (e.g. :meth:`profit_edu.distributed.World.all_reduce_sum`), so every process returns the scores of the whole
    data set.

    Raises:
        ValueError: the loader yields no examples (on any process, with ``reduce``).

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
    if reduce is not None:  # the sums over every process's shard (the counts are exact in float64)
        total = reduce(torch.tensor([n, correct1, correct5, loss_sum], dtype=torch.float64, device=device)).tolist()
        n, correct1, correct5, loss_sum = int(total[0]), int(total[1]), int(total[2]), total[3]
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
def _train_epoch(
    model: nn.Module, loader: Loader, optimizer: torch.optim.Optimizer, config: TrainConfig, epoch: int,
    *, teacher: nn.Module | None, ema: ModelEMA | None, device: torch.device, last_good: str,
    forward: nn.Module | None = None, eager: nn.Module | None = None,
) -> dict[str, Any]:
    """One epoch of SGD: for every batch, forward, loss, backward, step (and the EMA), log.

    ``forward`` (e.g. a ``torch.compile``d ``model``) runs the steps once the quantizers are ready (see
    :class:`_Forward`); ``eager`` (e.g. ``model`` in DistributedDataParallel) runs them until then. ``last_good``
    names the last checkpoint on disk, for the message of a divergence.
    """
    model.train()
    run_forward = _Forward(model, forward, eager)
    n = correct = steps = 0
    loss_sum = 0.0
    steps_per_epoch = _safe_len(loader)
    if config.lr_per_step and not steps_per_epoch:
        raise ValueError("TrainConfig(lr_per_step=True) needs a training loader with a length (len(loader) > 0)")
    bar = _bar(loader, config.progress, f"epoch {epoch}", total=steps_per_epoch)
    for step, (x, y) in enumerate(bar):
        if config.lr_per_step:  # the schedule at the epoch's fraction done (one-epoch phases decay too)
            done = min(step, steps_per_epoch - 1) / steps_per_epoch
            _set_lr(optimizer, lr_multiplier(epoch + done, config.warmup_epochs, config.epochs))
        x, y = x.to(device, non_blocking=True, memory_format=_memory_format(config)), y.to(device, non_blocking=True)
        logits = run_forward(x)
        loss = _loss(logits, y, x, teacher, config)
        value = _loss_value(loss, epoch, step, last_good, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update(model)
        n, steps = n + y.numel(), steps + 1
        loss_sum += value * y.numel()
        correct += _correct_topk(logits.detach(), y, 1)
        if config.progress:
            bar.set_postfix(loss=f"{value:.3f}")
    if n == 0:
        raise ValueError(f"the training loader yielded no batches in epoch {epoch}")
    return {"train_loss": loss_sum / n, "train_top1": 100.0 * correct / n, "steps": steps}


def fit(model: nn.Module, train_loader: Loader, val_loader: Iterable[tuple[Tensor, Tensor]] | None,
        config: TrainConfig, *, teacher: nn.Module | None = None, out_dir: str | os.PathLike | None = None,
        resume: bool = True, callback: Callable[[int, dict[str, Any]], None] | None = None,
        ema: ModelEMA | None = None, meta: Mapping[str, Any] | None = None, world: World | None = None,
        keep_previous: bool = False) -> History:
    """Train ``model`` for ``config.epochs`` epochs; evaluate it (and its EMA) after each; checkpoint; resume.

    Each epoch: set the learning rate (:func:`lr_multiplier`), train (:func:`_train_epoch`: CE [+ kd_weight *
    :func:`kd_loss`], backward, optional gradient clipping, SGD step, EMA update), evaluate, checkpoint, report.
    Device placement, the RNG, resuming, compilation and the memory layout are the helpers around the loop.

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
        ema: an existing :class:`~profit_edu.ema.ModelEMA` to keep averaging into (PROFIT keeps one across all
            phases); by default a new one is made when ``config.ema_decay`` is not None.
        meta: JSON facts stored in every checkpoint (the CLI stores the model-building arguments).
        world: train on several processes (:class:`~profit_edu.distributed.World`; each loader gives its shard):
            steps run through ``world.wrap(model)`` (DDP), process r seeds with ``config.seed + r``, the history
            combines all processes, the main process writes the checkpoints (with every process's generator).
        keep_previous: keep the previous epoch's checkpoint too (:func:`~profit_edu.checkpoint.save_checkpoint`).

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
    optimizer, ema = _place(model, teacher, ema, config, device)
    out = Path(out_dir) if out_dir is not None else None
    with _seeded_rng(config.seed + (world.rank if world is not None else 0), device):
        history, start = _resume(out, model, optimizer, config, device, teacher, ema, world, resume)
        eager = world.wrap(model) if world is not None else model  # DDP shares model's parameters and buffers
        step_model = torch.compile(eager) if config.compile else eager  # so does the compiled module
        last_good = _last_good(out, start - 1)
        with _memory_layout(model, teacher, ema, config):
            for epoch in range(start, config.epochs):
                record = _epoch(epoch, model, train_loader, val_loader, optimizer, config, teacher=teacher, ema=ema,
                                device=device, last_good=last_good, forward=step_model, eager=eager, world=world)
                history.append(record)
                if out is not None and ((epoch + 1) % config.checkpoint_every == 0 or epoch == config.epochs - 1):
                    _save(out, epoch, model, optimizer, config, device, teacher, ema, history, meta, world=world,
                          keep_previous=keep_previous)
                    last_good = _last_good(out, epoch)
                if callback is not None:
                    callback(epoch, record)
    return history


def _epoch(epoch: int, model: nn.Module, train_loader: Loader, val_loader: Iterable[tuple[Tensor, Tensor]] | None,
           optimizer: torch.optim.Optimizer, config: TrainConfig, *, teacher: nn.Module | None,
           ema: ModelEMA | None, device: torch.device, last_good: str, forward: nn.Module, eager: nn.Module,
           world: World | None) -> dict[str, Any]:
    """One epoch of :func:`fit`: its learning rate, the training pass, validation; returns the history record."""
    t0 = time.perf_counter()
    multiplier = _start_epoch(epoch, optimizer, train_loader, teacher, config)
    train = _train_epoch(model, train_loader, optimizer, config, epoch, teacher=teacher, ema=ema, device=device,
                         last_good=last_good, forward=forward, eager=eager)
    reduce = None
    if world is not None:
        reduce = world.all_reduce_sum
        means = reduce(torch.tensor([train["train_loss"], train["train_top1"]], dtype=torch.float64, device=device))
        # every process trained on as many images (equal shards, whole batches): the mean is the whole epoch's
        train["train_loss"], train["train_top1"] = (means / world.size).tolist()
    record = {"epoch": epoch, "lr": config.lr * multiplier, **train,
              **_validate(model, ema, val_loader, device, config.progress, reduce), "bits": bits_summary(model),
              "frozen": list(config.frozen), "wall_s": time.perf_counter() - t0}
    log.info("epoch %d: loss %.4f, train top-1 %.2f, val top-1 %s", epoch, record["train_loss"],
             record["train_top1"], record["val_top1"])
    return record


# --------------------------------------------------------------------------------------------
# Around the loop: the step's pieces, device, RNG, resume, memory layout, checkpoints
# --------------------------------------------------------------------------------------------
class _Forward:
    """The training forward: through ``eager`` (default: ``model`` itself) until every active quantizer has
    initialised itself from data, then through ``compiled`` (e.g. ``torch.compile(eager)``, which shares its
    weights) when given.

    The data-dependent initialisation (``.item()``, parameter copies) would otherwise be traced by
    ``torch.compile``, breaking the graph at every quantizer and exhausting its recompilation limit. The numbers
    computed are the same either way.
    """

    def __init__(self, model: nn.Module, compiled: nn.Module | None, eager: nn.Module | None = None) -> None:
        self.model = model
        self.eager = eager if eager is not None else model
        self.compiled = compiled if compiled is not None else self.eager
        self.ready = self.compiled is self.eager or _quantizers_ready(model)

    def __call__(self, x: Tensor) -> Tensor:
        logits = (self.compiled if self.ready else self.eager)(x)
        self.ready = self.ready or _quantizers_ready(self.model)
        return logits


def _quantizers_ready(model: nn.Module) -> bool:
    """Whether every quantizer that is on (bits not None) has initialised its parameters from data."""
    return all(q._ready for _, q in quantizers(model) if q.bits is not None)


def _loss(logits: Tensor, y: Tensor, x: Tensor, teacher: nn.Module | None, config: TrainConfig) -> Tensor:
    """Cross-entropy with the labels, plus ``kd_weight`` x :func:`kd_loss` to the teacher's logits on ``x``."""
    loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
    if teacher is not None and config.kd_weight > 0:
        with torch.no_grad():
            teacher_logits = teacher(x)
        loss = loss + config.kd_weight * kd_loss(logits, teacher_logits)
    return loss


def _loss_value(loss: Tensor, epoch: int, step: int, last_good: str, config: TrainConfig) -> float:
    """The loss as a float; :class:`DivergenceError` when it is NaN or infinite."""
    value = loss.item()
    if not math.isfinite(value):
        raise DivergenceError(
            f"training diverged: the loss is {value} at epoch {epoch}, step {step} (both 0-based). "
            f"{last_good} Try a lower lr (base lr {config.lr}), grad_clip, or check the inputs for NaN."
        )
    return value


def _bar(iterable: Iterable, enabled: bool, desc: str, total: int | None = None) -> Iterable:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm  # imported lazily: tqdm.auto probes for Jupyter

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def _safe_len(loader: object) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _place(model: nn.Module, teacher: nn.Module | None, ema: ModelEMA | None, config: TrainConfig,
           device: torch.device) -> tuple[torch.optim.SGD, ModelEMA | None]:
    """Move the model, teacher and EMA to ``device``; the optimizer, and a new EMA unless one is given."""
    model.to(device)
    if teacher is not None:
        teacher.to(device)
    optimizer = make_optimizer(model, config)
    if ema is None and config.ema_decay is not None:
        ema = ModelEMA(model, config.ema_decay)
    elif ema is not None:
        ema.module.to(device)
    return optimizer, ema


def _set_lr(optimizer: torch.optim.Optimizer, multiplier: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * multiplier


def _start_epoch(epoch: int, optimizer: torch.optim.Optimizer, loader: Loader, teacher: nn.Module | None,
                 config: TrainConfig) -> float:
    """Set the epoch's learning rate, the loader's epoch and the teacher's mode; return the lr multiplier."""
    multiplier = lr_multiplier(epoch, config.warmup_epochs, config.epochs)
    _set_lr(optimizer, multiplier)
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    if teacher is not None:
        teacher.train(config.teacher_train_mode)
    return multiplier


def _validate(model: nn.Module, ema: ModelEMA | None, loader: Iterable[tuple[Tensor, Tensor]] | None,
              device: torch.device, progress: bool, reduce: Callable[[Tensor], Tensor] | None = None
              ) -> dict[str, float | None]:
    """The history's validation fields: the model's and the EMA's accuracy (None without a loader or an EMA)."""
    val: dict[str, float | None] = {}
    ema_val: dict[str, float | None] = {}
    if loader is not None:
        val = evaluate(model, loader, device, progress=progress, desc="test", reduce=reduce)
        if ema is not None:
            ema_val = evaluate(ema.module, loader, device, progress=progress, desc="test (EMA)", reduce=reduce)
    return {"val_top1": val.get("top1"), "val_top5": val.get("top5"), "val_loss": val.get("loss"),
            "ema_val_top1": ema_val.get("top1"), "ema_val_top5": ema_val.get("top5")}


def _rng_devices(device: torch.device) -> tuple[list[int], str]:
    """What ``torch.random.fork_rng`` must save for ``device`` besides the CPU generator."""
    if device.type == "cpu":
        return [], "cuda"
    index = device.index if device.index is not None else getattr(torch, device.type).current_device()
    return [index], device.type


@contextlib.contextmanager
def _seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators with ``seed`` inside the block; the caller's RNG state is back after it."""
    devices, device_type = _rng_devices(device)
    with torch.random.fork_rng(devices=devices, device_type=device_type):
        torch.manual_seed(seed)
        yield


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


def _resume(out: Path | None, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
            device: torch.device, teacher: nn.Module | None, ema: ModelEMA | None,
            world: World | None = None, resume: bool = True) -> tuple[History, int]:
    """Continue from ``out``'s checkpoint when there is one (and ``resume``): the weights, EMA, optimizer, a
    train-mode teacher's buffers and the RNG (with ``world``, each process's own). Returns the history so far and
    the first epoch to train."""
    if not resume or out is None or not ckpt.has_checkpoint(out):
        return History(), 0
    state = ckpt.load_checkpoint(out)
    _check_resume_config(state.config, config, state.path)
    state.restore(model, ema_model=ema.module if ema is not None else None, optimizer=optimizer)
    if teacher is not None and config.teacher_train_mode:
        state.restore_teacher(teacher)
    if ema is not None and EMA_UPDATES_KEY in state.extra:
        ema.updates = int(state.extra[EMA_UPDATES_KEY])
    _set_rng_state(state.rng if world is None else world.local_rng(state.rng, state.extra), device)
    log.info("resumed from %s after epoch %d", state.path, state.epoch)
    return History(state.history), state.epoch + 1


def _check_resume_config(saved: Mapping[str, Any], config: TrainConfig, source: Path | None) -> None:
    now, default = config.to_dict(), TrainConfig().to_dict()  # a field newer than the checkpoint: its default
    differ = [f"{k}: checkpoint {saved.get(k, default[k])!r}, now {now[k]!r}" for k in now
              if k not in RESUME_FREE_FIELDS and saved.get(k, default[k]) != now[k]]
    if differ:
        raise ResumeError(f"cannot resume from {source}: the training config differs ({'; '.join(differ)}). "
                         "Use the same config, another out_dir, or resume=False to start over")
    if saved.get("device") != now["device"]:
        log.warning("resuming a run trained on %s on %s: results will not be bit-identical", saved.get("device"),
                    now["device"])


def _memory_format(config: TrainConfig) -> torch.memory_format:
    return torch.channels_last if config.channels_last else torch.contiguous_format


def _set_memory_format(modules: Iterable[nn.Module | None], memory_format: torch.memory_format) -> None:
    """Lay out the 4-d weights (convolutions) of ``modules`` in ``memory_format``, in place."""
    for m in modules:
        if m is not None:
            m.to(memory_format=memory_format)


@contextlib.contextmanager
def _memory_layout(model: nn.Module, teacher: nn.Module | None, ema: ModelEMA | None,
                   config: TrainConfig) -> Iterator[None]:
    """Train in ``config``'s memory layout; afterwards, also after an error, give the model and the teacher back in
    the train/eval modes they had and (for ``channels_last``) the default layout."""
    modules = [model, teacher, ema.module if ema is not None else None]
    was_training = model.training
    teacher_was_training = teacher.training if teacher is not None else False
    try:
        _set_memory_format(modules, _memory_format(config))  # in place: the optimizer keeps the same Parameters
        yield
    finally:
        model.train(was_training)
        if teacher is not None:
            teacher.train(teacher_was_training)
        if config.channels_last:
            _set_memory_format(modules, torch.contiguous_format)


def _last_good(out: Path | None, epoch: int) -> str:
    """What a divergence message says of the checkpoints on disk (``epoch`` < 0: none written yet)."""
    return "No checkpoint was written yet." if epoch < 0 else f"The checkpoint of epoch {epoch} in {out} is untouched."


def _save(out: Path, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig,
          device: torch.device, teacher: nn.Module | None, ema: ModelEMA | None, history: History,
          meta: Mapping[str, Any] | None, *, world: World | None = None, keep_previous: bool = False) -> None:
    """The epoch's checkpoint; its ``extra`` holds a train-mode teacher's buffers and the EMA's update count.

    With ``world`` every process takes part (its generator state goes into ``extra``), the main process writes,
    and all of them wait until the checkpoint is on disk.
    """
    extra = ckpt.teacher_buffers(teacher) if teacher is not None and config.teacher_train_mode else {}
    if ema is not None:
        extra[EMA_UPDATES_KEY] = torch.tensor(ema.updates, dtype=torch.int64)
    rng = _rng_state(device)
    if world is not None:
        extra |= world.gather_rng(rng)
    if world is None or world.is_main:
        ckpt.save_checkpoint(out, epoch=epoch, model=model, optimizer=optimizer,
                             ema_model=ema.module if ema is not None else None, history=history,
                             config=config.to_dict(), meta=meta, rng=rng, extra=extra, keep_previous=keep_previous)
    if world is not None:
        world.barrier()
