"""Running a recipe: train phase after phase, resumably (chapter 7).

:mod:`profit_edu.builders` makes what a :class:`~profit_edu.recipe.Recipe` names (model, init, teacher,
loaders). :func:`run_recipe` quantizes the
float model with every quantizer off (:func:`prepare_model`) and trains the phases of
:func:`~profit_edu.schedule.expand_phases` in order, each with :func:`~profit_edu.train.fit` (its config:
:func:`phase_config`), switching bits on (:func:`set_phase_bits`) and freezing layers
(:func:`~profit_edu.freezing.frozen_for_phase`) as the phase says.

*Resuming.* Every phase trains in its own subdirectory of the run (``03_a8_ft/``), with fit's per-epoch
checkpoints; a finished phase writes ``done.json`` and is skipped when the run is started again; the next phase
starts from the last finished phase's checkpoint.

*The run directory* (``out_dir``): ``recipe.json`` and ``plan.txt``; the final model's checkpoint (a copy of
the last phase's, so the run directory is what ``profit-edu evaluate`` and ``pack`` take); one subdirectory per
phase (``00_fp/``, ``01_a8_bn/``, ...) holding fit's checkpoints and, once finished, ``done.json`` (history and
frozen layers); the sampling phase holds one subdirectory per epoch, each with the tracker's state after it
(``aiwq_state.json``); ``aiwq_ranking.json`` holds the ranking (layer, M, kind), most unstable first. With
``freeze: random`` ``random_order.json`` holds the drawn order instead; with ``random`` and ``none`` nothing
measures AIWQ.

What both modes share with the official code: a fresh SGD optimizer for every phase (momentum restarts; the
parameter groups change with the frozen set anyway), one weight EMA kept across all phases, and activation
quantizers that initialise themselves from their first batch.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from .aiwq import AIWQTracker, layer_kinds, tracked_layers
from .atomic import atomic_write_bytes
from .checkpoint import JSON_NAME, Checkpoint, load_checkpoint
from .distributed import gather_first_use
from .ema import ModelEMA
from .freezing import frozen_for_phase, make_tracker, random_freeze_order
from .layers import QAct, QConv2d, QLinear, calibrate, quantize_model, set_bits
from .optim import TrainConfig
from .recipe import OptimSpec, Recipe, RecipeError
from .schedule import Phase, check_recipe_for_model, expand_phases, format_plan
from .train import fit

if TYPE_CHECKING:  # annotations only
    from .distributed import World

__all__ = ["PhaseResult", "RecipeResult", "phase_config", "prepare_model", "run_recipe", "set_phase_bits"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# The model's bits, phase by phase
# --------------------------------------------------------------------------------------------
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


def phase_config(recipe: Recipe, phase: Phase, *, frozen: tuple[str, ...] = (), epochs: int | None = None,
                 seed: int = 0, device: str = "cpu", progress: bool = False, channels_last: bool = False
                 ) -> TrainConfig:
    """The :class:`~profit_edu.train.TrainConfig` of a phase (``epochs`` overrides its length: one epoch at a
    time for the constant-lr sampling phase)."""
    o = recipe.train
    n = phase.epochs if epochs is None else epochs
    lr = o.fp_lr if phase.kind == "fp" and o.fp_lr is not None else o.lr
    return TrainConfig(
        epochs=n, lr=lr, weight_decay=o.weight_decay, momentum=o.momentum, nesterov=o.nesterov,
        warmup_epochs=min(phase.warmup_epochs, n) if phase.lr_schedule == "cosine" else 0,
        quant_lr_mult=o.quant_lr_mult, ema_decay=o.ema_decay, kd_weight=o.kd_weight,
        teacher_train_mode=recipe.has("teacher_train_mode"), frozen=frozen, seed=seed, device=device,
        progress=progress, grad_clip=o.grad_clip, label_smoothing=o.label_smoothing, channels_last=channels_last,
        lr_per_step=o.lr_per_step and phase.lr_schedule == "cosine",
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


def run_recipe(recipe: Recipe, model: nn.Module, train_loader: Any, val_loader: Any, *, out_dir: str | os.PathLike,
               teacher: nn.Module | None = None, device: str = "cpu", progress: bool = False, resume: bool = True,
               callback: Callable[[Phase, int, dict[str, Any]], None] | None = None, world: World | None = None,
               channels_last: bool = False, keep_previous: bool = False) -> RecipeResult:
    """Train a float model through every phase of a PROFIT recipe, resumably (``out_dir`` as the module says).

    Args:
        recipe: the recipe.
        model: the *float* model to train (e.g. :func:`~profit_edu.builders.build_model`); it is quantized here
            with every quantizer off, then the phases switch bits on. Trained in place.
        train_loader, val_loader: the data (see :func:`~profit_edu.builders.build_loaders`); ``val_loader`` may
            be None.
        out_dir: the run directory.
        teacher: the distillation teacher for ``teacher: <torchvision name>`` (see
            :func:`~profit_edu.builders.build_teacher`); must be None for ``none`` and ``self`` (the float student
            after the FP phase).
        device: where to train.
        progress: progress bars.
        resume: skip finished phases and resume the current one from ``out_dir``; False starts over.
        callback: ``callback(phase, epoch, record)`` after every epoch (epoch counted within the phase).
        world: train on several processes (:mod:`profit_edu.distributed`; each calls run_recipe with its shard of
            the data): calibration and AIWQ see the global batch, only the main process writes files.
        channels_last: train in the NHWC memory layout (see :class:`~profit_edu.train.TrainConfig`).
        keep_previous: keep each phase's previous epoch checkpoint too (a fallback for a damaged latest one).

    Returns:
        A :class:`RecipeResult`.

    Raises:
        RecipeError: the recipe does not fit the model (unknown frozen layer names), or ``out_dir`` holds a run
            of another recipe.
        ValueError: a teacher is missing or not expected.
    """
    _check_inputs(recipe, model, teacher)
    out = Path(out_dir)
    units = _units(expand_phases(recipe), out)
    main = world is None or world.is_main
    _save_recipe(recipe, out, resume, write=main)
    ema = _start_run(recipe, model, out, write=main)
    if world is not None:  # a quantizer's first batch is the global batch; all have read what out held before
        gather_first_use(model, world)
        world.barrier()
    first_todo = _finished_units(units, resume)
    teachers = _Teachers(recipe, model, teacher, units, device)
    run = _Run(recipe, model, train_loader, val_loader, out, units, ema, teachers, first_todo=first_todo,
               device=device, progress=progress, resume=resume, callback=callback, world=world,
               channels_last=channels_last, keep_previous=keep_previous)
    if first_todo > 0:  # resuming: continue from the last finished unit's weights (and EMA)
        run.restored = _continue_after(run, units[first_todo - 1])
    results = _train_units(run)
    ranking_file = out / "aiwq_ranking.json"
    if (run.ranking is None and ranking_file.is_file() and recipe.schedule.profit_bits
            and recipe.schedule.freeze == "aiwq"):
        run.ranking = _read_ranking(ranking_file)
    if main:
        _publish_result(units[-1].directory, out)
    if world is not None:
        world.barrier()
    return RecipeResult([results[i] for i in sorted(results)], run.ranking, model, ema)


# --------------------------------------------------------------------------------------------
# run_recipe's helpers: the units, the run's state, one unit's training
# --------------------------------------------------------------------------------------------
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
    epoch_offset: int  # its first epoch, counted over the whole run
    first_epoch: int  # its first epoch, counted within its phase
    last_of_phase: bool


def _units(phases: list[Phase], out: Path) -> list[_Unit]:
    units, offset = [], 0
    for i, p in enumerate(phases):
        phase_dir = out / f"{i:02d}_{p.name}"
        if p.lr_schedule == "constant":
            for e in range(p.epochs):
                units.append(_Unit(len(units), i, p, phase_dir / f"epoch_{e}", 1, offset + e, e, e == p.epochs - 1))
        else:
            units.append(_Unit(len(units), i, p, phase_dir, p.epochs, offset, 0, True))
        offset += p.epochs
    return units


def _train_units(run: _Run) -> dict[int, PhaseResult]:
    """Train the units still to train, in order; every phase's result (from done.json for the finished ones)."""
    results: dict[int, PhaseResult] = {}
    for u in run.units:
        record = results.setdefault(u.phase_index, PhaseResult(u.phase, [], (), skipped=True))
        if u.index < run.first_todo:  # finished in an earlier run
            info = json.loads((u.directory / "done.json").read_text())
            record.history += info["history"]
            record.frozen = tuple(info["frozen"])
            continue
        record.skipped = False
        history, frozen = _train_unit(run, u)
        record.history += list(history)
        record.frozen = frozen
    return results


