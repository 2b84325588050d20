"""Checkpoints that resume a training run exactly, and that never unpickle anything.

A checkpoint is two files in a run directory::

    run/
      checkpoint.json             # small, human-readable: epoch, history, config, bit widths, sha256 of ...
      epoch-0003-<sha>.safetensors # ... every tensor: model, EMA model, SGD momentum, RNG state

Why two formats: tensors go to `safetensors <https://huggingface.co/docs/safetensors>`_, a plain header plus raw
bytes, so loading a checkpoint cannot run code (``torch.load`` of a pickle can). Everything else is JSON, which
you can open in an editor, diff between runs and read from a notebook.

Tensor keys in the safetensors file carry a prefix that says what they belong to:

``model/<name>``
    the model's ``state_dict`` (weights, BN statistics, quantizer ``a_hat``/``c_hat`` and ``initialized`` flags).
``ema/<name>``
    the same for the exponential-moving-average copy of the model, when there is one.
``momentum/<parameter name>``
    SGD's momentum buffers, keyed by *parameter name* (not by the optimizer's internal integer ids, which
    change whenever parameter groups change).
``rng/<device>``
    random-number-generator states as uint8 tensors (``torch.get_rng_state()``), so dropout continues
    with the numbers it would have drawn.
``extra/<name>``
    anything else a caller wants restored: the trainer stores a train-mode teacher's BN statistics here as
    ``teacher.<name>`` (:func:`teacher_buffers`; :meth:`Checkpoint.restore_teacher` puts them back, strictly).

*Atomic writes.* Every file goes through :func:`profit_edu.atomic.atomic_write_bytes`. The tensor file gets a
new name each epoch and the JSON that points to it is replaced last, so a process killed at any instant leaves the
previous complete checkpoint loadable; what a killed writer left behind is removed by the next save or load.

*Strict loading.* The JSON's format version, the tensor file's size and sha256, the key set and every shape are
checked; any mismatch raises :class:`CheckpointError` naming the file and the offending key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor, nn

from .atomic import atomic_write_bytes, remove_stale_temporaries
from .layers import quantizers

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "JSON_NAME", "PREVIOUS_JSON_NAME", "Checkpoint",
           "CheckpointError", "check_bits_match", "has_checkpoint", "load_checkpoint", "load_state_strict",
           "quantizer_bits", "release_checkpoint", "save_checkpoint", "teacher_buffers"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "profit-edu-checkpoint"
CHECKPOINT_VERSION = 1
JSON_NAME = "checkpoint.json"
PREVIOUS_JSON_NAME = "checkpoint.previous.json"  # the epoch before, kept by save_checkpoint(keep_previous=True)
PREFIXES = ("model", "ema", "momentum", "rng", "extra")
TEACHER_PREFIX = "teacher."  # extra/teacher.<buffer>: a train-mode teacher's BN statistics
MAX_JSON_BYTES = 64 * 2**20  # a checkpoint.json is kilobytes (history grows ~300 bytes an epoch); refuse giants


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, from another format version, or does not fit the model."""


# --------------------------------------------------------------------------------------------
# What a checkpoint holds
# --------------------------------------------------------------------------------------------
def quantizer_bits(model: nn.Module) -> dict[str, int | None]:
    """The bit width of every quantizer, by module name (None: that quantizer is off, i.e. float)."""
    return {name: q.bits for name, q in quantizers(model)}


def _momentum_by_name(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    """SGD momentum buffers keyed by parameter name (parameters that never got a gradient have none)."""
    out = {}
    for name, p in model.named_parameters():
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            out[name] = buf
    known = {id(p) for p in model.parameters()}
    stray = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in known]
    if stray:
        raise CheckpointError(f"the optimizer holds {len(stray)} parameter(s) that are not in the model; "
                              "build the optimizer from this model's parameters")
    return out


