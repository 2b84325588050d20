"""``profit-edu pack`` and ``profit-edu run-packed``: a trained run -> a packed integer model file -> predictions.

The library behind them is :mod:`profit_edu.packed`.

``profit-edu pack CHECKPOINT -o model.pqm``
    rebuild the quantized model a ``profit-edu train`` run saved (its ``checkpoint.json`` records the builder, its
    arguments and the bit widths), load its weights (``--ema``: the EMA weights), convert it to an integer program
    and write the packed file (``--onnx model.onnx``: also the ONNX model). CHECKPOINT may instead be a
    ``.safetensors`` state dict of a quantized model, with ``--config model.json`` giving
    ``{"builder": "mobilenet_v2", "kwargs": {...}, "weight_bits": 4, "act_bits": 4}`` (optional: ``input_size``,
    ``mean``, ``std``, ``classes``: one name per output). An output that is an input, or a file of a run directory
    (without ``--overwrite``), is refused before anything is read.
``profit-edu run-packed model.pqm IMAGE...``
    load and validate the packed file, read each image (anything Pillow opens), resize it to the program's input
    size (32x32: resized whole; larger: shorter side to 256/224 of the size, then a centre crop), normalise,
    quantize to int8 codes, run the integer engine and print the top-5 classes with softmax probabilities.

Both return the exit status (0 on success, 2 with a message on stderr for bad input).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.constants import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from ..packed.program import MAX_INPUT_SIZE, check_channel_values, check_classes, check_input_size
from ..quant import MAX_BITS, MIN_BITS, check_bits
from .common import (
    MAX_CLASSES,
    MAX_WIDTH,
    CLIError,
    Ranged,
    builder_kwargs,
    check_model_args,
    check_output_file,
    os_error_line,
)

__all__ = ["add_pack_commands", "build_quantized_model", "load_image", "model_from_run", "pack_main",
           "run_packed_main"]


def add_pack_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``pack`` and ``run-packed`` on a ``profit-edu`` subparsers object (each sets ``handler``)."""
    p = subparsers.add_parser(
        "pack", help="convert a trained quantized model into a packed integer model file",
        description="Rebuild the quantized model of a training checkpoint, fold it into an integer program "
                    "(BatchNorm folded, int32 accumulators, fixed-point requantization) and write it bit-packed "
                    "to a .pqm file (safetensors + JSON, SHA-256 checked).")
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT",
                   help="a run directory written by 'profit-edu train' (or its checkpoint.json), or a .safetensors "
                        "state dict together with --config")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FILE", help="the packed file to write")
    p.add_argument("--config", type=Path, default=None, metavar="JSON",
                   help="for a .safetensors state dict: builder, kwargs, weight_bits, act_bits")
    p.add_argument("--ema", action="store_true", help="pack the checkpoint's EMA weights instead of the live ones")
    p.add_argument("--input-size", type=Ranged(int, low=1, high=MAX_INPUT_SIZE), default=None, metavar="S",
                   help=f"compile for SxS images, S in 1..{MAX_INPUT_SIZE} (default: 32 for CIFAR stems, else 224)")
    p.add_argument("--onnx", type=Path, default=None, metavar="FILE", help="also export the ONNX (QDQ) model")
    p.add_argument("--overwrite", action="store_true",
                   help="let -o/--onnx replace a file of a run directory (checkpoint.json, its tensors); an input "
                        "of this command is never replaced")
    p.set_defaults(handler=pack_main)

    r = subparsers.add_parser(
        "run-packed", help="classify images with a packed model on the integer engine",
        description="Load a packed model (validating its checksum and bounds), run the integer engine on each "
                    "image and print the top classes.")
    r.add_argument("model", type=Path, metavar="MODEL", help="a .pqm file written by 'profit-edu pack'")
    r.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    r.add_argument("--top", type=Ranged(int, low=1), default=5, metavar="K",
                   help="how many classes to print (default: 5)")
    r.add_argument("--json", action="store_true", help="print one JSON object per image")
    r.set_defaults(handler=run_packed_main)


# --------------------------------------------------------------------------------------------
# pack
# --------------------------------------------------------------------------------------------
def build_quantized_model(builder: str, kwargs: dict[str, Any], weight_bits: int, act_bits: int) -> nn.Module:
    """Build ``get_model(builder, **kwargs)`` and quantize it with DuQ at the given bits (weights not loaded yet).

    Raises:
        ValueError: unknown builder, or bits that are None (a packed model is fully quantized).
    """
    from ..layers import quantize_model
    from ..models import get_model

    if weight_bits is None or act_bits is None:
        raise ValueError("only fully quantized models can be packed: weight_bits and act_bits must both be set "
                         f"(got {weight_bits}, {act_bits})")
    model = get_model(builder, **kwargs)
    return quantize_model(model, weight_bits=weight_bits, act_bits=act_bits).eval()


