"""Cost of DuQ fake quantization in a training step: W4A4 step time / FP step time.

The network is a stack of MobileNetV2-style inverted-residual blocks (1x1 expand, 3x3 depthwise,
1x1 project, BN, ReLU6, signed block-input quantizers), trained with SGD at 32x32, batch 64 on the CPU.
The FP and quantized steps are timed interleaved in one process; the result is the median ratio with
its quartiles, written as JSON to benchmarks/results/quantizer_overhead.json and one ledger line.

    python benchmarks/quantizer_overhead.py [--repeats 30] [--batch 64] [--size 32]

For scale (measured on this 2-core CPU, issue 2): the official PROFIT code's W4A4 step costs 1.35-1.38x
its float step at 32x32, and Brevitas W4A4 costs 1.81x. The project's goal on MobileNetV2 is <= 1.20.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved, ratio_stats, sgd_step

import profit_edu as pe
from profit_edu import ledger
from profit_edu.layers import QuantPoint

RESULTS = Path(__file__).resolve().parent / "results"


class Block(nn.Module):
    """x + project(dw(expand(Q(x)))): the inverted residual of MobileNetV2 with PROFIT's signed input point."""

    def __init__(self, ch: int, t: int = 6) -> None:
        super().__init__()
        hid = ch * t
        self.q_in = QuantPoint("signed")
        self.body = nn.Sequential(
            nn.Conv2d(ch, hid, 1, bias=False), nn.BatchNorm2d(hid), nn.ReLU6(inplace=True),
            nn.Conv2d(hid, hid, 3, padding=1, groups=hid, bias=False), nn.BatchNorm2d(hid), nn.ReLU6(inplace=True),
            nn.Conv2d(hid, ch, 1, bias=False), nn.BatchNorm2d(ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(self.q_in(x))


def dw_stack(width: int = 32, depth: int = 4, num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU6(inplace=True),
        *[Block(width) for _ in range(depth)],
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), QuantPoint("unsigned"), nn.Linear(width, num_classes),
    )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ledger", action="store_true", help="do not append to the ledger (smoke runs)")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    fp = dw_stack().train()
    q = pe.quantize_model(copy.deepcopy(fp), weight_bits=4, act_bits=4).train()  # same float weights
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    times = interleaved({"fp": sgd_step(fp, x, y), "w4a4": sgd_step(q, x, y)}, repeats=args.repeats)
    stats = ratio_stats(times["w4a4"], times["fp"])
    result = {
        "benchmark": "quantizer_overhead",
        "model": "inverted-residual stack (width 32, 4 blocks, t=6)",
        "input": f"{args.batch}x3x{args.size}x{args.size}",
        "hardware": ledger.hardware(),
        "torch": torch.__version__,
        "fp_step_s_median": sorted(times["fp"])[len(times["fp"]) // 2],
        "w4a4_step_s_median": sorted(times["w4a4"])[len(times["w4a4"]) // 2],
        "ratio": stats,
        "seed": args.seed,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quantizer_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_ledger:
        ledger.append({
            "id": "quantizer_overhead/dw_stack/w4a4", "hardware": result["hardware"], "scale": "tiny",
            "dataset": "random", "model": "dw_stack", "method": "duq", "weight_bits": 4, "act_bits": 4,
            "seed": args.seed, "metric": "step_time_ratio_vs_fp", "value": round(stats["median"], 4),
            "spread": [round(stats["q1"], 4), round(stats["q3"], 4)], "wall_s": round(sum(map(sum, times.values())), 1),
        })
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