def _finished_units(units: list[_Unit], resume: bool) -> int:
    """How many units finished in an earlier run. They form a prefix: a unit's weights depend on every unit before
    it, so after the first unfinished one everything is trained again, from scratch (resume=False: their
    directories hold stale states)."""
    first_todo = 0
    while resume and first_todo < len(units) and (units[first_todo].directory / "done.json").is_file():
        first_todo += 1
    return first_todo


class _Teachers:
    """The teacher of each phase: the given module (``teacher: <torchvision name>``) for every phase, or with
    ``teacher: self`` a frozen float copy of the student for the quantized phases: as the FP phase left it (made
    when first needed), or as it starts when the recipe has no FP phase."""

    def __init__(self, recipe: Recipe, model: nn.Module, given: nn.Module | None, units: list[_Unit],
                 device: str) -> None:
        self.recipe, self.model, self.device = recipe, model, device
        self.fp_dir = next((u.directory for u in units if u.phase.kind == "fp"), None)
        self.current = given
        if recipe.teacher == "self" and self.fp_dir is None:  # no float phase: the initial float student teaches
            self.current = _self_teacher(model, None).to(device)

    def teaches(self, phase: Phase) -> bool:
        """Whether ``phase`` trains with a teacher (so its checkpoints hold a train-mode teacher's buffers)."""
        return self.recipe.teacher != "none" and not (self.recipe.teacher == "self" and phase.kind == "fp")

    def for_phase(self, phase: Phase) -> nn.Module | None:
        if self.recipe.teacher != "self" or phase.kind == "fp":
            return self.current if self.recipe.teacher != "self" else None
        if self.current is None:  # the float student as the FP phase left it
            self.current = _self_teacher(self.model, load_checkpoint(self.fp_dir)).to(self.device)
            if self.recipe.has("relu_in_fp"):
                _use_plain_relu(self.current, True)  # the float model as it was trained
        return self.current