def _to_saveable(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    # safetensors wants contiguous CPU tensors that share no memory with each other: clone them.
    return {f"{prefix}/{k}": v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def _jsonable(obj: Any, where: str) -> Any:
    """Check that ``obj`` survives a JSON round trip unchanged (tuples become lists; NaN becomes null)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN/inf; a history value that diverged is recorded as null
    if isinstance(obj, Mapping):
        bad = [k for k in obj if not isinstance(k, str)]
        if bad:
            raise TypeError(f"{where}: JSON keys must be strings, got {bad[0]!r}")
        return {k: _jsonable(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"{where}: cannot store a {type(obj).__name__} in a checkpoint's JSON ({obj!r})")


@dataclass
class Checkpoint:
    """A loaded, validated checkpoint. Tensors are on the CPU; :meth:`restore` copies them into modules.

    Attributes:
        epoch: the last *completed* epoch (0-based); a resumed run starts at ``epoch + 1``.
        history: the per-epoch records up to and including ``epoch``.
        config: the training configuration as a dict (see ``train.TrainConfig``).
        meta: free JSON the caller stored, e.g. the CLI's model-building arguments.
        bits: every quantizer's bit width by name.
        model_state, ema_state, momentum, rng, extra: the tensors, without their key prefixes.
        path: the JSON file it was read from.
    """

    epoch: int
    history: list[dict[str, Any]]
    config: dict[str, Any]
    meta: dict[str, Any]
    bits: dict[str, int | None]
    model_state: dict[str, Tensor]
    ema_state: dict[str, Tensor] | None
    momentum: dict[str, Tensor] = field(default_factory=dict)
    rng: dict[str, Tensor] = field(default_factory=dict)
    extra: dict[str, Tensor] = field(default_factory=dict)
    path: Path | None = None

    def restore(self, model: nn.Module, *, ema_model: nn.Module | None = None,
                optimizer: torch.optim.Optimizer | None = None) -> None:
        """Copy the saved state into ``model`` (and the EMA model and optimizer, when given), strictly.

        Everything is checked before anything is copied, so a failed restore leaves the modules as they were.

        Raises:
            CheckpointError: the model's quantizer bit widths, keys or shapes differ from the checkpoint's, an
                EMA model is given but the checkpoint has none, or a momentum buffer names an unknown parameter.
        """
        check_bits_match(model, self.bits, source=str(self.path))
        _check_state(model, self.model_state, what=f"model state in {self.path}")
        if ema_model is not None:
            if self.ema_state is None:
                raise CheckpointError(f"{self.path} holds no EMA model, but an EMA model was given to restore; "
                                      "was the run trained with ema_decay=None?")
            _check_state(ema_model, self.ema_state, what=f"EMA state in {self.path}")
        if optimizer is not None:
            _check_momentum(model, optimizer, self.momentum, source=str(self.path))
        model.load_state_dict(dict(self.model_state), strict=True)
        if ema_model is not None:
            ema_model.load_state_dict(dict(self.ema_state), strict=True)
        if optimizer is not None:
            params = dict(model.named_parameters())
            for name, buf in self.momentum.items():
                p = params[name]
                optimizer.state[p]["momentum_buffer"] = buf.to(device=p.device, dtype=p.dtype).clone()

    def restore_teacher(self, teacher: nn.Module) -> None:
        """Put back a train-mode teacher's buffers (its BN statistics drift in training) from ``extra``, strictly:
        every buffer of the teacher, saved by :func:`teacher_buffers`, with its shape.

        Raises:
            CheckpointError: a buffer is missing, unexpected or of another shape (named).
        """
        buffers = dict(teacher.named_buffers())
        saved = {k.removeprefix(TEACHER_PREFIX): v for k, v in self.extra.items() if k.startswith(TEACHER_PREFIX)}
        if saved.keys() != buffers.keys():
            diff = sorted(set(saved) ^ set(buffers))
            raise CheckpointError(f"{self.path}: the teacher's buffers differ from the checkpoint's ({diff[:5]})")
        with torch.no_grad():
            for name, value in saved.items():
                if value.shape != buffers[name].shape:
                    raise CheckpointError(f"{self.path}: teacher buffer {name!r} has shape {tuple(value.shape)} in "
                                          f"the checkpoint, {tuple(buffers[name].shape)} in the teacher")
                buffers[name].copy_(value)


def teacher_buffers(teacher: nn.Module) -> dict[str, Tensor]:
    """A train-mode teacher's buffers as ``extra`` entries (``teacher.<name>``) for :func:`save_checkpoint`."""
    return {f"{TEACHER_PREFIX}{k}": v for k, v in teacher.named_buffers()}


def check_bits_match(model: nn.Module, bits: Mapping[str, int | None], *, source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` unless the model's quantizers and their bit widths equal ``bits``."""
    have = quantizer_bits(model)
    missing = sorted(set(bits) - set(have))
    unexpected = sorted(set(have) - set(bits))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: the model's quantizers do not match the checkpoint's. In the checkpoint but not the model: "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}; in the model but not the checkpoint: "
            f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}. Quantize the model the same way first."
        )
    for name, b in bits.items():
        if have[name] != b:
            raise CheckpointError(f"{source}: quantizer {name!r} has {have[name]} bits in the model but {b} in the "
                                  "checkpoint; call set_bits(...) to match before loading")


def _check_state(module: nn.Module, state: Mapping[str, Tensor], *, what: str) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if shapes:
            parts.append(f"shape mismatches [{'; '.join(shapes)}]")
        raise CheckpointError(f"{what} does not fit {type(module).__name__}: " + ", ".join(parts))


def load_state_strict(module: nn.Module, state: Mapping[str, Tensor], *, what: str = "state") -> None:
    """``module.load_state_dict(state)`` with an error that lists missing, unexpected and mis-shaped keys.

    Raises:
        CheckpointError: any key is missing, unexpected, or has a different shape (nothing is copied then).
    """
    _check_state(module, state, what=what)
    module.load_state_dict(dict(state), strict=True)


def _check_momentum(model: nn.Module, optimizer: torch.optim.Optimizer, momentum: Mapping[str, Tensor],
                    *, source: str) -> None:
    params = dict(model.named_parameters())
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for name, buf in momentum.items():
        p = params.get(name)
        if p is None:
            raise CheckpointError(f"{source}: momentum buffer {name!r} names no parameter of the model")
        if id(p) not in in_optimizer:
            raise CheckpointError(f"{source}: momentum buffer {name!r} belongs to a parameter the optimizer lacks")
        if buf.shape != p.shape:
            raise CheckpointError(f"{source}: momentum buffer {name!r} has shape {tuple(buf.shape)}, "
                                  f"the parameter {tuple(p.shape)}")


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------
def _tensor_file_name(epoch: int, sha256: str) -> str:
    # Content-addressed: a rerun that rewrites the same epoch never overwrites the file the current JSON names.
    return f"epoch-{epoch:04d}-{sha256[:12]}.safetensors"


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    ema_model: nn.Module | None = None,
    history: Iterable[Mapping[str, Any]] = (),
    config: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    rng: Mapping[str, Tensor] | None = None,
    extra: Mapping[str, Tensor] | None = None,
    keep_previous: bool = False,
) -> Path:
    """Write the checkpoint of a completed ``epoch`` into ``directory`` atomically; returns the JSON's path.

    The tensor file of the previous checkpoint is deleted only after the new JSON is in place; with
    ``keep_previous`` the previous checkpoint stays, its JSON copied to ``checkpoint.previous.json``
    (:data:`PREVIOUS_JSON_NAME`, loadable with :func:`load_checkpoint`), a fallback for a damaged latest one.

    Args:
        directory: the run directory (created if needed).
        epoch: the last completed epoch, 0-based.
        model, optimizer, ema_model: what to save (optimizer: only SGD's momentum buffers are kept; the
            learning rates follow from the config and the epoch).
        history, config, meta: JSON-serialisable data (tuples are stored as lists).
        rng: RNG states as uint8 tensors, by device name ("cpu", "cuda").
        extra: further tensors, restored by the caller.

    Raises:
        TypeError: something in history/config/meta cannot be stored as JSON.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
    tensors = _to_saveable(model.state_dict(), "model")
    if ema_model is not None:
        tensors |= _to_saveable(ema_model.state_dict(), "ema")
    if optimizer is not None:
        tensors |= _to_saveable(_momentum_by_name(model, optimizer), "momentum")
    tensors |= _to_saveable(dict(rng or {}), "rng")
    tensors |= _to_saveable(dict(extra or {}), "extra")
    json_path = _write(directory, epoch, tensors, has_ema=ema_model is not None, bits=quantizer_bits(model),
                       config=config, meta=meta, history=history, keep_previous=keep_previous)
    log.info("saved checkpoint of epoch %d to %s", epoch, json_path)
    return json_path


def _write(directory: Path, epoch: int, tensors: dict[str, Tensor], *, has_ema: bool,
           bits: Mapping[str, int | None], config: Mapping[str, Any] | None, meta: Mapping[str, Any] | None,
           history: Iterable[Mapping[str, Any]], keep_previous: bool = False) -> Path:
    """Write the tensor file, then the JSON that points to it (the commit point); drop older tensor files (but
    the previous checkpoint's, copied to :data:`PREVIOUS_JSON_NAME` first, with ``keep_previous``)."""
    remove_stale_temporaries(directory)  # what a save killed earlier left behind
    blob = safetensors_save(tensors, metadata={"format": CHECKPOINT_FORMAT, "version": str(CHECKPOINT_VERSION)})
    digest = hashlib.sha256(blob).hexdigest()
    file_name = _tensor_file_name(epoch, digest)
    doc = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "epoch": epoch,
        "tensors": {"file": file_name, "sha256": digest, "bytes": len(blob), "has_ema": has_ema},
        "bits": dict(bits),
        "config": _jsonable(dict(config or {}), "config"),
        "meta": _jsonable(dict(meta or {}), "meta"),
        "history": _jsonable(list(history), "history"),
    }
    text = json.dumps(doc, indent=1, allow_nan=False)

    atomic_write_bytes(directory / file_name, blob)
    json_path = directory / JSON_NAME
    keep = {file_name}
    if keep_previous and json_path.is_file():
        before = json_path.read_bytes()
        atomic_write_bytes(directory / PREVIOUS_JSON_NAME, before)
        with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):  # a damaged one keeps nothing
            keep.add(str(json.loads(before)["tensors"]["file"]))
    atomic_write_bytes(json_path, text.encode())  # the commit point: from here on, the new checkpoint is current
    for stale in directory.glob("epoch-*.safetensors"):  # older epochs, and leftovers of a killed run
        if stale.name not in keep:
            stale.unlink(missing_ok=True)
    return json_path


def release_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *, use_ema: bool = False,
                       overwrite: bool = False) -> Path:
    """Copy a run's last checkpoint to ``dst`` with the model weights only: the form in which one is shipped.

    Momentum, RNG states and extra tensors are dropped (they only matter for resuming), and so is the EMA copy,
    unless ``use_ema`` makes the EMA weights *the* model. Epoch, history, config and meta are kept, and
    ``meta["released_from"]`` records the source and which copy was kept; ``SHA256SUMS`` beside the two files
    serves ``sha256sum -c``. The result loads with :func:`load_checkpoint` (so ``profit-edu evaluate`` and
    ``--init`` take it) and is a few MB for a small model.

    ``dst`` must not be the run itself, and a ``dst`` that already holds a checkpoint (another run, an earlier
    release) is replaced only with ``overwrite=True``: a release never destroys a run by accident.

    Raises:
        CheckpointError: ``src`` is not a valid checkpoint; ``use_ema`` and it holds no EMA weights; ``dst`` is the
            run's own directory, an existing file, or holds a checkpoint and ``overwrite`` is False.
    """
    state = load_checkpoint(src)
    _check_release_target(state.path.parent, dst, overwrite=overwrite)
    if use_ema and state.ema_state is None:
        raise CheckpointError(f"{state.path} holds no EMA weights to release (the run had ema_decay none)")
    weights = state.ema_state if use_ema else state.model_state
    meta = dict(state.meta)
    meta["released_from"] = {"checkpoint": str(state.path), "copy": "ema" if use_ema else "model",
                             "sha256": json.loads(state.path.read_text())["tensors"]["sha256"]}
    directory = Path(dst)
    created = directory  # the outermost folder this release creates: removed again if the release fails
    while not created.parent.exists() and created.parent != created.parent.parent:
        created = created.parent
    created = created if not created.exists() else None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        json_path = _write(directory, state.epoch, _to_saveable(weights, "model"), has_ema=False, bits=state.bits,
                           config=state.config, meta=meta, history=state.history)
        tensor_file = json.loads(json_path.read_text())["tensors"]["file"]
        sums = "".join(f"{hashlib.sha256((directory / f).read_bytes()).hexdigest()}  {f}\n"
                       for f in (JSON_NAME, tensor_file))
        atomic_write_bytes(directory / "SHA256SUMS", sums.encode())  # for `sha256sum -c SHA256SUMS`
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    return json_path


def _check_release_target(run: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Refuse a release into the run's own directory, onto a file, or over a checkpoint without ``overwrite``.

    Raises:
        CheckpointError: saying which, and what to pass instead.
    """
    run, dst = Path(run), Path(dst)
    if dst.exists() and not dst.is_dir():
        raise CheckpointError(f"{dst} is an existing file; a release is a directory: choose a new directory name")
    if dst.is_dir() and os.path.samefile(dst, run):
        raise CheckpointError(f"{dst} is the run being released: writing the copy there would delete its training "
                              "state (momentum, RNG, EMA); choose another directory")
    if has_checkpoint(dst) and not overwrite:
        raise CheckpointError(f"{dst} already holds a checkpoint ({dst / JSON_NAME}); releasing there would replace "
                              "it: choose another directory, or pass --overwrite (overwrite=True) to replace it")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def has_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a checkpoint (a ``checkpoint.json``; it is validated only when loaded)."""
    return (Path(directory) / JSON_NAME).is_file()


def _json_path(path: str | os.PathLike) -> Path:
    """The ``checkpoint.json`` of a run directory (or that file itself), checked to be a file of sane size."""
    path = Path(path)
    expected = f"expected a run directory holding {JSON_NAME}, or that file"
    json_path = path / JSON_NAME if path.is_dir() else path
    if not json_path.exists():
        what = f"the directory holds no {JSON_NAME}" if path.is_dir() else "no such file or directory"
        raise CheckpointError(f"no checkpoint at {path}: {what}; {expected}")
    if not json_path.is_file():
        what = "it" if json_path == path else str(json_path)
        raise CheckpointError(f"no checkpoint at {path}: {what} is not a regular file (a directory, device or pipe); "
                              f"{expected}")
    size = json_path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise CheckpointError(f"{json_path} has {size:,} bytes, more than a checkpoint's JSON can "
                              f"({MAX_JSON_BYTES:,}): it is not a profit-edu checkpoint")
    return json_path


def _require(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], source: Path) -> Any:
    if key not in doc:
        raise CheckpointError(f"{source}: key {key!r} is missing; this is not a complete profit-edu checkpoint")
    value = doc[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise CheckpointError(f"{source}: key {key!r} should be {kind}, got {type(value).__name__}")
    return value


def _read_tensors(json_path: Path, info: dict[str, Any]) -> tuple[Path, dict[str, Tensor]]:
    """The tensor file that ``checkpoint.json``'s ``tensors`` entry names, checked (name, size, sha256) before it
    is parsed as safetensors."""
    file_name = _require(info, "file", str, json_path)
    if Path(file_name).name != file_name:
        raise CheckpointError(f"{json_path}: tensor file name {file_name!r} must be a plain file name")
    tensor_path = json_path.parent / file_name
    if not tensor_path.is_file():
        raise CheckpointError(f"{json_path} points to {tensor_path.name}, which does not exist")
    size = tensor_path.stat().st_size  # compared before reading: a replaced giant file is never read in
    if size != _require(info, "bytes", int, json_path):
        raise CheckpointError(f"{tensor_path} has {size} bytes but the checkpoint recorded {info['bytes']}: "
                              "the file is truncated or was replaced")
    blob = tensor_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != _require(info, "sha256", str, json_path):
        raise CheckpointError(f"{tensor_path}: sha256 does not match the one recorded in {json_path.name}: "
                              "the file is corrupted or was replaced")
    try:
        tensors = safetensors_load(blob)
    except (SafetensorError, ValueError) as err:  # checksum matched, so this is a writer bug, not disk damage
        raise CheckpointError(f"{tensor_path} could not be parsed as safetensors: {err}") from err
    return tensor_path, tensors


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint (a run directory or its ``checkpoint.json``). Nothing is unpickled.

    Temporary files that a killed save left in the directory are removed (see :func:`remove_stale_temporaries`).

    Raises:
        CheckpointError: no checkpoint there (nothing at the path, a directory without ``checkpoint.json``, a
            device such as ``/dev/null``); broken or oversized JSON; another format or version; the tensor file is
            missing, truncated or altered (size or sha256 differ); a tensor key has an unknown prefix.
    """
    json_path = _json_path(path)
    remove_stale_temporaries(json_path.parent)  # what a save killed earlier left behind
    try:
        doc = json.loads(json_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{json_path} is not valid JSON ({err}); the file is damaged") from err
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{json_path} is not a profit-edu checkpoint (its 'format' is not {CHECKPOINT_FORMAT!r})")
    version = doc.get("version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(f"{json_path} has checkpoint format version {version!r}; this profit-edu reads "
                              f"version {CHECKPOINT_VERSION} only")
    epoch = _require(doc, "epoch", int, json_path)
    info = _require(doc, "tensors", dict, json_path)
    bits = _require(doc, "bits", dict, json_path)
    config = _require(doc, "config", dict, json_path)
    meta = _require(doc, "meta", dict, json_path)
    history = _require(doc, "history", list, json_path)
    tensor_path, tensors = _read_tensors(json_path, info)
    groups: dict[str, dict[str, Tensor]] = {p: {} for p in PREFIXES}
    for key, value in tensors.items():
        prefix, sep, name = key.partition("/")
        if not sep or prefix not in groups:
            raise CheckpointError(f"{tensor_path}: tensor key {key!r} has no known prefix (one of {PREFIXES})")
        groups[prefix][name] = value
    has_ema = bool(info.get("has_ema", bool(groups["ema"])))
    if not groups["model"]:
        raise CheckpointError(f"{tensor_path} holds no model tensors")
    return Checkpoint(
        epoch=epoch, history=history, config=config, meta=meta, bits=bits,
        model_state=groups["model"], ema_state=groups["ema"] if has_ema else None, momentum=groups["momentum"],
        rng=groups["rng"], extra=groups["extra"], path=json_path,
    )
