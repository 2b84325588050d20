"""A short ``profit-edu reproduce`` run on one GPU (NCCL, AMP) over ImageNet-size synthetic images: the training
throughput of the float MobileNet-v2 and of its W4A4 model, in images per second (issue 16's GPU smoke run).

It writes an ImageNet-layout folder of synthetic JPEG images (``--classes`` x ``--images`` at 256x256, cropped
to 224 as ImageNet's are), then runs a recipe of three phases through ``torchrun`` (one process per GPU): a float
phase, 4-bit activations, then 4-bit weights and activations, each of ``--epochs`` epochs. The last epoch of the
float phase and of the W4A4 phase give the throughput (``images_per_s`` of ``log.jsonl``: the epoch's training
images over its wall time, validation on a few images included). Two ledger lines, ``reproduce/smoke/fp`` and
``reproduce/smoke/w4a4``, record them with the GPU's name.

    python benchmarks/reproduce_smoke.py [--gpus 1] [--amp/--no-amp] [--batch-size 128]
    python benchmarks/reproduce_smoke.py --device cpu --size 32 --images 8 --no-ledger   # the code path, on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

from profit_edu import data, ledger

RECIPE = """\
version: 1
name: reproduce_smoke
teacher: none
model: {{arch: mobilenet_v2, num_classes: {classes}, width_mult: 1.0}}
data: {{dataset: imagenet, root: unused, batch_size: {batch}, image_size: {crop}, workers: {workers}}}
train: {{lr: 0.01, ema_decay: 0.9997}}
schedule: {{fp_epochs: {epochs}, warmup_epochs: 0, act_bits: [4], weight_bits: [4], profit_bits: [],
           bn_stabilize: false, ft_epochs: {epochs}}}
"""


def write_folder(root: Path, classes: int, images: int, size: int) -> None:
    """``images`` training images and 2 validation images per class, synthetic, as JPEG files."""
    arrays = data.synthetic(classes * (images + 2), num_classes=classes, image_size=size, seed=0)
    seen: dict[int, int] = {}
    for i, (picture, label) in enumerate(zip(arrays.images, arrays.labels.tolist())):
        seen[label] = seen.get(label, 0) + 1
        folder = root / ("train" if seen[label] <= images else "val") / f"n{label:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture.permute(1, 2, 0).numpy()).save(folder / f"{i}.JPEG", quality=90)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--gpus", type=int, default=1, help="processes (one per GPU)")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--images", type=int, default=256, help="training images per class")
    p.add_argument("--size", type=int, default=256, help="side of the stored images (cropped to 7/8 of it)")
    p.add_argument("--batch-size", type=int, default=128, help="the global batch")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--no-ledger", action="store_true")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA GPU here: --device cpu runs the code path at a small size")
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        write_folder(work / "imagenet", args.classes, args.images, args.size)
        (work / "recipe.yaml").write_text(RECIPE.format(classes=args.classes, batch=args.batch_size,
                                                        crop=args.size * 7 // 8, workers=args.workers,
                                                        epochs=args.epochs))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                   str(args.gpus), "-m", "profit_edu.reproduce", "--recipe", str(work / "recipe.yaml"), "--data",
                   str(work / "imagenet"), "--out", str(work / "run"), "--device", args.device, "--no-progress",
                   "--amp" if args.amp else "--no-amp"]
        done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True)
        if done.returncode != 0:
            return done.returncode
        events = [json.loads(line) for line in (work / "run" / "log.jsonl").read_text().splitlines()]
    last = {e["phase"]: e for e in events if e["event"] == "epoch"}
    hardware = (f"{args.gpus}x {torch.cuda.get_device_name(0)}" if args.device == "cuda"
                else f"CPU, {args.gpus} gloo processes")
    for phase, method, bits in (("fp", "fp", None), ("w4_ft", "duq", 4)):
        speed = last[phase]["images_per_s"]
        print(f"{phase}: {speed:,.0f} images/s on {hardware} ({'AMP' if args.amp else 'float32'})")
        if not args.no_ledger:
            ledger.append({"id": f"reproduce/smoke/{'w4a4' if bits else 'fp'}",
                           "hardware": hardware, "scale": "imagenet", "dataset": "synthetic-224",
                           "model": "mobilenet_v2", "width_mult": 1.0, "method": method, "weight_bits": bits,
                           "act_bits": bits, "seed": 0, "metric": "train_images_per_s", "value": speed,
                           "wall_s": last[phase]["wall_s"], "amp": args.amp, "global_batch": args.batch_size})
    return 0


if __name__ == "__main__":
    sys.exit(main())