@dataclass
class _Run:
    """What run_recipe's units share: its arguments, the weight EMA and the teachers, and what a unit hands on
    (the checkpoint a resumed run continues from, the AIWQ tracker of a sampling phase, the ranking)."""

    recipe: Recipe
    model: nn.Module
    train_loader: Any
    val_loader: Any
    out: Path
    units: list[_Unit]
    ema: ModelEMA | None
    teachers: _Teachers
    first_todo: int  # the first unit to train; those before it finished in an earlier run
    device: str
    progress: bool
    resume: bool
    callback: Callable[[Phase, int, dict[str, Any]], None] | None
    world: World | None = None
    channels_last: bool = False
    keep_previous: bool = False
    restored: Checkpoint | None = None
    tracker: AIWQTracker | None = None
    ranking: list[tuple[str, float]] | None = None


def _check_inputs(recipe: Recipe, model: nn.Module, teacher: nn.Module | None) -> None:
    if any(isinstance(m, (QConv2d, QLinear, QAct)) for m in model.modules()):
        raise ValueError("run_recipe needs the float model: it quantizes it itself (quantizers off, then phase by "
                         "phase)")
    if recipe.teacher in ("none", "self") and teacher is not None:
        raise ValueError(f"the recipe's teacher is {recipe.teacher!r}, but a teacher module was given")
    if recipe.teacher not in ("none", "self") and teacher is None:
        raise ValueError(f"the recipe distils from {recipe.teacher}: pass teacher=build_teacher(recipe)")
    check_recipe_for_model(recipe, model)


#: Recipe fields that may change between a run and its resumption: where the data is and how it is read.
RESUME_FREE_DATA = ("root", "workers")


def _core(d: dict[str, Any]) -> dict[str, Any]:
    """What must match to resume: all but the data's folder and workers; train fields newer than the run default."""
    train = {**dataclasses.asdict(OptimSpec()), **d.get("train", {})}
    return {**d, "train": train, "data": {k: v for k, v in d.get("data", {}).items() if k not in RESUME_FREE_DATA}}


def _save_recipe(recipe: Recipe, out: Path, resume: bool, *, write: bool = True) -> None:
    """Write ``recipe.json`` (when ``write``), refusing to resume a run directory that holds another recipe's run
    (the data's folder and worker count may change: a copy of ImageNet on another disk trains the same)."""
    saved_recipe = out / "recipe.json"
    if resume and saved_recipe.is_file():
        before = json.loads(saved_recipe.read_text())
        if _core(before) != _core(json.loads(json.dumps(recipe.to_dict(), default=str))):
            raise RecipeError(f"{out} holds a run of another recipe ({before.get('name')}); use another out_dir, or "
                              "resume=False to start over")
    if write:
        _write_json(saved_recipe, recipe.to_dict())