def model_from_run(path: Path, use_ema: bool) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """The quantized model of a ``profit-edu train`` run with its weights (``use_ema``: the EMA weights), in eval
    mode, plus what :func:`~profit_edu.packed.to_program` needs: ``arch`` and the extra keywords (normalisation
    and class names of the data it was trained on).

    Raises:
        ValueError: the checkpoint records no model arguments, or has no EMA weights for ``use_ema``.
        CheckpointError: a missing or damaged checkpoint (a ``ValueError`` too).
    """
    from ..checkpoint import check_bits_match, load_checkpoint, load_state_strict

    state = load_checkpoint(path)
    args = state.meta.get("model_args")
    if not isinstance(args, dict):
        raise ValueError(f"{path}: the checkpoint records no model arguments (meta['model_args']); was it written by "
                         "'profit-edu train'? Otherwise pass a .safetensors state dict with --config")
    check_model_args(args, str(state.path))
    kwargs = builder_kwargs(args)
    model = build_quantized_model(args["model"], kwargs, args["weight_bits"], args["act_bits"])
    check_bits_match(model, state.bits, source=str(path))
    if use_ema:
        if state.ema_state is None:
            raise ValueError(f"{path}: --ema given, but the checkpoint has no EMA weights")
        load_state_strict(model, state.ema_state, what=f"EMA state in {path}")
    else:
        load_state_strict(model, state.model_state, what=f"model state in {path}")
    dataset = state.meta.get("data", {}).get("dataset")
    extra: dict[str, Any] = {}
    if dataset in ("cifar10", "synthetic"):  # the CLI trains with CIFAR-10's normalisation
        extra = {"mean": CIFAR10_MEAN, "std": CIFAR10_STD}
        if dataset == "cifar10":
            extra["classes"] = list(CIFAR10_CLASSES)
    return model.eval(), {"builder": args["model"], "kwargs": kwargs}, extra


CONFIG_REQUIRED = ("builder", "weight_bits", "act_bits")
CONFIG_OPTIONAL = ("kwargs", "input_size", "mean", "std", "classes")


def _read_config(config_path: Path) -> dict[str, Any]:
    """The ``--config`` JSON, every field checked; errors name the file, the field, what is allowed and the value.

    Raises:
        ValueError: unreadable JSON, an unknown or missing key, or a value outside its range.
    """
    from ..models import list_models

    where = f"--config {config_path}"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{where}: cannot read JSON ({err})") from err
    keys = f"{', '.join(CONFIG_REQUIRED)} (required) and {', '.join(CONFIG_OPTIONAL)} (optional)"
    if not isinstance(config, dict):
        raise ValueError(f"{where}: must be a JSON object with the keys {keys}; got a {type(config).__name__}")
    unknown = sorted(set(config) - set(CONFIG_REQUIRED) - set(CONFIG_OPTIONAL))
    missing = [k for k in CONFIG_REQUIRED if k not in config]
    if unknown or missing:
        what = f"unknown key {unknown[0]!r}" if unknown else f"missing key {missing[0]!r}"
        raise ValueError(f"{where}: {what}; the keys are {keys}")
    if config["builder"] not in list_models():
        raise ValueError(f"{where}: builder must be one of {', '.join(list_models())}, got {config['builder']!r}")
    kwargs = config.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ValueError(f"{where}: kwargs must be an object of builder arguments, got {kwargs!r}")
    classes, width = kwargs.get("num_classes", 1000), kwargs.get("width_mult", 1.0)
    too_big = (isinstance(classes, int) and classes > MAX_CLASSES) or \
        (isinstance(width, float | int) and width > MAX_WIDTH)
    if too_big:  # the builder checks the rest; these two would first exhaust memory
        raise ValueError(f"{where}: kwargs num_classes must be at most {MAX_CLASSES} and width_mult at most "
                         f"{MAX_WIDTH:g}, got {classes!r} and {width!r}")
    for key in ("weight_bits", "act_bits"):
        try:
            if config[key] is None:
                raise ValueError("None")
            check_bits(config[key])
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {key} must be an integer bit width in {MIN_BITS}..{MAX_BITS} (a packed model "
                             f"is fully quantized), got {config[key]!r}") from None
    try:
        if "input_size" in config:
            check_input_size(config["input_size"])
        if "mean" in config:
            check_channel_values("mean", config["mean"])
        if "std" in config:
            check_channel_values("std", config["std"], positive=True)
        if config.get("classes") is not None:
            check_classes(config["classes"], len(config["classes"]) if isinstance(config["classes"], list) else 0)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from err
    return config


