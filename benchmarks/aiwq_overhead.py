"""Cost of AIWQ tracking in a training step: (QAT step with AIWQTracker) / (plain QAT step).

MobileNet-v2 (width 1.0, stock stem, 10 classes) quantized W4A4 with DuQ, trained with SGD at 32x32, batch 64,
on the CPU. The plain and the tracked steps are two copies of the same model (same weights), timed interleaved
in one process (benchmarks/timing.py); the result is the median ratio with its quartiles, written as JSON to
benchmarks/results/aiwq_overhead.json and one ledger line.

    python benchmarks/aiwq_overhead.py [--repeats 30] [--batch 64] [--size 32] [--every 1] [--threads 1]

Besides the wall-clock ratio (the headline), the CPU time of each step (``time.process_time``) is recorded
too: on a shared machine, waiting for a core inflates wall time but not CPU time. With one thread (the
default here) CPU time is the work done; with more threads it also counts OpenMP spinning.

The tracked step does one extra convolution per conv layer (with last step's weights) and two per-channel
mean/variance reductions; that convolution is the floor. Goal: <= 1.20 (the official code's hooks: 1.45x).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved, ratio_stats, sgd_step

import profit_edu as pe
from profit_edu import ledger
from profit_edu.aiwq import AIWQTracker

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--every", type=int, default=1, help="track every k-th step (default: every step)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: steadier on shared cores)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ledger", action="store_true", help="do not append to the ledger (smoke runs)")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    base = pe.quantize_model(pe.models.mobilenet_v2(num_classes=10, cifar_stem=False), weight_bits=4, act_bits=4)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    base.to(device).train()
    base(x)  # initialise every quantizer once, so both copies start identical
    plain, tracked = copy.deepcopy(base), copy.deepcopy(base)
    tracker = AIWQTracker(tracked, every=args.every)
    cpu: dict[str, list[float]] = {"plain": [], "tracked": []}

    def cpu_timed(name: str, step):
        def run() -> None:
            t0 = time.process_time()
            step()
            cpu[name].append(time.process_time() - t0)

        return run

    times = interleaved({name: cpu_timed(name, sgd_step(model, x, y))
                         for name, model in (("plain", plain), ("tracked", tracked))}, repeats=args.repeats)
    warm = len(cpu["plain"]) - args.repeats  # interleaved() runs warm-up calls first
    cpu = {k: v[warm:] for k, v in cpu.items()}
    stats = ratio_stats(times["tracked"], times["plain"])
    cpu_stats = ratio_stats(cpu["tracked"], cpu["plain"])
    top = tracker.ranking()[:3]
    hardware = ledger.hardware(device)
    result = {
        "benchmark": "aiwq_overhead",
        "model": "mobilenet_v2 (width 1.0, stock stem, 10 classes), W4A4 DuQ",
        "input": f"{args.batch}x3x{args.size}x{args.size}",
        "every": args.every,
        "layers_tracked": len(tracker.layers),
        "hardware": hardware,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "plain_step_s_median": sorted(times["plain"])[len(times["plain"]) // 2],
        "tracked_step_s_median": sorted(times["tracked"])[len(times["tracked"]) // 2],
        "ratio": stats,
        "cpu_time_ratio": cpu_stats,
        "top3_layers": top,
        "seed": args.seed,
        "note": "interleaved repetitions in one process on a shared machine; report the median and quartiles",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "aiwq_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_ledger:
        ledger.append({
            "id": f"aiwq_overhead/mobilenet_v2/w4a4/every{args.every}/{device.type}", "hardware": hardware,
            "scale": "tiny", "dataset": "random", "model": "mobilenet_v2", "width_mult": 1.0, "method": "duq+aiwq",
            "weight_bits": 4, "act_bits": 4, "seed": args.seed, "metric": "step_time_ratio_vs_qat",
            "value": round(stats["median"], 4), "spread": [round(stats["q1"], 4), round(stats["q3"], 4)],
            "wall_s": round(sum(map(sum, times.values())), 1), "threads": args.threads,
            "cpu_time_ratio": round(cpu_stats["median"], 4),
        })
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