def _start_run(recipe: Recipe, model: nn.Module, out: Path, *, write: bool = True) -> ModelEMA | None:
    """Quantize the model with every quantizer off; write the plan (and the drawn order of ``freeze: random``)
    when ``write``; return the weight EMA kept across all phases (None without ``ema_decay``)."""
    prepare_model(recipe, model)
    num_layers = len(tracked_layers(model, include_linear=recipe.aiwq.include_linear))
    if write and recipe.schedule.freeze == "random":
        _write_json(out / "random_order.json", {"seed": recipe.seed, "order": random_freeze_order(
            model, seed=recipe.seed, include_linear=recipe.aiwq.include_linear)})
    if write:
        (out / "plan.txt").write_text(format_plan(recipe, num_layers=num_layers) + "\n")
    fixed = recipe.mode == "fixed"
    return ModelEMA(model, recipe.train.ema_decay, warmup=fixed) if recipe.train.ema_decay is not None else None


def _set_bits(run: _Run, phase: Phase) -> None:
    set_phase_bits(run.model, run.recipe, phase)
    if run.ema is not None:
        set_phase_bits(run.ema.module, run.recipe, phase)


def _continue_after(run: _Run, last: _Unit) -> Checkpoint:
    """Resuming: load the last finished unit's weights (and EMA) at its bit widths; returns its checkpoint."""
    _set_bits(run, last.phase)
    restored = load_checkpoint(last.directory)
    restored.restore(run.model, ema_model=run.ema.module if run.ema is not None else None)
    log.info("continuing after %s (%s)", last.phase.name, last.directory)
    return restored


def _train_unit(run: _Run, u: _Unit) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """One unit: its bit widths (calibrated in fixed mode when they change), the teacher, the AIWQ tracker and
    ranking, the frozen layers, fit; then the tracker's state, the ranking after sampling, and ``done.json``."""
    recipe, p = run.recipe, u.phase
    _set_bits(run, p)
    before = run.units[u.index - 1].phase if u.index > 0 else None
    bits_before = (before.act_bits, before.weight_bits) if before is not None else (None, None)
    if recipe.mode == "fixed" and (p.act_bits, p.weight_bits) != bits_before:
        _calibrate_for_phase(run.model, run.ema, run.train_loader, recipe, epoch=u.epoch_offset, world=run.world,
                             device=run.device)
    if u.index == run.first_todo and run.restored is not None and recipe.has("teacher_train_mode"):
        _restore_teacher(run, u)
    measures = p.kind == "sampling" and recipe.schedule.freeze == "aiwq"  # the other policies need no ranking
    if measures and run.tracker is None:
        run.tracker = _start_tracker(run, u)
    if run.ranking is None and p.freeze_fraction and p.freeze_fraction > 0 and recipe.schedule.freeze == "aiwq":
        sampling_dir = next(v.directory.parent for v in reversed(run.units[: u.index]) if v.phase.kind == "sampling")
        run.ranking = _read_ranking(sampling_dir / "aiwq_ranking.json")  # its sampling phase finished earlier
    frozen = frozen_for_phase(recipe, p, run.model, run.ranking)
    history = _fit_unit(run, u, frozen)
    main = run.world is None or run.world.is_main
    if run.tracker is not None:
        state = run.tracker.state_dict()  # on every process: it may finish the step's measurement, a collective
        if main:
            _write_json(u.directory / "aiwq_state.json", state)
    if measures and u.last_of_phase:
        _finish_sampling(run, u, write=main)
    if main:
        _write_json(u.directory / "done.json", {"phase": p.name, "history": list(history), "frozen": list(frozen)})
    if run.world is not None:
        run.world.barrier()
    return history, frozen


def _restore_teacher(run: _Run, u: _Unit) -> None:
    """Resuming with a train-mode teacher: put back the BN statistics it had drifted to (strictly). A teacher made
    just now from the float phase (``teacher: self`` right after the FP phase) has nothing to put back."""
    teacher = run.teachers.for_phase(u.phase)
    if teacher is not None and run.teachers.teaches(run.units[u.index - 1].phase):
        run.restored.restore_teacher(teacher)


def _start_tracker(run: _Run, u: _Unit) -> AIWQTracker:
    """The sampling phase's AIWQ tracker; resuming inside the phase, with the EMA so far."""
    tracker = make_tracker(run.recipe, run.model, distributed="batch" if run.world is not None else "average")
    if run.units[u.index - 1].phase is u.phase:
        tracker.load_state_dict(json.loads((run.units[u.index - 1].directory / "aiwq_state.json").read_text()))
    return tracker