def _outputs(model: nn.Module) -> int:
    """How many outputs (classes) a MobileNet has: the width of its last linear layer."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features


def _from_state_dict(path: Path, config_path: Path | None) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    from safetensors.torch import load_file

    from ..checkpoint import load_state_strict

    if config_path is None:
        raise ValueError(f"{path} is a state dict: pass --config JSON with builder, kwargs, weight_bits, act_bits")
    config = _read_config(config_path)
    kwargs = dict(config.get("kwargs", {}))
    try:
        model = build_quantized_model(config["builder"], kwargs, config["weight_bits"], config["act_bits"])
        if config.get("classes") is not None:
            check_classes(config["classes"], _outputs(model))
    except (TypeError, ValueError) as err:  # builder arguments (unknown, wrong type, out of range); classes
        raise ValueError(f"--config {config_path}: {err}") from err
    if not path.is_file():
        raise ValueError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    load_state_strict(model, state, what=str(path))
    extra = {k: config[k] for k in ("input_size", "mean", "std", "classes") if k in config}
    return model.eval(), {"builder": config["builder"], "kwargs": kwargs}, extra


def _check_outputs(args: argparse.Namespace) -> None:
    """``-o`` and ``--onnx`` must not be an input, a directory, each other, or (without --overwrite) a run's file."""
    inputs = (args.checkpoint, args.config)
    check_output_file(args.output, "-o", inputs=inputs, overwrite=args.overwrite)
    if args.onnx is not None:
        if args.onnx.resolve() == args.output.resolve():
            raise CLIError(f"--onnx {args.onnx} is also the -o file: name two different files")
        check_output_file(args.onnx, "--onnx", inputs=inputs, overwrite=args.overwrite)


def pack_main(args: argparse.Namespace) -> int:
    """Run ``profit-edu pack`` (see the module docstring); returns the exit status."""
    from ..packed import save_packed, to_program

    try:
        _check_outputs(args)
        src: Path = args.checkpoint
        if src.suffix == ".safetensors":
            model, arch, extra = _from_state_dict(src, args.config)
        else:
            model, arch, extra = model_from_run(src, args.ema)
        if args.input_size is not None:
            extra["input_size"] = args.input_size
        program = to_program(model, arch=arch, **extra)
        size = save_packed(program, args.output)
        if args.onnx is not None:
            from ..packed import export_onnx

            export_onnx(program, args.onnx)
    except (CLIError, ValueError) as err:
        print(f"profit-edu pack: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"profit-edu pack: error: {os_error_line(err)}", file=sys.stderr)
        return 2
    convs = program.convs()
    bits = sorted({op.weight_bits for op in convs})
    weights = sum(op.weight.numel() for op in convs)
    print(f"packed {arch['builder']} ({len(convs)} conv/linear layers, {weights:,} weights at {bits} bits, "
          f"input {program.input_size[0]}x{program.input_size[1]}) into {args.output}: {size:,} bytes"
          + (f"; ONNX in {args.onnx}" if args.onnx is not None else ""))
    return 0


# --------------------------------------------------------------------------------------------
# run-packed
# --------------------------------------------------------------------------------------------
def load_image(path: Path, size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """One image file -> a normalised float tensor (3, H, W) of the program's input size (module docstring)."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import functional as TF

    try:
        with warnings.catch_warnings():  # past MAX_IMAGE_PIXELS Pillow only warns, past twice that it refuses
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img = img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ValueError(f"{path}: too large to decode safely ({err}); the limit is PIL.Image.MAX_IMAGE_PIXELS = "
                         f"{Image.MAX_IMAGE_PIXELS:,} pixels: shrink the image first") from err
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"{path}: cannot read the image ({err})") from err
    h, w = size
    if (h, w) == (32, 32) or max(h, w) <= 64:  # small inputs (CIFAR): resize the whole image
        img = img.resize((w, h), Image.BILINEAR)
    else:
        img = TF.center_crop(TF.resize(img, round(min(h, w) * 256 / 224)), [h, w])
    x = TF.to_tensor(img)
    return TF.normalize(x, list(mean), list(std))


def run_packed_main(args: argparse.Namespace) -> int:
    """Run ``profit-edu run-packed`` (see the module docstring); returns the exit status."""
    from ..packed import IntegerEngine, load_packed, quantize_image

    try:
        program = load_packed(args.model)
        engine = IntegerEngine(program)
        x = torch.stack([load_image(p, program.input_size, program.mean, program.std) for p in args.images])
        logits = engine.logits(quantize_image(x, program))
    except ValueError as err:
        print(f"profit-edu run-packed: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"profit-edu run-packed: error: {os_error_line(err)}", file=sys.stderr)
        return 2
    probs = torch.softmax(logits, dim=1)
    k = min(args.top, probs.shape[1])
    names = program.classes or [f"class {i}" for i in range(probs.shape[1])]
    for path, p in zip(args.images, probs):
        top = torch.topk(p, k)
        ranked = [(names[int(i)], int(i), float(v)) for v, i in zip(top.values, top.indices)]
        if args.json:
            print(json.dumps({"image": str(path), "top": [{"class": n, "index": i, "probability": v}
                                                          for n, i, v in ranked]}))
        else:
            print(f"{path}: " + ", ".join(f"{n} {v:.3f}" for n, _, v in ranked))
    return 0
