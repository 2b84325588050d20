"""``profit-edu reproduce``: a PROFIT recipe on ImageNet, on one GPU or many, launched by torchrun (chapter 9).

One machine with 8 GPUs::

    torchrun --standalone --nproc-per-node 8 -m profit_edu.reproduce \\
        --recipe mobilenet_v2_w4a4_imagenet --data /data/imagenet --out runs/v2_w4a4

Several machines: the same command on each, with ``--nnodes N --node-rank I --rdzv-backend c10d
--rdzv-endpoint HOST:29400`` instead of ``--standalone`` (the run directory on a disk all of them see). Without
torchrun (``python -m profit_edu.reproduce ...`` or ``profit-edu reproduce ...``) it is one process.

What it does, in order: load the recipe and apply the command line (the data folder, a global batch with the
recipe's learning-rate scaling, AMP, channels-last); check everything that can be checked before training (the
ImageNet folders and their class count, a world size that divides the batch); repair a run directory whose latest
checkpoint is damaged (:func:`recover_run`); build the student (torchvision's weights, or ``--init``) and the
teacher (torchvision's weights, downloaded once by the main process, or ``--teacher-weights``); then train every
phase with :func:`~profit_edu.pipeline.run_recipe` and the distributed pieces of :mod:`profit_edu.distributed`.
It writes one JSON line per epoch to ``log.jsonl`` in the run directory (and TensorBoard scalars when TensorBoard
is installed) and shows a progress bar on the main process.

*Resuming.* Rerun the same command. Every epoch ends in a checkpoint written atomically by the main process, with
the previous epoch's kept beside it; a run whose processes died (one killed, a node lost, the job's time up)
continues in the same phase after its last finished epoch and ends where an uninterrupted run would. torchrun's
``--max-restarts K`` does that by itself after a crash.

*Bad input* stops the run before training, with one line that says what to change: a missing or unsorted folder,
a class count that does not match the model, a global batch the processes cannot split evenly. An image that
cannot be read stops it too (naming the file), unless ``--bad-images skip``: then the next image takes its place
and the log counts it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .atomic import atomic_write_bytes
from .builders import build_model, load_init
from .checkpoint import JSON_NAME, PREVIOUS_JSON_NAME, CheckpointError, load_checkpoint, load_state_strict
from .data.imagenet import SeededImages, check_imagenet_root, imagenet_folder, imagenet_transforms
from .distributed import ShardSampler, World, convert_batchnorm, train_sampler
from .models import count_macs
from .pipeline import RecipeResult, run_recipe
from .pretrained import fetch_weights
from .recipe import ModelSpec, Recipe, RecipeError, ReproduceSpec, load_recipe
from .schedule import Phase, expand_phases, format_plan

__all__ = ["CRASH_ENV", "IMAGENET_TRAIN_IMAGES", "ShardLoader", "compute_estimate", "load_teacher", "main",
           "prepare_recipe", "recover_run", "reproduce"]

log = logging.getLogger(__name__)

#: Images in ImageNet-1k's (ILSVRC 2012) training split: the epoch size of the estimates.
IMAGENET_TRAIN_IMAGES = 1_281_167
#: [assumption, not a measurement] the training throughput per GPU behind :func:`compute_estimate`'s GPU-hours, in
#: dense TFLOP/s actually achieved. Depthwise convolutions and fake quantization are memory-bound, so MobileNet
#: training runs far below an A100's or H100's datasheet peak; no GPU run of this project has measured it yet
#: (the run's own images/s is in its log.jsonl).
ASSUMED_TFLOPS_PER_GPU = 20.0
#: Testing aid: ``PROFIT_EDU_CRASH=RANK:EPOCH`` makes process RANK kill itself (SIGKILL) after the run's EPOCH-th
#: epoch (0-based, counted over all phases), in the first attempt of a torchrun job only.
CRASH_ENV = "PROFIT_EDU_CRASH"


# --------------------------------------------------------------------------------------------
# The recipe and the inputs, checked before anything trains
# --------------------------------------------------------------------------------------------
def prepare_recipe(recipe: Recipe, *, data: str | os.PathLike[str], world_size: int = 1,
                   batch_size: int | None = None, workers: int | None = None) -> Recipe:
    """The recipe as this run trains it: its ImageNet folder ``data``, the global batch (the recipe's, or
    ``batch_size`` with the learning rates scaled as the recipe's ``reproduce.lr_scaling`` says), the loader workers.

    Raises:
        RecipeError: the recipe does not train ImageNet folders, limits the image counts, or its global batch does
            not split evenly over ``world_size`` processes.
    """
    if recipe.data.dataset != "imagenet":
        raise RecipeError(f"{recipe.where('data', 'dataset')}: reproduce trains ImageNet-layout folders, and this "
                          f"recipe trains {recipe.data.dataset!r}; use `profit-edu train --recipe` for it")
    if recipe.data.train_images or recipe.data.val_images:
        raise RecipeError(f"{recipe.where('data')}: reproduce trains on the whole folders (train_images and "
                          "val_images must be null); make a smaller folder to try a recipe on less data")
    spec = recipe.reproduce or ReproduceSpec()
    batch = recipe.data.batch_size if batch_size is None else batch_size
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise RecipeError(f"the global batch must be an int >= 1, got {batch!r}")
    if batch % world_size:
        fits = [w for w in range(1, min(batch, 64) + 1) if batch % w == 0]
        raise RecipeError(f"the global batch {batch} does not split evenly over {world_size} processes: use "
                          f"--batch-size with a multiple of {world_size}, or one of {fits[-8:]} processes")
    scale = batch / recipe.data.batch_size if spec.lr_scaling == "linear" else 1.0
    o = recipe.train
    train = dataclasses.replace(o, lr=o.lr * scale, fp_lr=None if o.fp_lr is None else o.fp_lr * scale)
    data_spec = dataclasses.replace(recipe.data, root=str(data), batch_size=batch,
                                    workers=recipe.data.workers if workers is None else workers)
    return dataclasses.replace(recipe, data=data_spec, train=train)


class ShardLoader:
    """A DataLoader over one process's shard: ``set_epoch`` (the sampler's epoch, which also seeds the
    augmentation of :class:`~profit_edu.data.imagenet.SeededImages`), a length, ``(x, y)`` batches (images in
    ``dtype``), and the count of images replaced because they could not be read (``replaced``)."""

    def __init__(self, dataset: SeededImages, sampler: Any, batch_size: int, *, workers: int, pin_memory: bool,
                 train: bool, dtype: torch.dtype = torch.float32) -> None:
        self.sampler, self.replaced, self.dtype = sampler, 0, dtype
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size, sampler=_EpochKeys(sampler) if train else sampler, num_workers=workers,
            pin_memory=pin_memory, drop_last=train, persistent_workers=workers > 0)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y, replaced in self.loader:
            self.replaced += int(replaced.sum())
            yield (x if x.dtype == self.dtype else x.to(self.dtype)), y


class _EpochKeys(torch.utils.data.Sampler):
    """The sampler's indices as (index, epoch) keys, so each image's augmentation is seeded by both."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = getattr(self.sampler, "epoch", 0)
        return ((int(i), epoch) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def make_loaders(recipe: Recipe, world: World, *, bad_images: str = "raise", dtype: torch.dtype = torch.float32
                 ) -> tuple[ShardLoader, ShardLoader]:
    """(train, validation) loaders of this process's shards: batches of global batch / W images."""
    d = recipe.data
    pin = world.device.startswith("cuda")
    train_set = SeededImages(imagenet_folder(d.root, "train", image_size=d.image_size),
                             imagenet_transforms(True, d.image_size), seed=recipe.seed, bad_images=bad_images)
    val_set = SeededImages(imagenet_folder(d.root, "val", image_size=d.image_size),
                           imagenet_transforms(False, d.image_size), seed=recipe.seed, bad_images=bad_images)
    local = d.batch_size // world.size
    if len(train_set) // world.size < local:
        raise RecipeError(f"{d.root}/train has {len(train_set)} images, fewer than one global batch of "
                          f"{d.batch_size}: nothing to train on")
    train = ShardLoader(train_set, train_sampler(len(train_set), world, seed=recipe.seed), local,
                        workers=d.workers, pin_memory=pin, train=True, dtype=dtype)
    val = ShardLoader(val_set, ShardSampler(len(val_set), world), max(local, 1), workers=d.workers,
                      pin_memory=pin, train=False, dtype=dtype)
    return train, val


# --------------------------------------------------------------------------------------------
# The student and the teacher
# --------------------------------------------------------------------------------------------
def load_teacher(recipe: Recipe, *, weights: str | os.PathLike[str] | None = None,
                 world: World | None = None) -> nn.Module | None:
    """The recipe's frozen torchvision teacher (e.g. ResNet-101), in eval mode; None for ``none`` and ``self``.

    Its weights come from ``weights`` (a state-dict file, e.g. torchvision's ``.pth``, loaded without unpickling
    code) or are downloaded once (:func:`~profit_edu.pretrained.fetch_weights`; the main process first, the others
    then read its copy). Loading is strict: a file of another architecture names the keys that differ.

    Raises:
        RecipeError: not a torchvision classifier, or one with another number of classes than the student.
        profit_edu.checkpoint.CheckpointError: the weights do not fit (missing, unexpected or mis-shaped keys).
    """
    if recipe.teacher in ("none", "self"):
        return None
    import torchvision

    world = world or World()
    try:
        model = torchvision.models.get_model(recipe.teacher, weights=None, num_classes=recipe.model.num_classes)
    except ValueError as err:
        raise RecipeError(f"{recipe.where('teacher')}: teacher {recipe.teacher!r} is not a torchvision classifier; "
                          "use none, self, or e.g. resnet101") from err
    if weights is None:
        default = torchvision.models.get_model_weights(recipe.teacher).DEFAULT
        if len(default.meta["categories"]) != recipe.model.num_classes:
            raise RecipeError(f"{recipe.where('teacher')}: torchvision's {recipe.teacher} predicts "
                              f"{len(default.meta['categories'])} classes, the student {recipe.model.num_classes}: "
                              "pass --teacher-weights trained for these classes")
        if world.is_main:
            fetch_weights(default.url)
        world.barrier()  # the others read the main process's copy
        weights = fetch_weights(default.url)
    state = torch.load(Path(weights), map_location="cpu", weights_only=True)
    load_state_strict(model, state, what=f"teacher weights {weights}")
    return model.eval().requires_grad_(False)


def _student(recipe: Recipe, init: str | None, world: World) -> nn.Module:
    """The float student: from ``init`` (a float run; MobileNet-v1 has no torchvision weights), else as the recipe
    says (torchvision's weights: the main process downloads them first; without weights, initialised randomly
    from the recipe's seed, the same on every process)."""
    if init is not None or recipe.init is not None:
        return load_init(recipe, init)

    def build() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            return build_model(recipe)

    model = build() if world.is_main else None
    world.barrier()  # the others load the main process's download from the cache
    return model if model is not None else build()


class _Autocast:
    """bfloat16 autocast around a module's forward, through hooks (its type and state dict stay as they are); the
    output comes back as float32. ``training_only``: only while the module is in train mode (evaluation stays
    float32, for the raw model and its EMA alike)."""

    def __init__(self, module: nn.Module, device_type: str, *, training_only: bool) -> None:
        self.device_type, self.training_only, self.stack = device_type, training_only, []
        module.register_forward_pre_hook(self.enter)
        module.register_forward_hook(self.exit)

    def enter(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        on = module.training or not self.training_only
        ctx = torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=on)
        ctx.__enter__()
        self.stack.append(ctx)

    def exit(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> Any:
        self.stack.pop().__exit__(None, None, None)
        return output.float() if isinstance(output, Tensor) else output


# --------------------------------------------------------------------------------------------
# Resuming: a damaged latest checkpoint falls back to the previous one
# --------------------------------------------------------------------------------------------
def _unit_directories(out: Path) -> list[Path]:
    """The run's training units in order (as :mod:`profit_edu.pipeline` lays them out): ``NN_phase/``, and the
    sampling phase's ``NN_phase/epoch_K/``."""
    units = []
    for phase in sorted(p for p in out.glob("[0-9][0-9]_*") if p.is_dir()):
        epochs = sorted((e for e in phase.glob("epoch_*") if e.is_dir()), key=lambda e: int(e.name.split("_")[1]))
        units += epochs or [phase]
    return units


def _repair(directory: Path) -> str | None:
    """If the latest checkpoint in ``directory`` is damaged: make the previous one the latest (or, without one,
    move the damaged one aside, so the unit starts over). Returns what it did, or None when nothing was wrong."""
    try:
        load_checkpoint(directory)
        return None
    except CheckpointError as err:
        damaged = err
    previous = directory / PREVIOUS_JSON_NAME
    (directory / "done.json").unlink(missing_ok=True)  # its last epoch is to be trained again
    try:
        epoch = load_checkpoint(previous).epoch
    except CheckpointError:
        os.replace(directory / JSON_NAME, directory / f"{JSON_NAME}.damaged")
        return (f"the latest checkpoint in {directory} is damaged ({damaged}) and there is no usable previous one: "
                f"moved it aside to {JSON_NAME}.damaged; this phase starts over from the one before")
    atomic_write_bytes(directory / JSON_NAME, previous.read_bytes())
    return (f"the latest checkpoint in {directory} is damaged ({damaged}); fell back to the previous one: training "
            f"goes on with epoch {epoch + 1} (0-based) of this phase")


def recover_run(out: str | os.PathLike[str]) -> list[str]:
    """Check the checkpoints a resumed run will load, and repair damaged ones; returns what it did, one line each.

    A resumed run loads the checkpoint of the last finished unit (a phase, or an epoch of the sampling phase) and
    that of the unit in progress. A damaged one (truncated, altered, unreadable) is replaced by the previous
    epoch's checkpoint, which every epoch keeps (``checkpoint.previous.json``); the unit is then no longer
    finished. Without a usable previous one the damaged checkpoint is moved aside and its unit starts over, from
    the unit before, which is checked in turn.
    """
    units, messages = _unit_directories(Path(out)), []
    while True:
        done = 0  # the finished units form a prefix, as run_recipe counts them
        while done < len(units) and (units[done] / "done.json").is_file():
            done += 1
        to_check = units[max(done - 1, 0): done + 1]
        repaired = [m for m in (_repair(u) for u in to_check if (u / JSON_NAME).is_file()) if m]
        messages += repaired
        if not repaired:
            return messages


# --------------------------------------------------------------------------------------------
# What it takes
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _student_macs(spec: ModelSpec, size: int) -> int:
    return count_macs(spec.build(), size)


@functools.lru_cache(maxsize=4)
def _torchvision_macs(name: str, num_classes: int, size: int) -> int:
    import torchvision

    return count_macs(torchvision.models.get_model(name, num_classes=num_classes), size)


def compute_estimate(recipe: Recipe, *, images_per_epoch: int = IMAGENET_TRAIN_IMAGES,
                     tflops_per_gpu: float = ASSUMED_TFLOPS_PER_GPU) -> dict[str, Any]:
    """The compute a recipe takes: epochs, images, multiply-accumulates (counted on the models), and GPU-hours.

    Math: FLOPs = 2 x images x (3 x student MACs + teacher MACs) over all epochs (a training step costs about
    three forwards: forward, backward for the inputs, backward for the weights; the teacher only runs forward).
    GPU-hours = FLOPs / (``tflops_per_gpu`` x 1e12) / 3600, at the *assumed* rate :data:`ASSUMED_TFLOPS_PER_GPU`.
    Evaluation, calibration, AIWQ and the data pipeline are left out.
    """
    phases = expand_phases(recipe)
    epochs = sum(p.epochs for p in phases)
    teacher_epochs = sum(p.epochs for p in phases if recipe.teacher != "none"
                         and not (recipe.teacher == "self" and p.kind == "fp"))
    size = recipe.data.image_size
    student_macs = _student_macs(recipe.model, size)
    teacher_macs = 0
    if recipe.teacher == "self":
        teacher_macs = student_macs
    elif recipe.teacher != "none":
        teacher_macs = _torchvision_macs(recipe.teacher, recipe.model.num_classes, size)
    flops = 2 * images_per_epoch * (3 * student_macs * epochs + teacher_macs * teacher_epochs)
    return {"recipe": recipe.name, "epochs": epochs, "images": epochs * images_per_epoch,
            "student_gmacs": student_macs / 1e9, "teacher_gmacs": teacher_macs / 1e9, "pflops": flops / 1e15,
            "tflops_per_gpu": tflops_per_gpu, "gpu_hours": flops / (tflops_per_gpu * 1e12) / 3600}


def describe(recipe: Recipe) -> str:
    """The plan, what the run should reach (with its source) and the estimate, as ``--dry-run`` prints them."""
    spec = recipe.reproduce or ReproduceSpec()
    est = compute_estimate(recipe)
    expected = f"{spec.expected_top1:.2f} % top-1" if spec.expected_top1 is not None else "not known"
    return "\n".join([
        format_plan(recipe),
        f"expected: {expected} ({spec.expected_source or 'no source'})",
        f"compute: {est['epochs']} epochs, {est['images'] / 1e6:.0f} M images, student {est['student_gmacs']:.2f} "
        f"GMACs and teacher {est['teacher_gmacs']:.2f} GMACs an image, {est['pflops']:,.0f} PFLOP: about "
        f"{est['gpu_hours']:,.0f} GPU-hours at an assumed {est['tflops_per_gpu']:g} TFLOP/s per GPU",
    ])


# --------------------------------------------------------------------------------------------
# The log: one JSON line per epoch (and TensorBoard when installed)
# --------------------------------------------------------------------------------------------
class RunLog:
    """``log.jsonl`` in the run directory, written by the main process: an ``{"event": "start"}`` line per
    (re)start, an ``{"event": "epoch", ...}`` line per epoch (the history record of
    :func:`~profit_edu.train.fit` plus the phase, the epoch over the whole run, images/s and replaced images), an
    ``{"event": "finished"}`` line. After a crash an epoch may appear twice: the later line is the one that counts.
    """

    def __init__(self, out: Path, recipe: Recipe, world: World, loader: ShardLoader, *, echo: bool) -> None:
        self.path, self.world, self.loader, self.echo = out / "log.jsonl", world, loader, echo
        self.batch = recipe.data.batch_size
        self.offsets, total = {}, 0
        for p in expand_phases(recipe):
            self.offsets[p.name], total = total, total + p.epochs
        self.tensorboard = None
        if world.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(out / "tensorboard"))
            except ImportError:  # TensorBoard is optional
                pass

    def write(self, event: str, **fields: Any) -> None:
        if self.world.is_main:
            line = json.dumps({"event": event, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields}, default=str)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(line + "\n")

    def epoch(self, phase: Phase, epoch: int, record: dict[str, Any]) -> int:
        """Log one epoch (every process calls it: the replaced-image count is a sum); returns the run's epoch."""
        run_epoch = self.offsets[phase.name] + epoch
        count = torch.tensor(float(self.loader.replaced), device=self.world.device)
        replaced = int(self.world.all_reduce_sum(count).item())
        speed = record["steps"] * self.batch / record["wall_s"] if record.get("wall_s") else None
        fields = {k: v for k, v in record.items() if k != "frozen"}
        self.write("epoch", phase=phase.name, phase_epoch=epoch, run_epoch=run_epoch, frozen=len(record["frozen"]),
                   world_size=self.world.size, global_batch=self.batch, images_per_s=speed, replaced_images=replaced,
                   **fields)
        if self.tensorboard is not None:
            for key in ("val_top1", "ema_val_top1", "train_loss", "train_top1", "lr"):
                if record.get(key) is not None:
                    self.tensorboard.add_scalar(key, record[key], run_epoch)
            self.tensorboard.flush()
        if self.echo and self.world.is_main:
            ema = f" (EMA {record['ema_val_top1']:.2f})" if record.get("ema_val_top1") is not None else ""
            val = f"{record['val_top1']:.2f}" if record.get("val_top1") is not None else "-"
            print(f"[{phase.name} {epoch + 1}/{phase.epochs}] val top-1 {val}{ema}, loss {record['train_loss']:.3f}"
                  f", {speed or 0:,.0f} images/s", flush=True)
        return run_epoch


def _crash_point() -> tuple[int, int] | None:
    """``PROFIT_EDU_CRASH=RANK:EPOCH`` in a torchrun job's first attempt (see :data:`CRASH_ENV`)."""
    value = os.environ.get(CRASH_ENV)
    if not value or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return None
    rank, _, epoch = value.partition(":")
    return int(rank), int(epoch)


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``profit-edu reproduce`` (and ``python -m profit_edu.reproduce``)."""
    parser.add_argument("--recipe", required=True, help="a shipped ImageNet recipe (e.g. mobilenet_v2_w4a4_imagenet)"
                        " or a recipe file")
    parser.add_argument("--data", required=True, help="the ImageNet folder: train/ and val/, one folder per class")
    parser.add_argument("--out", help="the run directory (default: runs/<recipe name>); rerun to resume")
    parser.add_argument("--batch-size", type=int, help="the global batch over all processes (default: the "
                        "recipe's); the learning rates follow the recipe's lr_scaling")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when present (NCCL), else cpu "
                        "(gloo)")
    parser.add_argument("--workers", type=int, help="data loader processes per training process (default: the "
                        "recipe's)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, help="bfloat16 autocast of the training "
                        "forwards (default: the recipe's reproduce.amp)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, help="NHWC memory layout "
                        "(default: the recipe's)")
    parser.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, help="BatchNorm over the global batch "
                        "(default: the recipe's, normally on); off: each process's own, as DataParallel had it")
    parser.add_argument("--init", help="start from this float run directory (needed for MobileNet-v1)")
    parser.add_argument("--teacher-weights", help="the teacher's state-dict file (default: torchvision's, "
                        "downloaded once into torch hub's cache)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="float64: slow, for "
                        "checking that N processes train as one (float32 sums in another order drift apart)")
    parser.add_argument("--bad-images", choices=("raise", "skip"), default="raise", help="an unreadable image stops"
                        " the run (raise), or the next image takes its place and the log counts it (skip)")
    parser.add_argument("--restart", action="store_true", help="start over instead of resuming --out")
    parser.add_argument("--dry-run", action="store_true", help="check the inputs, print the plan, the expected "
                        "top-1 and the compute estimate, and stop")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                        help="a progress bar on the main process (default: on a terminal)")
    return parser


def reproduce(args: argparse.Namespace) -> RecipeResult | None:
    """Run ``profit-edu reproduce`` with parsed arguments (see :func:`add_arguments`); None for ``--dry-run``."""
    world = World.from_env(args.device)
    if not world.is_main:
        logging.getLogger("profit_edu").setLevel(logging.ERROR)  # one process speaks
    try:
        recipe = prepare_recipe(load_recipe(args.recipe), data=args.data, world_size=world.size,
                                batch_size=args.batch_size, workers=args.workers)
        counts = check_imagenet_root(recipe.data.root, recipe.model.num_classes)
        if args.dry_run:
            if world.is_main:
                print(f"{args.data}: {counts['classes']} classes, {counts['train']:,} train and {counts['val']:,} "
                      f"val images\n{describe(recipe)}")
            return None
        return _train(recipe, args, world)
    finally:
        world.close()


def _train(recipe: Recipe, args: argparse.Namespace, world: World) -> RecipeResult:
    """Repair or clear the run directory, build the student and teacher, the loaders and the log, run the recipe."""
    spec = recipe.reproduce or ReproduceSpec()
    out = Path(args.out or f"runs/{recipe.name}")
    if world.is_main and args.restart:  # the previous epochs kept for a fallback belong to the run replaced
        for stale in out.rglob(PREVIOUS_JSON_NAME):
            stale.unlink()
    elif world.is_main:
        for message in recover_run(out):
            log.warning(message)
            print(f"profit-edu reproduce: {message}", file=sys.stderr)
    world.barrier()
    dtype = getattr(torch, args.dtype)
    model = _student(recipe, args.init, world).to(world.device, dtype)
    if world.size > 1 and (spec.sync_bn if args.sync_bn is None else args.sync_bn):
        model = convert_batchnorm(model, world.device)
    elif world.size > 1:
        world = dataclasses.replace(world, bn_synced=False)
    teacher = load_teacher(recipe, weights=args.teacher_weights, world=world)
    teacher = teacher.to(dtype) if teacher is not None else None
    if spec.amp if args.amp is None else args.amp:
        _Autocast(model, world.device.split(":")[0], training_only=True)
        if teacher is not None:
            _Autocast(teacher, world.device.split(":")[0], training_only=False)
    if world.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    train, val = make_loaders(recipe, world, bad_images=args.bad_images, dtype=dtype)
    run_log = RunLog(out, recipe, world, train, echo=True)
    run_log.write("start", recipe=recipe.name, world_size=world.size, global_batch=recipe.data.batch_size,
                  lr=recipe.train.lr, device=world.device, restart=args.restart)
    crash = _crash_point()

    def callback(phase: Phase, epoch: int, record: dict[str, Any]) -> None:
        run_epoch = run_log.epoch(phase, epoch, record)
        if crash == (world.rank, run_epoch):
            os.kill(os.getpid(), signal.SIGKILL)  # the testing aid: a process dies without a word

    result = run_recipe(recipe, model, train, val, out_dir=out, teacher=teacher, device=world.device,
                        progress=args.progress and world.is_main, resume=not args.restart, callback=callback,
                        world=world, channels_last=spec.channels_last if args.channels_last is None
                        else args.channels_last, keep_previous=True)
    last = result.phases[-1].history[-1] if result.phases and result.phases[-1].history else {}
    run_log.write("finished", val_top1=last.get("val_top1"), ema_val_top1=last.get("ema_val_top1"),
                  expected_top1=spec.expected_top1, expected_source=spec.expected_source)
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m profit_edu.reproduce``: parse ``argv``, run, and end any failure in one line (exit 1)."""
    parser = add_arguments(argparse.ArgumentParser(prog="python -m profit_edu.reproduce", description=__doc__,
                                                   formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        reproduce(args)
    except (ValueError, OSError) as err:  # RecipeError, CheckpointError, ImageNetFolderError, ... name the problem
        print(f"profit-edu reproduce: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