def _fit_unit(run: _Run, u: _Unit, frozen: tuple[str, ...]) -> list[dict[str, Any]]:
    """:func:`~profit_edu.train.fit` for one unit: the phase's config, teacher, checkpoints and callback."""
    config = phase_config(run.recipe, u.phase, frozen=frozen, epochs=u.epochs, seed=run.recipe.seed + u.index,
                          device=run.device, progress=run.progress, channels_last=run.channels_last)
    if run.tracker is not None:
        run.tracker.reset_epoch()

    def report(epoch: int, record: dict[str, Any]) -> None:
        if run.callback is not None:
            run.callback(u.phase, u.first_epoch + epoch, record)

    return fit(run.model, _OffsetLoader(run.train_loader, u.epoch_offset), run.val_loader, config,
               teacher=run.teachers.for_phase(u.phase), out_dir=u.directory,
               resume=run.resume and u.index == run.first_todo and u.phase.kind != "sampling",
               callback=report, ema=run.ema, meta=_meta(run.recipe, u.phase), world=run.world,
               keep_previous=run.keep_previous)


def _meta(recipe: Recipe, phase: Phase) -> dict[str, Any]:
    """What the phase's checkpoints record: the recipe's name, the arguments that rebuild the model, the phase."""
    m = recipe.model
    return {"recipe": recipe.name, "model_args": {
        "model": m.arch, "num_classes": m.num_classes, "width_mult": m.width_mult, "cifar_stem": m.cifar_stem,
        "stem_stride": m.stem_stride, "negative_padding": m.negative_padding, "method": recipe.method,
        "weight_bits": phase.weight_bits, "act_bits": phase.act_bits}, "phase": phase.name}


def _finish_sampling(run: _Run, u: _Unit, *, write: bool = True) -> None:
    """The end of the sampling phase: rank the layers by their AIWQ EMA, save the ranking (when ``write``), remove
    the tracker."""
    tracker, p = run.tracker, u.phase
    run.ranking = tracker.ranking()
    kinds = layer_kinds(run.model, include_linear=run.recipe.aiwq.include_linear)
    rows = [{"layer": n, "aiwq": v, "kind": kinds[n]} for n, v in run.ranking]
    doc = {"phase": p.name, "weight_bits": p.weight_bits, "layers": len(rows), "ranking": rows,
           "counts": tracker.counts()}
    if write:
        _write_json(u.directory.parent / "aiwq_ranking.json", doc)
        _write_json(run.out / "aiwq_ranking.json", doc)
    tracker.remove()
    run.tracker = None


def _write_json(path: Path, obj: Any) -> None:
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


def _calibrate_for_phase(model: nn.Module, ema: Any | None, loader: Any, recipe: Recipe, *, epoch: int,
                         world: World | None = None, device: str = "cpu") -> None:
    """Fixed mode, when a phase changes the bit widths: choose clips from ``calibration_images`` training images
    (new quantizers are initialised; lowered ones keep their learned a, c unless the new clip has a lower
    quantization error) and restart the weight EMA from the model (an average across bit widths mixes grids).

    With ``world`` every process calibrates on the whole global batches (:meth:`World.gather_batch`), and the
    main process's result is then copied to all, so they start the phase identical. Batches go to ``device``
    first: a plain ``DataLoader`` yields CPU tensors, and NCCL gathers only CUDA ones."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)  # the phase's first batches, whatever ran before (exact resume)
    batches, seen = [], 0
    for x, _ in loader:
        x = x.to(device, non_blocking=True)
        x = world.gather_batch(x) if world is not None else x
        batches.append(x)
        seen += len(x)
        if seen >= recipe.data.calibration_images:
            break
    calibrate(model, batches, bn="batch", keep_learned=True, seed=recipe.seed)
    if world is not None:
        world.broadcast_module(model)
    if ema is not None:
        ema.reset(model)


def _read_ranking(path: Path) -> list[tuple[str, float]]:
    return [(r["layer"], r["aiwq"]) for r in json.loads(path.read_text())["ranking"]]


def _publish_result(last: Path, out: Path) -> None:
    """Copy the last phase's checkpoint to ``out`` itself, so ``evaluate``, ``pack`` and ``release`` take the run
    directory as it is (tensor file first, then the JSON that names it: the commit point)."""
    doc = (last / JSON_NAME).read_bytes()
    tensor_file = json.loads(doc)["tensors"]["file"]
    atomic_write_bytes(out / tensor_file, (last / tensor_file).read_bytes())
    atomic_write_bytes(out / JSON_NAME, doc)
    for stale in out.glob("epoch-*.safetensors"):
        if stale.name != tensor_file:
            stale.unlink(missing_ok=True)
