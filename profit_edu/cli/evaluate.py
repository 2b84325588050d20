"""``profit-edu evaluate`` and ``profit-edu release``: what happens to a run after training.

``evaluate RUN``
    rebuild the model a ``train`` run saved (its ``checkpoint.json`` records the builder, its arguments and the
    bit widths), load its last checkpoint and print top-1/top-5 of the model and of its weight EMA; ``--ledger``
    appends them to the ledger (:mod:`profit_edu.ledger`) with the run's training command and seed.
``release RUN -o OUT``
    copy the run's last checkpoint with the weights only (how ``data/pretrained`` checkpoints are made).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from .common import (
    DATASET_CHOICES,
    CLIError,
    Ranged,
    bits_label,
    check_model_args,
    choose_device,
    device_name,
    load_split,
    model_from_args,
    say,
    show_progress,
)

__all__ = ["add_evaluate_parser", "add_release_parser", "cmd_evaluate", "cmd_release"]


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------
def add_evaluate_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``evaluate`` on the ``profit-edu`` subparsers (its handler: :func:`cmd_evaluate`)."""
    p = commands.add_parser(
        "evaluate", help="print the top-1/top-5 accuracy of a trained run",
        description=("Rebuild the model that 'profit-edu train' saved in CHECKPOINT_DIR, load its last checkpoint "
                     "and print its top-1 and top-5 accuracy (and its weight EMA's) on the test split of the data "
                     "it was trained on, or of --dataset."),
    )
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT_DIR", help="a run directory written by train --out")
    p.add_argument("--dataset", choices=DATASET_CHOICES, default=None,
                   help="test data (default: the run's own dataset and test subset)")
    p.add_argument("--images", type=Ranged(int, low=1), default=None, metavar="N",
                   help="evaluate on a class-balanced subset of N test images (default: the run's own choice)")
    p.add_argument("--batch-size", type=Ranged(int, low=1), default=256, metavar="N", help="default: 256")
    p.add_argument("--device", type=device_name, default=None, help="default: cuda when available, else cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--ledger", action="store_true",
                   help="append the top-1 of the model and its EMA to benchmarks/results/ledger.jsonl, with the "
                        "run's training command and seed (how every number the book reports is recorded)")
    p.add_argument("--ledger-id", default=None, metavar="ID",
                   help="with --ledger: the line's id (default: scale/dataset/model/stem-width/method/bits/"
                        "copy); an EMA copy gets ID/ema")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar (default: on when the output is a terminal)")
    p.set_defaults(handler=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run ``profit-edu evaluate``."""
    from .. import data
    from ..checkpoint import load_checkpoint
    from ..train import ModelEMA, evaluate

    state = load_checkpoint(args.checkpoint)
    model_args = state.meta.get("model_args")
    if not isinstance(model_args, dict):
        raise CLIError(f"{args.checkpoint}: the checkpoint has no model arguments; was it written by "
                       "'profit-edu train'? (library runs can be evaluated with profit_edu.train.evaluate)")
    check_model_args(model_args, str(state.path))
    run_data = state.meta.get("data", {})
    dataset = args.dataset or run_data.get("dataset", "cifar10")
    n = args.images if args.images is not None else run_data.get("val_subset")
    seed = int(run_data.get("seed", 0))
    device = choose_device(args.device)
    test, used = load_split(dataset, False, n, seed)

    torch.manual_seed(0)
    model = model_from_args(model_args, str(state.path))
    ema_model = ModelEMA(model).module if state.ema_state is not None else None
    state.restore(model, ema_model=ema_model)
    model.to(device)
    loader = data.DeviceLoader(test, args.batch_size, train=False, device=device)
    args.progress = show_progress(args.progress)
    results = {"model": evaluate(model, loader, device, progress=args.progress)}
    if ema_model is not None:
        ema_model.to(device)
        results["ema"] = evaluate(ema_model, loader, device, progress=args.progress)
    info = {"checkpoint": str(args.checkpoint), "epoch": state.epoch + 1, "epochs": state.config.get("epochs"),
            "model": model_args["model"], "bits": bits_label(model_args["weight_bits"], model_args["act_bits"]),
            "dataset": used, "images": len(test), "metrics": results}
    if args.ledger_id is not None and not args.ledger:
        raise CLIError("--ledger-id names a ledger line: pass --ledger too")
    if args.ledger:
        _record_in_ledger(state, info, device, args.argv, line_id=args.ledger_id)
    if args.json:
        say(json.dumps(info))
        return 0
    say(f"{args.checkpoint}: {info['model']} {info['bits']}, after epoch {info['epoch']} of {info['epochs']}")
    say(f"data: {used} test split, {len(test)} images")
    for name, r in results.items():
        top5 = f"{r['top5']:.2f}%" if r["top5"] is not None else "n/a"
        say(f"{'EMA' if name == 'ema' else 'model':5s}: top-1 {r['top1']:.2f}%  top-5 {top5}  loss {r['loss']:.4f}")
    return 0


def _record_in_ledger(state: Any, info: dict[str, Any], device: str, argv: list[str], *,
                      line_id: str | None = None) -> None:
    """One ledger line per evaluated copy (model, EMA), carrying the training command and seed of the run and
    the sha256 of the evaluated tensor file."""
    from .. import ledger

    meta, model_args = state.meta, state.meta["model_args"]
    wb, ab = model_args["weight_bits"], model_args["act_bits"]
    method = "fp" if wb is None and ab is None else model_args.get("method", "duq")
    stem = (f"cifar-stem-s{model_args['stem_stride']}" if model_args["cifar_stem"] else "stock") + \
        f"-w{model_args['width_mult']:g}"
    wall = sum(float(r.get("wall_s") or 0.0) for r in state.history)
    for name, r in info["metrics"].items():
        ledger.append({
            "id": (f"{meta.get('scale')}/{info['dataset']}/{info['model']}/{stem}/{method}/w{wb}a{ab}/{name}"
                   if line_id is None else line_id + ("/ema" if name == "ema" else "")),
            "sha256": json.loads(state.path.read_text())["tensors"]["sha256"],
            "hardware": ledger.hardware(device), "scale": meta.get("scale"), "dataset": info["dataset"],
            "model": info["model"], "width_mult": model_args["width_mult"], "cifar_stem": model_args["cifar_stem"],
            "stem_stride": model_args["stem_stride"], "method": method, "weight_bits": wb, "act_bits": ab,
            "seed": meta.get("data", {}).get("seed"), "metric": "top1", "value": round(r["top1"], 2),
            "top5": None if r["top5"] is None else round(r["top5"], 2), "copy": name, "epochs": info["epoch"],
            "test_images": info["images"], "wall_s": round(wall, 1), "command": meta.get("command"),
            "eval_command": "profit-edu " + " ".join(argv),
        })


# --------------------------------------------------------------------------------------------
# release
# --------------------------------------------------------------------------------------------
def add_release_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``release`` on the ``profit-edu`` subparsers (its handler: :func:`cmd_release`)."""
    p = commands.add_parser(
        "release", help="copy a run's checkpoint with its weights only, for shipping",
        description="Copy the last checkpoint of a 'profit-edu train' run to OUT with the model weights only "
                    "(no momentum, RNG or EMA copy; --ema ships the EMA weights as the model), plus SHA256SUMS. "
                    "The copy loads like any run directory: 'profit-edu evaluate OUT', --init OUT.")
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="a run directory written by train --out")
    p.add_argument("-o", "--out", type=Path, required=True, metavar="DIR", help="where to write the copy")
    p.add_argument("--ema", action="store_true", help="release the EMA weights instead of the model's")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the checkpoint that DIR already holds (without it, a DIR holding one is refused; "
                        "the run's own directory always is)")
    p.set_defaults(handler=cmd_release)


def cmd_release(args: argparse.Namespace) -> int:
    """Run ``profit-edu release``."""
    from ..checkpoint import release_checkpoint

    path = release_checkpoint(args.run, args.out, use_ema=args.ema, overwrite=args.overwrite)
    doc = json.loads(path.read_text())
    say(f"released {args.run} ({'EMA' if args.ema else 'model'} weights, epoch {doc['epoch'] + 1}) to {path.parent}: "
        f"{doc['tensors']['file']}, {doc['tensors']['bytes']:,} bytes, sha256 {doc['tensors']['sha256']}")
    return 0

