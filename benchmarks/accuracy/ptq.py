"""Post-training quantization of the shipped float model: the fixed (MSE) and reference (official) inits.

    python benchmarks/accuracy/ptq.py [--threads 1] [--calibration-images 1024] [--methods duq pact lsq]

Each (method, init style, bits) quantizes a fresh copy of the shipped CIFAR-10 MobileNet-v2 (w0.5, 85.26 %),
calibrates it with :func:`profit_edu.calibrate` on ``--calibration-images`` training images (seed 0, eval mode,
no training), and scores top-1 on the 10,000 test images. One ledger line per number (id
``ptq/cifar10/<method>/<style>/w<W>a<A>``), and ``benchmarks/results/ptq.json`` with all of them. This is how
much accuracy the initialisation alone keeps, before any fine-tuning.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import profit_edu as pe
from profit_edu import ledger
from profit_edu.data import DeviceLoader, cifar10, subset
from profit_edu.pretrained import load_pretrained
from profit_edu.train import evaluate

SHIPPED = "cifar10-mobilenet_v2-w0.5-s2"
BITS = [(8, 8), (8, None), (None, 8), (4, 4), (4, None), (None, 4), (3, 3)]
RESULTS = Path(__file__).resolve().parents[1] / "results" / "ptq.json"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--calibration-images", type=int, default=1024, metavar="N", help="default: 1024")
    p.add_argument("--methods", nargs="+", default=["duq", "pact", "lsq"], choices=["duq", "pact", "lsq"])
    p.add_argument("--styles", nargs="+", default=["fixed", "reference"], choices=["fixed", "reference"])
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    test = DeviceLoader(cifar10(train=False), 500, train=False)
    calib = [x for x, _ in DeviceLoader(subset(cifar10(train=True), args.calibration_images, seed=0), 256,
                                        train=False)]
    fp = load_pretrained(SHIPPED)
    rows = [{"method": "fp", "style": None, "weight_bits": None, "act_bits": None,
             "top1": evaluate(fp, test)["top1"]}]
    print(f"float: {rows[0]['top1']:.2f}", flush=True)
    for method in args.methods:
        for style in args.styles:
            if style == "reference" and method != "duq":
                continue  # the official rules are DuQ's; LSQ's and PACT's own papers initialise differently
            for wb, ab in BITS:
                t0 = time.perf_counter()
                q = pe.quantize_model(copy.deepcopy(fp), weight_bits=wb, act_bits=ab, method=method, init_style=style)
                pe.calibrate(q, calib)
                top1 = evaluate(q, test)["top1"]
                rows.append({"method": method, "style": style, "weight_bits": wb, "act_bits": ab, "top1": top1})
                ledger.append({
                    "id": f"ptq/cifar10/{method}/{style}/w{wb or 'fp'}a{ab or 'fp'}", "hardware": ledger.hardware(),
                    "scale": "cifar", "dataset": "cifar10", "model": "mobilenet_v2", "width_mult": 0.5,
                    "method": method, "init_style": style, "weight_bits": wb, "act_bits": ab, "seed": 0,
                    "metric": "top1", "value": round(top1, 2), "calibration_images": args.calibration_images,
                    "init": SHIPPED, "test_images": 10000, "wall_s": round(time.perf_counter() - t0, 1),
                })
                print(f"{method:4s} {style:9s} W{wb or 'fp'}A{ab or 'fp'}: {top1:.2f}", flush=True)
    RESULTS.write_text(json.dumps({"calibration_images": args.calibration_images, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
